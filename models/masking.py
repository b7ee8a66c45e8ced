"""The masked-visual-modeling (MVM) objective: which tokens to hide, and the loss on them.

Context frames (and optionally other named frames, e.g. the last one as a goal) stay visible. For each
clip a ratio ``r ~ U[min, max)`` (default [0.5, 1)) is drawn and ``ceil(r * N)`` of its ``N`` target
tokens are replaced by [MASK]; the loss is cross-entropy on the masked positions only.

Token weighting: about 62% of tabletop tokens are each position's usual background token, so an
unweighted loss is mostly about copying the background. ``"changed"`` weighs tokens that differ from the
previous frame's token at the same position by ``w > 1``; ``"background"`` weighs tokens that differ
from the per-position most common token (see :func:`background_tokens`). The weighted loss is the
weighted mean over masked tokens, so its scale does not depend on how many tokens are weighted.

    objective = MVMObjective.from_config(cfg.maskvit, mask_token=model.mask_token)
    out = objective(model, tokens, actions, generator=g)   # out.loss.backward()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs.errors import UserError
from ..configs.schema import MaskViTConfig

__all__ = [
    "MVMLoss",
    "MVMObjective",
    "MaskingError",
    "apply_mask",
    "background_tokens",
    "informative_tokens",
    "mvm_loss",
    "sample_mask",
    "target_frames",
    "token_weights",
]

TokenWeighting = Literal["none", "changed", "background", "context"]


class MaskingError(UserError, ValueError):
    """Masking arguments that cannot work together; the message says which and why."""


def target_frames(num_frames: int, context_frames: int, extra_visible_frames: tuple[int, ...] = ()) -> Tensor:
    """(T,) bool: True for the frames whose tokens are predicted (may be masked), False for visible ones.

    The first ``context_frames`` are visible; ``extra_visible_frames`` (indices into the clip, negative
    counts from the end) are too, e.g. ``(-1,)`` to condition on the last frame as a goal.
    """
    if not 0 < context_frames < num_frames:
        raise MaskingError(
            f"context_frames ({context_frames}) must be at least 1 and below the clip length ({num_frames})"
        )
    targets = torch.ones(num_frames, dtype=torch.bool)
    targets[:context_frames] = False
    for i in extra_visible_frames:
        if not -num_frames <= i < num_frames:
            raise MaskingError(f"visible frame index {i} is outside a clip of {num_frames} frames")
        targets[i] = False
    if not targets.any():
        raise MaskingError("every frame is visible: nothing left to predict")
    return targets


def sample_mask(
    targets: Tensor,
    batch_size: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float] = (0.5, 1.0),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw one MVM mask per clip: (B, T, h, w) bool, True = replaced by [MASK] (and scored).

    For each clip ``r ~ U[low, high)`` and exactly ``ceil(r * N)`` of its ``N`` target tokens (tokens of
    frames where ``targets`` is True) are masked, chosen uniformly; tokens of visible frames never are.
    """
    low, high = ratio_range
    if not 0.0 <= low < high <= 1.0:
        raise MaskingError(f"mask ratio range must satisfy 0 <= low < high <= 1, got {ratio_range}")
    h, w = grid
    T = targets.shape[0]
    maskable = targets.to(device)[:, None, None].expand(T, h, w).reshape(1, T * h * w)
    n_targets = int(maskable.sum())
    ratios = low + (high - low) * torch.rand(batch_size, generator=generator, device=device)
    # float rounding could push ceil(r * N) above N when r is just below 1
    counts = torch.ceil(ratios * n_targets).clamp(max=n_targets)  # (B,)
    # random ranks among maskable positions; visible positions rank last (score +inf)
    scores = torch.rand(batch_size, T * h * w, generator=generator, device=device)
    scores = scores.masked_fill(~maskable, math.inf)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask = ranks < counts[:, None]
    return mask.reshape(batch_size, T, h, w)


