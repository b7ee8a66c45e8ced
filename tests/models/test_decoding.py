"""Decoding: schedules, iterative decoding invariants, the autoregressive baseline, TorchScript export path."""

from __future__ import annotations

import math

import pytest
import torch
from maskvit_mpc.models.decoding import (
    MASK_SCHEDULES,
    DecodingError,
    IterativeDecoder,
    autoregressive_decode,
    iterative_decode,
    iterative_decode_step,
    mask_schedule,
    remask_ratios,
)
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig

K = 12  # codebook size; [MASK] = K


class RecordingLogits:
    """A deterministic fake network: logits depend on the input tokens; records every input it sees."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(K + 1, K, generator=g) * 3.0
        self.position = torch.randn(4, 4, K, generator=g) * 3.0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tokens.clone())
        # each position's logits mix its own token, its neighbour's, and a per-position bias
        return self.table[tokens] + self.table[tokens.roll(1, dims=-1)] + self.position


def clip_and_mask(B: int = 3, T: int = 4, context: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, K, (B, T, 4, 4), generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(B, T, 4, 4, dtype=torch.bool)
    mask[:, context:] = True
    return tokens, mask


@pytest.mark.parametrize("name", MASK_SCHEDULES)
def test_schedules_are_monotone_with_the_right_endpoints(name: str) -> None:
    gamma = mask_schedule(name)
    values = [gamma(i / 200) for i in range(201)]
    assert values[0] >= 0.99
    assert values[-1] == 0.0
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v <= 1.0 for v in values)
    assert remask_ratios(name, 6)[-1] == 0.0


def test_schedule_shapes_differ_as_named() -> None:
    at_half = {name: mask_schedule(name)(0.5) for name in MASK_SCHEDULES}
    assert at_half["linear"] == pytest.approx(0.5)
    assert at_half["cosine"] == pytest.approx(math.cos(math.pi / 4))
    assert at_half["square"] == pytest.approx(0.75) and at_half["cubic"] == pytest.approx(0.875)
    assert at_half["sqrt"] < at_half["linear"] and at_half["exponential"] < at_half["sqrt"]
    with pytest.raises(DecodingError, match="cosine"):
        mask_schedule("sigmoid")
    with pytest.raises(DecodingError, match="at least 1 step"):
        remask_ratios("cosine", 0)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "exponential"])
@pytest.mark.parametrize("noise", [0.0, 4.5])
def test_iterative_decoding_keeps_tokens_and_follows_the_schedule(schedule: str, noise: float) -> None:
    tokens, mask = clip_and_mask()
    fn = RecordingLogits()
    steps = 6
    result = iterative_decode(
        fn, tokens, mask, K, steps, schedule, 1.0, noise, torch.Generator().manual_seed(0)
    )
    n = int(mask[0].sum())
    expected_left = [n]  # masked per clip before each step: the schedule, revealing at least one per step
    for r in remask_ratios(schedule, steps):
        expected_left.append(min(math.ceil(r * n), max(expected_left[-1] - 1, 0)))
    # a step runs while something is masked (the steep exponential schedule is done one step early)
    assert result.n_forward == len(fn.inputs) == sum(1 for left in expected_left[:-1] if left > 0)
    assert result.n_forward >= steps - 1
    seen = [*fn.inputs, result.tokens]
    for s, (before, after) in enumerate(zip(seen, seen[1:], strict=False)):
        known = before != K
        assert torch.equal(after[known], before[known])  # a kept token never changes
        assert (before == K).flatten(1).sum(1).tolist() == [expected_left[s]] * 3
    assert torch.equal(result.tokens[:, :2], tokens[:, :2])  # context untouched
    assert not (result.tokens == K).any()  # no mask left
    assert result.tokens.max() < K


def test_clips_with_different_masks_and_more_steps_than_tokens() -> None:
    tokens, mask = clip_and_mask(B=2)
    mask[1] = False
    mask[1, 3, 0, :3] = True  # clip 1: only 3 tokens to decode
    fn = RecordingLogits()
    result = iterative_decode(fn, tokens, mask, K, steps=40, generator=torch.Generator().manual_seed(0))
    assert result.n_forward <= 32  # clip 0 has 32 tokens and each step reveals at least one per clip
    assert not (result.tokens == K).any()
    assert torch.equal(result.tokens[~mask], tokens[~mask])


def test_zero_temperature_one_step_is_argmax_and_seeds_repeat() -> None:
    tokens, mask = clip_and_mask()
    fn = RecordingLogits()
    one = iterative_decode(fn, tokens, mask, K, steps=1, temperature=0.0)
    expected = fn(tokens.masked_fill(mask, K)).argmax(-1)
    assert one.n_forward == 1
    assert torch.equal(one.tokens[mask], expected[mask])
    a = iterative_decode(fn, tokens, mask, K, 5, "cosine", 1.0, 4.5, torch.Generator().manual_seed(9))
    b = iterative_decode(fn, tokens, mask, K, 5, "cosine", 1.0, 4.5, torch.Generator().manual_seed(9))
    c = iterative_decode(fn, tokens, mask, K, 5, "cosine", 1.0, 4.5, torch.Generator().manual_seed(10))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_most_confident_tokens_are_kept_first() -> None:
    tokens, mask = clip_and_mask(B=1, T=3, context=2)
    logits = torch.zeros(1, 3, 4, 4, K)
    confident = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    confident[0, 2, 1] = True  # one row of very peaked predictions
    logits[..., 7] = torch.where(confident, 20.0, 0.5)
    n_initial = mask.flatten(1).sum(1)
    new_tokens, new_mask = iterative_decode_step(
        logits, tokens.masked_fill(mask, K), mask, n_initial, 0.75, 0.0, 0.0
    )
    assert int(new_mask.sum()) == 12
    assert not new_mask[confident].any()
    assert (new_tokens[confident] == 7).all()


def test_autoregressive_decoding_goes_in_raster_order_one_token_per_pass() -> None:
    tokens, mask = clip_and_mask(B=2)
    fn = RecordingLogits()
    result = autoregressive_decode(fn, tokens, mask, K, generator=torch.Generator().manual_seed(0))
    assert result.n_forward == int(mask[0].sum()) == len(fn.inputs)
    seen = [*fn.inputs, result.tokens]
    filled = []
    for before, after in zip(seen, seen[1:], strict=False):
        known = before != K
        assert torch.equal(after[known], before[known])
        newly = ((before == K) & (after != K))[0].flatten().nonzero().flatten().tolist()
        assert len(newly) == 1
        filled += newly
    assert filled == sorted(filled)
    assert not (result.tokens == K).any()
    assert torch.equal(result.tokens[~mask], tokens[~mask])


def test_step_scripts_and_the_decoder_module_matches_the_python_loop() -> None:
    torch.manual_seed(0)
    cfg = MaskViTModelConfig(
        codebook_size=K, grid_h=4, grid_w=4, num_frames=4, d_model=32, n_blocks=1, n_heads=4, dropout=0.0
    )
    model = MaskViT(cfg).eval()
    tokens, mask = clip_and_mask()
    actions = torch.randn(3, 3, 5)
    torch.jit.script(iterative_decode_step)
    decoder = IterativeDecoder(model, model.mask_token, steps=4, confidence_noise=2.0)
    scripted = torch.jit.script(decoder)
    with torch.no_grad():
        eager = decoder(tokens, mask, actions, torch.Generator().manual_seed(3))
        compiled = scripted(tokens, mask, actions, torch.Generator().manual_seed(3))
        loop = iterative_decode(
            lambda t: model(t, actions),
            tokens,
            mask,
            K,
            4,
            "cosine",
            1.0,
            2.0,
            torch.Generator().manual_seed(3),
        )
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, loop.tokens)
    assert not (compiled == K).any()


def test_bad_arguments_are_refused() -> None:
    tokens, mask = clip_and_mask()
    fn = RecordingLogits()
    with pytest.raises(DecodingError, match="bool"):
        iterative_decode(fn, tokens, mask.long(), K)
    with pytest.raises(DecodingError, match=r"\(B, T, h, w\)"):
        autoregressive_decode(fn, tokens[0], mask[0], K)
    with pytest.raises(DecodingError, match="temperature"):
        iterative_decode(fn, tokens, mask, K, temperature=-1.0)
