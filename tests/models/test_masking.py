"""The masked-visual-modeling objective: mask sampling, token weights, loss, and that it trains."""

from __future__ import annotations

import math

import pytest
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.models.masking import (
    MaskingError,
    MVMObjective,
    apply_mask,
    background_tokens,
    informative_tokens,
    mvm_loss,
    sample_mask,
    target_frames,
    token_weights,
)
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig


def test_target_frames_keeps_context_and_extra_frames_visible() -> None:
    assert target_frames(6, 2).tolist() == [False, False, True, True, True, True]
    assert target_frames(6, 2, (-1,)).tolist() == [False, False, True, True, True, False]
    assert target_frames(6, 1, (3,)).tolist() == [False, True, True, False, True, True]
    with pytest.raises(MaskingError, match="context_frames"):
        target_frames(4, 4)
    with pytest.raises(MaskingError, match="outside"):
        target_frames(4, 2, (7,))
    with pytest.raises(MaskingError, match="nothing left"):
        target_frames(3, 2, (2,))


def test_context_and_visible_frames_are_never_masked() -> None:
    targets = target_frames(6, 2, (-1,))
    mask = sample_mask(targets, 500, (4, 4), generator=torch.Generator().manual_seed(0))
    assert mask.shape == (500, 6, 4, 4)
    assert not mask[:, :2].any()
    assert not mask[:, -1].any()
    assert mask[:, 2:5].any()


def test_mask_counts_follow_ceil_of_a_uniform_ratio() -> None:
    targets = target_frames(4, 1)  # N = 3 frames x 8 x 8 = 192 target tokens
    n = 192
    mask = sample_mask(targets, 8000, (8, 8), generator=torch.Generator().manual_seed(1))
    counts = mask.flatten(1).sum(1).float()
    assert counts.min() >= math.ceil(0.5 * n)
    assert counts.max() <= n
    ratios = counts / n
    # ceil(r N)/N for r ~ U[0.5, 1) is uniform on [0.5, 1] up to 1/N steps
    assert abs(ratios.mean().item() - 0.75) < 0.01
    hist = torch.histc(ratios, bins=5, min=0.5, max=1.0) / len(ratios)
    assert torch.all((hist - 0.2).abs() < 0.02), hist
    # positions are chosen uniformly: each target token is masked about 75% of the time
    per_position = mask[:, 1:].float().mean(0)
    assert (per_position - 0.75).abs().max() < 0.03


def test_custom_ratio_range_and_seeded_repeatability() -> None:
    targets = target_frames(3, 1)
    a = sample_mask(targets, 300, (4, 4), (0.9, 0.95), torch.Generator().manual_seed(3))
    b = sample_mask(targets, 300, (4, 4), (0.9, 0.95), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    counts = a.flatten(1).sum(1)
    assert counts.min() >= math.ceil(0.9 * 32) and counts.max() <= math.ceil(0.95 * 32)
    with pytest.raises(MaskingError, match="low < high"):
        sample_mask(targets, 1, (4, 4), (0.5, 0.5))


def test_apply_mask_puts_the_mask_token_only_where_masked() -> None:
    tokens = torch.randint(0, 10, (2, 3, 4, 4))
    mask = torch.rand(2, 3, 4, 4) < 0.5
    masked = apply_mask(tokens, mask, 10)
    assert (masked[mask] == 10).all()
    assert torch.equal(masked[~mask], tokens[~mask])


def test_changed_and_background_weights() -> None:
    tokens = torch.tensor([[[[1, 2]], [[1, 3]], [[4, 3]]]])  # (1, T=3, 1, 2)
    changed = informative_tokens(tokens, "changed")
    assert changed.tolist() == [[[[False, False]], [[False, True]], [[True, False]]]]
    background = background_tokens(tokens)
    assert background.tolist() == [[1, 3]]
    weights = token_weights(tokens, "background", 5.0, background)
    assert weights.tolist() == [[[[1.0, 5.0]], [[1.0, 1.0]], [[5.0, 1.0]]]]
    assert torch.equal(token_weights(tokens, "changed", 3.0), 1.0 + 2.0 * changed.float())
    assert torch.equal(token_weights(tokens, "none", 3.0), torch.ones(1, 3, 1, 2))
    with pytest.raises(MaskingError, match="background_tokens"):
        token_weights(tokens, "background", 5.0)


def test_loss_counts_only_masked_positions_with_their_weights() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 7, generator=g)
    targets = torch.randint(0, 7, (2, 3, 4, 4), generator=g)
    mask = torch.rand(2, 3, 4, 4, generator=g) < 0.5
    weights = 1.0 + 3.0 * (torch.rand(2, 3, 4, 4, generator=g) < 0.3).float()
    loss = mvm_loss(logits, targets, mask, weights)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="none")
    m, w = mask.reshape(-1), weights.reshape(-1)
    assert torch.allclose(loss, (ce[m] * w[m]).sum() / w[m].sum())
    # logits at visible positions do not matter
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 7)
    assert torch.allclose(mvm_loss(changed, targets, mask, weights), loss)
    assert torch.allclose(mvm_loss(logits, targets, mask), ce[m].mean())
    assert not torch.allclose(mvm_loss(logits, targets, mask, label_smoothing=0.1), ce[m].mean())


def test_objective_from_config() -> None:
    cfg = load_config("default", ["maskvit.token_weighting=changed", "maskvit.extra_visible_frames=[-1]"])
    objective = MVMObjective.from_config(cfg.maskvit, mask_token=16)
    assert objective.context_frames == cfg.maskvit.context_frames
    assert objective.extra_visible_frames == (-1,)
    assert objective.token_weighting == "changed"
    assert objective.ratio_range == (0.5, 1.0)


@pytest.mark.parametrize("weighting", ["none", "changed"])
def test_short_training_run_lowers_the_masked_token_loss(weighting: str) -> None:
    torch.manual_seed(0)
    K = 8
    model = MaskViT(
        MaskViTModelConfig(
            codebook_size=K, grid_h=4, grid_w=4, num_frames=4, d_model=32, n_blocks=1, n_heads=4, dropout=0.0
        )
    )
    # clips where a "blob" token moves one column per frame over a static background
    tokens = torch.zeros(8, 4, 4, 4, dtype=torch.long)
    for b in range(8):
        for t in range(4):
            tokens[b, t, b % 4, t] = 1 + b % (K - 1)
    actions = torch.randn(8, 3, 5)
    objective = MVMObjective(mask_token=K, context_frames=1, token_weighting=weighting, token_weight=4.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            return objective(model, tokens, actions, torch.Generator().manual_seed(123)).loss.item()

    before = evaluate()
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        model.train()
        out = objective(model, tokens, actions, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = evaluate()
    assert after < 0.5 * before, (before, after)
    assert 0.5 <= out.mask_ratio <= 1.0
    assert 0.0 <= out.accuracy <= 1.0
