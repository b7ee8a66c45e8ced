"""MaskViT transformer: window partitions, window locality, action conditioning, TorchScript."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from maskvit_mpc.configs import load_config
from maskvit_mpc.models.maskvit import Layer, MaskViT, MaskViTInputError, MaskViTModelConfig

K = 16  # codebook size of the tiny test models


def tiny_config(**overrides) -> MaskViTModelConfig:
    base = dict(
        codebook_size=K, grid_h=8, grid_w=8, num_frames=5, d_model=32, n_blocks=2, n_heads=4, dropout=0.0
    )
    base.update(overrides)
    return MaskViTModelConfig(**base)


def random_clip(B: int = 2, T: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K + 1, (B, T, 8, 8), generator=g)  # K = [MASK]
    actions = torch.randn(B, T - 1, 5, generator=g)
    return tokens, actions


@pytest.mark.parametrize("kind", ["spatial", "spatiotemporal", "full"])
def test_partition_and_merge_are_exact_inverses(kind: str) -> None:
    layer = Layer(tiny_config(grid_h=8, grid_w=12, st_window_h=4, st_window_w=3), kind)
    x = torch.randn(2, 3, 8, 12, 5)
    windows = layer.partition(x)
    assert torch.equal(layer.merge(windows), x)
    tokens_per_window = {"spatial": 8 * 12, "spatiotemporal": 3 * 4 * 3, "full": 3 * 8 * 12}[kind]
    assert windows.shape[-2:] == (tokens_per_window, 5)


def test_spatiotemporal_window_holds_the_tube_across_frames() -> None:
    layer = Layer(tiny_config(), "spatiotemporal")
    x = torch.randn(2, 3, 8, 8, 5)
    windows = layer.partition(x)  # (B, nh, nw, T*4*4, d)
    assert windows.shape == (2, 2, 2, 3 * 16, 5)
    # window (row 1, col 0) holds rows 4..7 and columns 0..3 of every frame, frame-major
    expected = rearrange(x[:, :, 4:8, 0:4], "b t i j d -> b (t i j) d")
    assert torch.equal(windows[:, 1, 0], expected)


def _changed_positions(layer: Layer, x: torch.Tensor, where: tuple[int, int, int]) -> torch.Tensor:
    """(T, h, w) bool: outputs that change when the input token at `where` (t, i, j) changes."""
    layer.eval()
    with torch.no_grad():  # larger weights than the init, so every attention path is clearly visible
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    x2 = x.clone()
    x2[0, where[0], where[1], where[2]] = torch.randn(x.shape[-1])
    with torch.no_grad():
        return (layer(x2) - layer(x))[0].abs().amax(-1) > 1e-6


def test_spatial_window_attention_stays_within_its_frame() -> None:
    torch.manual_seed(0)
    layer = Layer(tiny_config(), "spatial")
    changed = _changed_positions(layer, torch.randn(1, 4, 8, 8, 32), (2, 5, 1))
    assert changed[2].all()  # every token of the frame sees the change
    assert not changed[[0, 1, 3]].any()  # no other frame does


def test_spatiotemporal_window_attention_stays_within_its_tube() -> None:
    torch.manual_seed(0)
    layer = Layer(tiny_config(), "spatiotemporal")
    changed = _changed_positions(layer, torch.randn(1, 4, 8, 8, 32), (2, 5, 1))  # window rows 4-7, cols 0-3
    inside = torch.zeros(4, 8, 8, dtype=torch.bool)
    inside[:, 4:8, 0:4] = True
    assert changed[inside].all()  # all frames of the tube see it
    assert not changed[~inside].any()


def test_full_attention_layer_sees_the_whole_clip() -> None:
    torch.manual_seed(0)
    layer = Layer(tiny_config(), "full")
    changed = _changed_positions(layer, torch.randn(1, 4, 8, 8, 32), (2, 5, 1))
    assert changed.all()


@pytest.mark.parametrize("attention", ["window", "full"])
@pytest.mark.parametrize("conditioning", ["none", "input", "every_block"])
def test_forward_shapes_and_action_free_use(attention: str, conditioning: str) -> None:
    torch.manual_seed(0)
    model = MaskViT(tiny_config(attention=attention, action_conditioning=conditioning)).eval()
    tokens, actions = random_clip()
    with torch.no_grad():
        logits = model(tokens, actions)
        action_free = model(tokens)
        shorter = model(tokens[:, :3], actions[:, :2])
    assert logits.shape == (2, 5, 8, 8, K)
    assert action_free.shape == (2, 5, 8, 8, K)
    assert shorter.shape == (2, 3, 8, 8, K)
    assert torch.isfinite(logits).all()
    if conditioning == "none":
        assert torch.equal(logits, action_free)
        assert not any("action" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("conditioning", ["input", "every_block"])
def test_action_conditioning_changes_predictions(conditioning: str) -> None:
    torch.manual_seed(0)
    model = MaskViT(tiny_config(action_conditioning=conditioning)).eval()
    tokens, actions = random_clip()
    other = actions.clone()
    other[:, 2] += 0.5  # the action leading to frame 3
    with torch.no_grad():
        base, moved, free = model(tokens, actions), model(tokens, other), model(tokens)
    assert (base - moved)[:, 3].abs().amax() > 1e-4
    assert (base - free).abs().amax() > 1e-4


def test_action_t_conditions_frame_t_plus_one_only_at_the_input() -> None:
    # with window attention a frame's tokens mix with other frames, so check the input term itself
    torch.manual_seed(0)
    model = MaskViT(tiny_config(n_blocks=1)).eval()
    tokens, actions = random_clip(B=1)
    seen = {}
    model.drop.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0].clone()))
    with torch.no_grad():
        model(tokens, actions)
        with_actions = seen.pop("x")
        model(tokens)
        without = seen.pop("x")
    delta = with_actions - without  # (1, T, h, w, d)
    assert torch.equal(delta[:, 0], torch.zeros_like(delta[:, 0]))
    expected = model.action_proj(actions)  # (1, T-1, d)
    for t in range(1, 5):
        assert torch.allclose(delta[0, t], expected[0, t - 1].expand(8, 8, -1), atol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the shape checks become constants
@pytest.mark.parametrize("attention", ["window", "full"])
def test_torchscript_script_and_trace_match_eager(attention: str) -> None:
    torch.manual_seed(0)
    model = MaskViT(tiny_config(attention=attention, action_conditioning="every_block")).eval()
    tokens, actions = random_clip(B=3)
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, (tokens, actions))
    with torch.no_grad():
        eager = model(tokens, actions)
        assert torch.equal(scripted(tokens, actions), eager)
        assert torch.equal(traced(tokens, actions), eager)
        assert torch.equal(scripted(tokens, None), model(tokens))
        # the scripted module is not tied to the batch size or clip length it first saw
        assert torch.equal(scripted(tokens[:1, :4], actions[:1, :3]), model(tokens[:1, :4], actions[:1, :3]))


def test_bad_inputs_are_refused_with_the_expected_shape() -> None:
    model = MaskViT(tiny_config()).eval()
    tokens, actions = random_clip()
    with pytest.raises(MaskViTInputError, match="8, 8"):
        model(tokens[:, :, :4])
    with pytest.raises(MaskViTInputError, match="at most 5 frames"):
        model(torch.cat([tokens, tokens], dim=1))
    with pytest.raises(MaskViTInputError, match="T-1"):
        model(tokens, actions[:, :2])
    with pytest.raises(MaskViTInputError, match="5 components"):
        model(tokens, actions[..., :4])


def test_config_from_the_maskvit_section_and_round_trip() -> None:
    cfg = load_config("default", ["maskvit.d_model=64", "maskvit.n_heads=4", "maskvit.st_window=[2,4]"])
    model_cfg = MaskViTModelConfig.from_config(cfg.maskvit, codebook_size=512, grid=8)
    assert model_cfg.num_frames == cfg.maskvit.context_frames + cfg.maskvit.future_frames
    assert (model_cfg.st_window_h, model_cfg.st_window_w) == (2, 4)
    assert model_cfg.mask_token == 512
    assert MaskViTModelConfig.from_dict(model_cfg.to_dict()) == model_cfg
    with pytest.raises(MaskViTInputError, match="whole"):
        MaskViTModelConfig.from_config(cfg.maskvit, codebook_size=512, grid=(8, 6))
    with pytest.raises(MaskViTInputError, match="unknown fields"):
        MaskViTModelConfig.from_dict({**model_cfg.to_dict(), "depth": 3})


def test_actions_are_divided_by_the_configured_scale_before_the_projection() -> None:
    scale = [0.05, 0.05, 0.05, 0.3, 1.0]
    torch.manual_seed(0)
    scaled = MaskViT(tiny_config(action_scale=scale)).eval()
    plain = MaskViT(tiny_config()).eval()  # no scale: checkpoints from before the field
    plain.load_state_dict(scaled.state_dict())  # the scale is config, not a weight
    tokens, actions = random_clip()
    with torch.no_grad():
        assert torch.allclose(
            scaled(tokens, actions), plain(tokens, actions / torch.tensor(scale)), atol=1e-5
        )
        assert not torch.allclose(scaled(tokens, actions), plain(tokens, actions), atol=1e-3)
        # survives scripting (the exported predictor runs the scripted model)
        assert torch.allclose(torch.jit.script(scaled)(tokens, actions), scaled(tokens, actions), atol=1e-6)
    old = tiny_config().to_dict()
    del old["action_scale"]
    assert MaskViTModelConfig.from_dict(old).action_scale is None
    with pytest.raises(MaskViTInputError, match="5 positive"):
        tiny_config(action_scale=[0.05, 0.05, 0.0, 0.3, 1.0])


def test_the_preset_scale_puts_step_limited_actions_in_unit_range() -> None:
    cfg = load_config("default")
    limits = cfg.safety.step_limits
    expected = [limits.dx, limits.dy, limits.dz, limits.dyaw, 1.0]
    assert cfg.maskvit.action_scale == pytest.approx(expected)
    with pytest.raises(Exception, match="action_scale"):
        load_config("default", ["maskvit.action_scale=[1,1,1]"])


def test_cumulative_actions_reach_every_later_frame_at_the_input() -> None:
    torch.manual_seed(0)
    tokens, actions = random_clip(B=1)
    other = actions.clone()
    other[:, 1] += 1.0  # the action from frame 1 to frame 2
    deltas = {}
    for cumulative in (False, True):
        model = MaskViT(tiny_config(n_blocks=1, action_cumulative=cumulative)).eval()
        assert model.action_proj.in_features == (10 if cumulative else 5)
        seen = {}
        model.drop.register_forward_hook(
            lambda mod, inp, out, seen=seen: seen.setdefault("x", []).append(inp[0])
        )
        with torch.no_grad():
            model(tokens, actions)
            model(tokens, other)
        first, second = seen["x"]
        deltas[cumulative] = (second - first).abs().flatten(2).amax(dim=2)[0]  # per frame
    # one step: only frame 2 changes; cumulative: frames 2, 3 and 4 (their sums include action 1)
    assert deltas[False][2] > 0 and torch.all(deltas[False][[0, 1, 3, 4]] == 0)
    assert torch.all(deltas[True][2:] > 0) and torch.all(deltas[True][:2] == 0)
    scripted = torch.jit.script(MaskViT(tiny_config(action_cumulative=True)).eval())
    assert scripted(tokens, actions).shape == (1, 5, 8, 8, K)
    assert MaskViTModelConfig.from_dict(tiny_config(action_cumulative=True).to_dict()).action_cumulative


@pytest.mark.parametrize("conditioning", ["input", "every_block"])
def test_pose_conditioning_starts_as_the_model_without_it_and_then_uses_the_pose(conditioning: str) -> None:
    torch.manual_seed(0)
    plain = MaskViT(tiny_config(action_conditioning=conditioning)).eval()
    cfg = tiny_config(
        action_conditioning=conditioning,
        pose_conditioning=True,
        pose_offset=[0, 0, 0.1],
        pose_scale=[0.1] * 3,
    )
    posed = MaskViT(cfg).eval()
    missing, unexpected = posed.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all("pose_proj" in k for k in missing) and not unexpected
    tokens, actions = random_clip()
    low, high = torch.tensor([[0.0, 0.0, 0.02]] * 2), torch.tensor([[0.0, 0.0, 0.12]] * 2)
    with torch.no_grad():
        # zero-initialised: fine-tuning from a model without the pose starts from its predictions
        assert torch.equal(posed(tokens, actions, low), plain(tokens, actions))
        for p in (p for n, p in posed.named_parameters() if "pose_proj" in n):
            p.normal_(0.0, 0.5)
        a, b = posed(tokens, actions, low), posed(tokens, actions, high)
    assert (a - b).abs().amax() > 1e-3  # the height reaches every frame's logits
    assert ((a - b).abs().amax(dim=(2, 3, 4)) > 1e-4).all()
    with pytest.raises(MaskViTInputError, match="pass start_pose"):
        posed(tokens, actions)
    with pytest.raises(MaskViTInputError, match=r"start_pose must be \(B, 3\)"):
        posed(tokens, actions, torch.zeros(2, 5))
    # gradients reach the pose projection
    posed.train()
    posed(tokens, actions, high).logsumexp(-1).mean().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in posed.named_parameters() if "pose_proj" in n
    )
    # scripted like the rest of the network
    scripted = torch.jit.script(posed.eval())
    with torch.no_grad():
        assert torch.allclose(scripted(tokens, actions, high), posed(tokens, actions, high), atol=1e-5)


def test_pose_settings_come_from_the_config_and_are_checked() -> None:
    cfg = load_config("default", ["maskvit.pose_conditioning=true", "maskvit.pose_scale=[0.2,0.2,0.05]"])
    model_cfg = MaskViTModelConfig.from_config(cfg.maskvit, K, 8)
    assert model_cfg.pose_conditioning and model_cfg.pose_scale == [0.2, 0.2, 0.05]
    assert MaskViTModelConfig.from_config(load_config("default").maskvit, K, 8).pose_scale is None
    with pytest.raises(MaskViTInputError, match="pose_scale must be positive"):
        tiny_config(pose_conditioning=True, pose_offset=[0, 0, 0], pose_scale=[0.1, 0.0, 0.1])


@pytest.mark.parametrize("conditioning", ["input", "every_block"])
def test_deepened_model_starts_as_the_trained_one_and_its_new_block_learns(conditioning: str) -> None:
    torch.manual_seed(0)
    extra = dict(action_conditioning=conditioning, pose_conditioning=True, pose_scale=[0.1] * 3)
    shallow = MaskViT(tiny_config(n_blocks=1, **extra)).eval()
    for p in shallow.parameters():  # a "trained" model: no zero weights anywhere
        p.data.normal_(0.0, 0.1)
    deep = MaskViT(tiny_config(n_blocks=2, **extra)).eval()
    missing, unexpected = deep.load_state_dict(shallow.state_dict(), strict=False)
    assert missing and all(k.startswith("blocks.1.") for k in missing) and not unexpected
    tokens, actions = random_clip()
    pose = torch.tensor([[0.01, -0.02, 0.03]] * 2)
    with torch.no_grad():
        before = deep(tokens, actions, pose)
        assert (before - shallow(tokens, actions, pose)).abs().amax() > 1e-3  # random new block: different
        deep.make_blocks_identity(1)
        assert torch.allclose(deep(tokens, actions, pose), shallow(tokens, actions, pose), atol=1e-5)
    # the new block's zeroed output projections get gradients at once, so training grows it
    deep.train()
    deep(tokens, actions, pose).logsumexp(-1).mean().backward()
    new = dict(deep.blocks[1].named_parameters())
    for name in ("first.attn.proj.weight", "first.mlp.proj.weight", "second.mlp.proj.weight"):
        assert new[name].grad is not None and new[name].grad.abs().sum() > 0, name
