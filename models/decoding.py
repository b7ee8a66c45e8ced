"""Decoding masked tokens: mask schedules, MaskGIT-style iterative decoding, and the autoregressive baseline.

Everything here is a pure function of its inputs and a seeded ``torch.Generator``; the network is a
``logits_fn(tokens) -> logits`` callable (for an action-conditioned model:
``lambda t: model(t, actions)``), so decoding stays separate from the transformer.

Iterative decoding, for ``S`` steps over the ``N`` initially masked tokens of each clip: at step
``s = 1..S`` predict every position, sample each masked token (temperature), score it by the log
softmax probability of the sampled token (plus Gumbel noise annealed to zero over the steps, as in
MaskGIT, if ``confidence_noise > 0``), keep the most confident and leave the
``n = ceil(gamma(s / S) * N)`` least confident of the still-masked tokens masked. A kept token never
changes again; ``gamma(1) = 0`` so nothing is masked at the end. Each step reveals at least one token.

TorchScript export: :func:`iterative_decode_step` compiles with ``torch.jit.script``; the Python loop
around it only needs the list of ratios from :func:`remask_ratios`. :class:`IterativeDecoder` is that
loop as a scriptable module around a network, e.g.::

    decoder = torch.jit.script(IterativeDecoder(model, mask_token=model.mask_token, steps=5))
    future = decoder(tokens, mask, actions, generator)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..configs.errors import UserError

__all__ = [
    "MASK_SCHEDULES",
    "DecodeResult",
    "DecodingError",
    "IterativeDecoder",
    "MaskScheduleName",
    "autoregressive_decode",
    "iterative_decode",
    "iterative_decode_step",
    "mask_schedule",
    "remask_ratios",
]

MaskScheduleName = Literal["cosine", "linear", "square", "cubic", "sqrt", "exponential"]
LogitsFn = Callable[[Tensor], Tensor]

_EXP_RATE = 5.0  # exponential schedule: gamma(0.5) = 0.076, most tokens are revealed in the first steps


class DecodingError(UserError, ValueError):
    """Decoding arguments that cannot work; the message says which and why."""


# --- mask schedules: gamma(r) for r in [0, 1], gamma(0) = 1, gamma(1) = 0, non-increasing --------------

_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: math.cos(0.5 * math.pi * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
    "cubic": lambda r: 1.0 - r**3,
    "sqrt": lambda r: 1.0 - math.sqrt(r),
    "exponential": lambda r: (math.exp(-_EXP_RATE * r) - math.exp(-_EXP_RATE)) / (1.0 - math.exp(-_EXP_RATE)),
}
MASK_SCHEDULES: tuple[str, ...] = tuple(_SCHEDULES)


def mask_schedule(name: str) -> Callable[[float], float]:
    """The share of tokens still masked after a fraction ``r`` of the decoding steps."""
    if name not in _SCHEDULES:
        raise DecodingError(f"unknown mask schedule {name!r}; choose one of {', '.join(MASK_SCHEDULES)}")
    gamma = _SCHEDULES[name]

    def clipped(r: float) -> float:
        # cos(pi/2) is 6e-17, not 0: pin the end so that ceil(gamma(1) * N) is exactly 0
        if r >= 1.0:
            return 0.0
        return min(1.0, max(0.0, gamma(max(0.0, r))))

    return clipped


def remask_ratios(schedule: str, steps: int) -> list[float]:
    """gamma(s / S) for s = 1..S: the share of the initially masked tokens left masked after each step."""
    if steps < 1:
        raise DecodingError(f"decoding needs at least 1 step, got {steps}")
    gamma = mask_schedule(schedule)
    return [gamma((s + 1) / steps) for s in range(steps)]


def _noise_scales(confidence_noise: float, steps: int) -> list[float]:
    # MaskGIT anneals the confidence noise linearly to zero at the last step
    return [confidence_noise * (1.0 - (s + 1) / steps) for s in range(steps)]


@dataclass
class DecodeResult:
    tokens: Tensor  # (B, T, h, w) long, no [MASK] left
    n_forward: int  # forward passes of the network


# --- one step (TorchScript-compatible) --------------------------------------------------------------


def iterative_decode_step(
    logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    n_initial: Tensor,
    ratio: float,
    temperature: float,
    noise_scale: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of iterative decoding. Compiles with ``torch.jit.script``.

    logits: (B, T, h, w, K) for ``tokens`` (B, T, h, w) long; mask: (B, T, h, w) bool, True = still
    [MASK]; n_initial: (B,) long, masked tokens per clip before the first step; ratio: gamma(s/S);
    temperature: sampling temperature (0: argmax); noise_scale: Gumbel noise on the log-confidence.
    Returns (tokens, mask) after the step; the new mask is a subset of the old one.
    """
    B = tokens.shape[0]
    K = logits.shape[-1]
    flat_logits = logits.reshape(B, -1, K).float()  # (B, L, K)
    flat_tokens = tokens.reshape(B, -1)
    flat_mask = mask.reshape(B, -1)
    if temperature > 0.0:
        probs = torch.softmax(flat_logits / temperature, dim=-1)
        sampled = torch.multinomial(probs.reshape(-1, K), 1, generator=generator).reshape(flat_tokens.shape)
    else:
        probs = torch.softmax(flat_logits, dim=-1)
        sampled = flat_logits.argmax(dim=-1)
    confidence = torch.log(probs.gather(-1, sampled[..., None]).squeeze(-1).clamp_min(1e-30))  # (B, L)
    if noise_scale > 0.0:
        u = torch.rand(confidence.shape, generator=generator, device=confidence.device)
        u = u.clamp(1e-20, 1.0 - 1e-7)  # keep the Gumbel draw finite
        confidence = confidence - noise_scale * torch.log(-torch.log(u))
    # known tokens rank last, so only still-masked ones can stay masked
    confidence = confidence.masked_fill(~flat_mask, math.inf)
    n_masked = flat_mask.sum(dim=1)
    n_remask = torch.ceil(ratio * n_initial.to(torch.float64)).long()
    n_remask = torch.minimum(n_remask, (n_masked - 1).clamp_min(0))  # reveal at least one per step
    ranks = confidence.argsort(dim=1).argsort(dim=1)
    new_mask = flat_mask & (ranks < n_remask[:, None])
    new_tokens = torch.where(flat_mask & ~new_mask, sampled, flat_tokens)
    return new_tokens.reshape(tokens.shape), new_mask.reshape(mask.shape)


