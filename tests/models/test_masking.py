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


def test_context_weights_mark_what_copying_the_last_context_frame_gets_wrong() -> None:
    # one position; context frames 0-1, future frames 2-4: the token changes at frame 2 and stays
    tokens = torch.tensor([5, 6, 7, 7, 6]).reshape(1, 5, 1, 1)
    changed = informative_tokens(tokens, "changed").flatten().tolist()
    assert changed == [False, True, True, False, True]
    context = informative_tokens(tokens, "context", context_frames=2).flatten().tolist()
    # frame 3 equals frame 2 but not the last context frame (6); frame 4 differs from frame 3
    assert context == [False, True, True, True, True]
    # with one context frame the reference is frame 0 (5): every later frame differs from it
    assert informative_tokens(tokens, "context", context_frames=1).flatten().tolist() == [False] + [True] * 4
    back = torch.tensor([5, 6, 6, 6, 5]).reshape(1, 5, 1, 1)
    # frame 4 goes back to 5: it differs from the context (6) and from frame 3
    assert informative_tokens(back, "context", context_frames=2).flatten().tolist() == [
        False,
        True,
        False,
        False,
        True,
    ]
    weights = token_weights(tokens, "context", 8.0, context_frames=2)
    assert weights.flatten().tolist() == [1.0, 8.0, 8.0, 8.0, 8.0]
    with pytest.raises(MaskingError, match="context_frames"):
        informative_tokens(tokens, "context", context_frames=6)


def test_objective_passes_its_context_length_to_the_weights() -> None:
    tokens = torch.tensor([5, 6, 7, 7]).reshape(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, masked: torch.Tensor, actions: object, pose: object) -> torch.Tensor:
            seen["masked"] = masked
            return torch.zeros(*masked.shape, 8)

    objective = MVMObjective(
        mask_token=8, context_frames=2, ratio_range=(0.999, 1.0), token_weighting="context", token_weight=4.0
    )
    out = objective(Recorder(), tokens, None, torch.Generator().manual_seed(0))
    # future frames 2 and 3 are both masked and both informative under "context" (3 is not "changed")
    assert out.informative_share == 1.0
    assert (seen["masked"][:, 2:] == 8).all()


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


@pytest.mark.parametrize("weighting", ["none", "changed", "context"])
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


def test_object_cells_weigh_at_least_the_object_token_weight() -> None:
    """Cells showing an object in the target frame, or in the last context frame (where it was), weigh
    object_token_weight; the others keep their token_weighting weight; all positions masked here."""
    K = 8
    tokens = torch.zeros(1, 4, 1, 3, dtype=torch.long)
    tokens[0, 3, 0, 2] = 1  # a changed token at frame 3, column 2
    objects = torch.zeros(1, 4, 1, 3, dtype=torch.bool)
    objects[0, 1, 0, 0] = True  # an object in the last context frame (1), column 0 ...
    objects[0, 2, 0, 1] = True  # ... that shows in column 1 at frame 2
    captured = {}

    def fake_loss(logits, targets, mask, weights, label_smoothing):  # noqa: ANN001, ANN202
        captured["weights"] = weights
        return logits.sum() * 0

    class Zeros(torch.nn.Module):
        def forward(self, masked: torch.Tensor, actions: object, pose: object) -> torch.Tensor:
            return torch.zeros(*masked.shape, K, requires_grad=True)

    import maskvit_mpc.models.masking as masking

    objective = MVMObjective(
        mask_token=K, context_frames=2, ratio_range=(0.999, 1.0), token_weighting="changed", token_weight=4.0,
        object_token_weight=10.0,
    )  # fmt: skip
    original = masking.mvm_loss
    masking.mvm_loss = fake_loss
    try:
        objective(Zeros(), tokens, None, torch.Generator().manual_seed(0), None, objects)
    finally:
        masking.mvm_loss = original
    w = captured["weights"][0, :, 0]  # (T, 3)
    assert w[2].tolist() == [10.0, 10.0, 1.0]  # where the object was, and where it is now
    assert w[3].tolist() == [10.0, 1.0, 4.0]  # where it was; the changed token keeps 4
    assert w[1].tolist() == [10.0, 1.0, 1.0]  # context frame (never a target)
    with pytest.raises(MaskingError, match="object cells"):
        objective(Zeros(), tokens, None, torch.Generator().manual_seed(0), None, None)
    with pytest.raises(MaskingError, match="object cells are"):
        objective(Zeros(), tokens, None, torch.Generator().manual_seed(0), None, objects[:, :3])


def test_object_weighted_training_lowers_the_loss_on_the_object_cells() -> None:
    """A few steps with object_token_weight on a batch where one object token moves: its cells' loss falls
    further than with the weight off (same seed, same steps)."""
    K = 8

    def run(object_weight: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = MaskViT(
            MaskViTModelConfig(
                codebook_size=K,
                grid_h=4,
                grid_w=4,
                num_frames=4,
                d_model=32,
                n_blocks=1,
                n_heads=4,
                dropout=0.0,
            )
        )
        tokens = torch.zeros(8, 4, 4, 4, dtype=torch.long)
        objects = torch.zeros(8, 4, 4, 4, dtype=torch.bool)
        for b in range(8):
            for t in range(4):
                col = min(t, 1 + b % 3) if t else 0
                tokens[b, t, b % 4, col] = 2 + b % 5
                objects[b, t, b % 4, col] = True
        actions = torch.randn(8, 3, 5)
        objective = MVMObjective(mask_token=K, context_frames=1, object_token_weight=object_weight)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(25):
            out = objective(model, tokens, actions, g, None, objects)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            masked = tokens.clone()
            masked[:, 1:] = K
            logits = model(masked, actions, None)
        ce = torch.nn.functional.cross_entropy(logits.permute(0, 4, 1, 2, 3), tokens, reduction="none")
        cells = (objects | objects[:, :1])[:, 1:]
        return ce[:, 1:][cells].mean().item(), ce[:, 1:][~cells].mean().item()

    plain_obj, _ = run(1.0)
    weighted_obj, _ = run(20.0)
    assert weighted_obj < plain_obj, (weighted_obj, plain_obj)