def apply_mask(tokens: Tensor, mask: Tensor, mask_token: int) -> Tensor:
    """Replace masked positions by [MASK]: the model's input."""
    return tokens.masked_fill(mask, mask_token)


def background_tokens(tokens: Tensor) -> Tensor:
    """The most common token at each position over a set of clips: (N..., h, w) long -> (h, w) long."""
    h, w = tokens.shape[-2:]
    return tokens.reshape(-1, h, w).mode(dim=0).values


def informative_tokens(
    tokens: Tensor,
    rule: Literal["changed", "background", "context"],
    background: Tensor | None = None,
    context_frames: int = 1,
) -> Tensor:
    """(B, T, h, w) bool: the tokens that carry motion rather than static background.

    "changed": the token differs from the previous frame's token at the same position (frame 0 has no
    previous frame: False). "background": it differs from ``background`` (h, w), the per-position most
    common token (:func:`background_tokens`). "context": "changed", or, in a future frame (index
    ``context_frames`` on), the token differs from the last context frame's: everything a copy of the
    last observed frame would get wrong, so a pushed object weighs in every frame after it moved, not
    only in the frame where it moved.
    """
    if rule in ("changed", "context"):
        informative = torch.zeros_like(tokens, dtype=torch.bool)
        informative[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
        if rule == "context":
            if not 1 <= context_frames <= tokens.shape[1]:
                raise MaskingError(
                    f"context_frames must be in [1, {tokens.shape[1]}] for a {tokens.shape[1]}-frame clip, "
                    f"got {context_frames}"
                )
            last = tokens[:, context_frames - 1 : context_frames]
            informative[:, context_frames:] |= tokens[:, context_frames:] != last
        return informative
    if rule == "background":
        if background is None:
            raise MaskingError(
                "token_weighting 'background' needs the per-position background tokens: "
                "compute them once with background_tokens(training_tokens)"
            )
        if background.shape != tokens.shape[-2:]:
            raise MaskingError(
                f"background tokens are {tuple(background.shape)}, the clip grid is {tuple(tokens.shape[-2:])}"
            )
        return tokens != background.to(tokens.device)
    raise MaskingError(f"informative-token rule must be 'changed', 'background' or 'context', got {rule!r}")


def token_weights(
    tokens: Tensor,
    weighting: TokenWeighting,
    weight: float,
    background: Tensor | None = None,
    context_frames: int = 1,
) -> Tensor:
    """(B, T, h, w) float loss weights: ``weight`` for informative tokens (see :func:`informative_tokens`
    with ``weighting`` as the rule), 1 for the others; "none": all ones."""
    ones = torch.ones(tokens.shape, dtype=torch.float32, device=tokens.device)
    if weighting == "none":
        return ones
    if weighting not in ("changed", "background", "context"):
        raise MaskingError(
            f"token_weighting must be 'none', 'changed', 'background' or 'context', got {weighting!r}"
        )
    return ones.masked_fill(informative_tokens(tokens, weighting, background, context_frames), weight)


@dataclass
class MVMLoss:
    """The objective on one batch. ``loss`` carries gradients; the rest are detached floats for logging."""

    loss: Tensor
    accuracy: float  # argmax == target, over masked tokens
    # over masked informative tokens (nan when there are none); the rule is the weighting's, or
    # "changed" when weighting is "none", so the figure is logged whatever the loss does
    informative_accuracy: float
    mask_ratio: float  # masked share of target tokens, mean over the batch
    informative_share: float  # share of masked tokens that are informative


def mvm_loss(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Weighted mean cross-entropy over masked positions.

    logits (B, T, h, w, K), targets (B, T, h, w) long in [0, K), mask (B, T, h, w) bool, weights like
    mask (None: all ones). Unmasked positions contribute nothing.
    """
    picked = logits[mask]  # (M, K)
    if picked.shape[0] == 0:
        raise MaskingError("no position is masked: the MVM loss is undefined")
    ce = F.cross_entropy(picked.float(), targets[mask], reduction="none", label_smoothing=label_smoothing)
    if weights is None:
        return ce.mean()
    w = weights[mask]
    return (w * ce).sum() / w.sum()


@dataclass
class MVMObjective:
    """Masking + loss with the settings of one training run."""

    mask_token: int
    context_frames: int
    extra_visible_frames: tuple[int, ...] = ()
    ratio_range: tuple[float, float] = (0.5, 1.0)
    label_smoothing: float = 0.0
    token_weighting: TokenWeighting = "none"
    token_weight: float = 1.0
    background: Tensor | None = None  # (h, w), needed for token_weighting="background"
    # weight (at least) of the token cells that show an object in the target frame or in the last
    # context frame (where it was); 1: off. Needs the clips' object cells (segmentation).
    object_token_weight: float = 1.0

    @classmethod
    def from_config(
        cls, cfg: MaskViTConfig, mask_token: int, background: Tensor | None = None
    ) -> MVMObjective:
        return cls(
            mask_token=mask_token,
            context_frames=cfg.context_frames,
            extra_visible_frames=tuple(cfg.extra_visible_frames),
            ratio_range=(cfg.mask_ratio_min, cfg.mask_ratio_max),
            label_smoothing=cfg.label_smoothing,
            token_weighting=cfg.token_weighting,
            token_weight=cfg.token_weight,
            background=background,
            object_token_weight=cfg.object_token_weight,
        )

    def __call__(
        self,
        model: nn.Module,
        tokens: Tensor,
        actions: Tensor | None = None,
        generator: torch.Generator | None = None,
        start_pose: Tensor | None = None,
        objects: Tensor | None = None,
    ) -> MVMLoss:
        """Mask ``tokens`` (B, T, h, w), run ``model(masked, actions, start_pose)`` and score the masked
        positions.

        ``objects`` (B, T, h, w) bool marks the cells that show an object; with ``object_token_weight``
        above 1 those cells, and the cells an object showed in the last context frame, weigh at least
        that much (the object a push moves, and the place it leaves).

        ``generator`` must live on ``tokens.device`` (None: torch's global generator).
        """
        B, T, h, w = tokens.shape
        targets = target_frames(T, self.context_frames, self.extra_visible_frames)
        mask = sample_mask(targets, B, (h, w), self.ratio_range, generator, tokens.device)
        logits = model(apply_mask(tokens, mask, self.mask_token), actions, start_pose)
        weights = token_weights(
            tokens, self.token_weighting, self.token_weight, self.background, self.context_frames
        )
        if self.object_token_weight > 1:
            if objects is None:
                raise MaskingError(
                    "object_token_weight needs the clips' object cells (episodes recorded with segmentation)"
                )
            if objects.shape != tokens.shape:
                raise MaskingError(
                    f"object cells are {tuple(objects.shape)}, the tokens {tuple(tokens.shape)}"
                )
            last = self.context_frames - 1
            cells = objects | objects[:, last : last + 1]
            weights = torch.where(cells, weights.clamp(min=self.object_token_weight), weights)
        loss = mvm_loss(logits, tokens, mask, weights, self.label_smoothing)
        with torch.no_grad():
            correct = logits[mask].argmax(-1) == tokens[mask]
            rule = "changed" if self.token_weighting == "none" else self.token_weighting
            informative = informative_tokens(tokens, rule, self.background, self.context_frames)[mask]
            n_informative = int(informative.sum())
            n_targets = int(targets.sum()) * h * w
        return MVMLoss(
            loss=loss,
            accuracy=correct.float().mean().item(),
            informative_accuracy=correct[informative].float().mean().item() if n_informative else math.nan,
            mask_ratio=mask.sum().item() / (B * n_targets),
            informative_share=n_informative / correct.numel(),
        )