# --- whole decodes ----------------------------------------------------------------------------------


def _check(tokens: Tensor, mask: Tensor) -> None:
    if tokens.shape != mask.shape or tokens.dim() != 4:
        raise DecodingError(
            f"tokens and mask must both be (B, T, h, w), got {list(tokens.shape)} and {list(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise DecodingError(f"mask must be a bool tensor (True = to decode), got {mask.dtype}")


def iterative_decode(
    logits_fn: LogitsFn,
    tokens: Tensor,
    mask: Tensor,
    mask_token: int,
    steps: int = 5,
    schedule: str = "cosine",
    temperature: float = 1.0,
    confidence_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """Fill the masked positions of ``tokens`` in at most ``steps`` forward passes.

    tokens: (B, T, h, w) long; values at masked positions are ignored. mask: (B, T, h, w) bool, True =
    to decode (clips may mask different numbers of tokens). ``logits_fn`` maps (B, T, h, w) tokens to
    (B, T, h, w, K) logits.
    """
    _check(tokens, mask)
    if temperature < 0 or confidence_noise < 0:
        raise DecodingError("temperature and confidence_noise must be >= 0")
    ratios = remask_ratios(schedule, steps)
    noise = _noise_scales(confidence_noise, steps)
    tokens = tokens.masked_fill(mask, mask_token)
    n_initial = mask.flatten(1).sum(dim=1)
    n_forward = 0
    for s in range(steps):
        if not mask.any():
            break
        logits = logits_fn(tokens)
        n_forward += 1
        tokens, mask = iterative_decode_step(
            logits, tokens, mask, n_initial, ratios[s], temperature, noise[s], generator
        )
    return DecodeResult(tokens=tokens, n_forward=n_forward)


def autoregressive_decode(
    logits_fn: LogitsFn,
    tokens: Tensor,
    mask: Tensor,
    mask_token: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """The baseline: fill masked positions one per forward pass, in raster order (frame, row, column).

    Same arguments as :func:`iterative_decode`. A position masked in any clip of the batch costs one pass.
    """
    _check(tokens, mask)
    if temperature < 0:
        raise DecodingError("temperature must be >= 0")
    B = tokens.shape[0]
    flat = tokens.masked_fill(mask, mask_token).reshape(B, -1).clone()  # (B, L)
    flat_mask = mask.reshape(B, -1)
    positions = flat_mask.any(dim=0).nonzero().flatten().tolist()
    for pos in positions:
        logits = logits_fn(flat.reshape(tokens.shape))
        logits = logits.reshape(B, flat.shape[1], -1)[:, pos].float()  # (B, K)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            sampled = logits.argmax(dim=-1)
        flat[:, pos] = torch.where(flat_mask[:, pos], sampled, flat[:, pos])
    return DecodeResult(tokens=flat.reshape(tokens.shape), n_forward=len(positions))


class IterativeDecoder(nn.Module):
    """Iterative decoding around a network ``model(tokens, actions) -> logits``, as one scriptable module.

    ``forward(tokens, mask, actions, generator)`` returns the decoded (B, T, h, w) tokens. This is the
    form a TorchScript export should use: the schedule is fixed at construction as a list of floats.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_token: int,
        steps: int = 5,
        schedule: str = "cosine",
        temperature: float = 1.0,
        confidence_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature < 0 or confidence_noise < 0:
            raise DecodingError("temperature and confidence_noise must be >= 0")
        self.model = model
        self.mask_token = mask_token
        self.temperature = temperature
        # plain lists of floats: TorchScript infers their type from the values
        self.ratios = remask_ratios(schedule, steps)  # gamma(s / S), s = 1..S
        self.noise_scales = _noise_scales(confidence_noise, steps)

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor,
        actions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        tokens = tokens.masked_fill(mask, self.mask_token)
        n_initial = mask.flatten(1).sum(dim=1)
        for s in range(len(self.ratios)):
            if not bool(mask.any()):
                break
            logits = self.model(tokens, actions)
            tokens, mask = iterative_decode_step(
                logits,
                tokens,
                mask,
                n_initial,
                self.ratios[s],
                self.temperature,
                self.noise_scales[s],
                generator,
            )
        return tokens
