"""The tokenizer network: shapes, straight-through gradients, codebook health, FSQ, TorchScript, checkpoints."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from maskvit_mpc.configs import ConfigError, load_config
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.models.tokenizer import (
    FSQ,
    TokenizerModelConfig,
    VectorQuantizer,
    VQModel,
    frames_to_tensor,
    load_tokenizer,
)
from maskvit_mpc.models.training import CheckpointError, load_checkpoint, save_checkpoint

VARIANTS = {
    "vq-cosine": {"quantizer": "vq", "cosine_codes": True, "codebook_update": "gradient"},
    "vq-euclid-ema": {"quantizer": "vq", "cosine_codes": False, "codebook_update": "ema"},
    "vq-cosine-ema": {"quantizer": "vq", "cosine_codes": True, "codebook_update": "ema"},
    "fsq": {"quantizer": "fsq", "fsq_levels": [5, 4, 3]},
    "fsq-background": {"quantizer": "fsq", "fsq_levels": [5, 4, 3], "learned_background": True},
    "fsq-local": {"quantizer": "fsq", "fsq_levels": [5, 4, 3], "norm": "channel", "encoder_token_kernel": 1},
}

sys.path.insert(0, str(Path(__file__).parent))


def tiny(**kw) -> TokenizerModelConfig:
    base = {
        "image_size": 16,
        "grid_size": 4,
        "base_channels": 8,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "code_dim": 8,
        "codebook_size": 32,
    }
    return TokenizerModelConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_of_encode_decode_and_forward(variant: str) -> None:
    cfg = tiny(**VARIANTS[variant])
    model = VQModel(cfg)
    frames = torch.rand(3, 3, 16, 16)
    out = model(frames)
    assert out.reconstruction.shape == (3, 3, 16, 16)
    assert out.indices.shape == (3, 4, 4) and out.indices.dtype == torch.int64
    assert out.quantizer_loss.dim() == 0
    model.eval()
    with torch.no_grad():
        codes = model.encode(frames)
        decoded = model.decode(codes)
    assert codes.shape == (3, 4, 4) and int(codes.min()) >= 0 and int(codes.max()) < cfg.num_codes
    assert decoded.shape == (3, 3, 16, 16) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1


@pytest.mark.parametrize(
    ("image", "grid", "mult"), [(32, 8, [1, 2, 2]), (32, 4, [1, 1, 2, 2]), (16, 16, [1])]
)
def test_downsampling_follows_channel_mult(image: int, grid: int, mult: list[int]) -> None:
    model = VQModel(tiny(image_size=image, grid_size=grid, channel_mult=mult)).eval()
    assert model.encode(torch.rand(1, 3, image, image)).shape == (1, grid, grid)


def test_inconsistent_sizes_are_refused() -> None:
    with pytest.raises(UserError, match="grid_size"):
        VQModel(tiny(image_size=16, grid_size=8, channel_mult=[1, 2, 2]))
    with pytest.raises(ConfigError, match="grid_size"):
        load_config("default", ["tokenizer.grid_size=16"])
    model = VQModel(tiny())
    with pytest.raises(UserError, match="expects frames"):
        model(torch.rand(1, 3, 32, 32))


def test_frames_to_tensor_layout_and_range() -> None:
    frames = torch.zeros(2, 5, 4, 3, dtype=torch.uint8)
    frames[..., 1] = 255
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 5, 4)
    assert x[:, 1].eq(1).all() and x[:, 0].eq(0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_pass_the_quantizer_to_the_encoder(variant: str) -> None:
    model = VQModel(tiny(**VARIANTS[variant]))
    out = model(torch.rand(2, 3, 16, 16))
    ((out.reconstruction - 0.5) ** 2).mean().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_codebook_learns_from_the_codebook_loss() -> None:
    model = VQModel(tiny())
    out = model(torch.rand(2, 3, 16, 16))
    out.quantizer_loss.backward()
    grad = model.quantizer.codebook.grad
    used = torch.unique(out.indices)
    assert float(grad[used].abs().sum()) > 0
    unused = torch.ones(32, dtype=torch.bool)
    unused[used] = False
    assert float(grad[unused].abs().sum()) == 0.0


def test_short_training_lowers_the_loss_on_a_fixed_batch() -> None:
    model = VQModel(tiny(dead_code_steps=0))
    frames = torch.rand(4, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(frames)
        loss = F.l1_loss(out.reconstruction, frames) + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_codebook_is_initialised_from_the_first_batch() -> None:
    vq = VectorQuantizer(dim=4, codebook_size=8, cosine=True, init_from_data=True, dead_code_steps=0)
    z = torch.randn(2, 4, 3, 3)
    assert not bool(vq.initialized)
    vq.train()(z)
    assert bool(vq.initialized)
    latents = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    # every code is (up to the small noise added) one of the batch's latents
    nearest = torch.cdist(vq.codes().detach(), latents).min(dim=1).values
    assert float(nearest.max()) < 0.01
    before = vq.codebook.detach().clone()
    vq(torch.randn(2, 4, 3, 3))
    assert torch.equal(before, vq.codebook.detach())  # only the first batch initialises


@pytest.mark.parametrize("update", ["gradient", "ema"])
def test_dead_codes_are_restarted_from_encoder_outputs(update: str) -> None:
    vq = VectorQuantizer(
        dim=4, codebook_size=6, cosine=True, update=update, init_from_data=False, dead_code_steps=3
    )
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        vq.codebook.copy_(-target.expand(6, 4))  # every code points away from the data
        vq.codebook[0] = target  # but one, which wins every latent
        if update == "ema":
            vq.ema_embed_sum.copy_(vq.codebook)
    z = target.view(1, 4, 1, 1) + 0.3 * torch.randn(4, 4, 3, 3)
    vq.train()
    used = [int(torch.unique(vq(z).indices).numel()) for _ in range(2)]
    assert used == [1, 1] and int(vq.steps_unused[1:].min()) == 2
    vq(z)  # third step unused: codes 1..5 are restarted
    assert int(vq.steps_unused.max()) == 0
    latents = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    assert float(torch.cdist(vq.codes().detach()[1:], latents).min(dim=1).values.max()) < 1e-5
    assert int(torch.unique(vq(z).indices).numel()) > 1  # restarted codes win latents again


def test_eval_mode_never_changes_the_codebook() -> None:
    vq = VectorQuantizer(dim=4, codebook_size=6, update="ema", dead_code_steps=1).eval()
    before = vq.codebook.clone()
    for _ in range(3):
        vq(torch.randn(2, 4, 2, 2))
    assert torch.equal(before, vq.codebook) and not bool(vq.initialized)


def test_fsq_indices_round_trip_and_cover_the_codebook() -> None:
    fsq = FSQ([5, 4, 3])
    assert fsq.codebook_size == 60
    z = 3 * torch.randn(2, 3, 4, 4)
    out = fsq(z)
    assert out.indices.shape == (2, 4, 4)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 60
    assert torch.equal(fsq.quantize(z), out.indices)
    assert torch.allclose(fsq.lookup(out.indices), out.latents)
    every = torch.arange(60).view(1, 6, 10)
    codes = fsq.lookup(every)  # (1, 3, 6, 10): every index is a distinct point in [-1, 1]^3
    assert float(codes.abs().max()) <= 1.0
    assert torch.unique(codes.permute(0, 2, 3, 1).reshape(-1, 3), dim=0).shape[0] == 60
    # every code is reachable from some latent, and its lookup is what forward returns for that latent
    z_all = 4 * (2 * torch.rand(1, 3, 64, 64) - 1)
    reached = fsq(z_all)
    assert torch.unique(reached.indices).numel() == 60
    assert torch.allclose(fsq.lookup(reached.indices), reached.latents)


def test_fsq_uses_many_codes_from_random_latents() -> None:
    fsq = FSQ([8, 8, 8])
    idx = fsq.quantize(torch.randn(8, 3, 16, 16))
    assert torch.unique(idx).numel() > 200  # no collapse: codes are a fixed grid


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("variant", VARIANTS)
def test_torchscript_encode_decode_match_eager(variant: str) -> None:
    model = VQModel(tiny(**VARIANTS[variant]))
    model.train()(torch.rand(4, 3, 16, 16))  # initialise the codebook from data first
    model.eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    frames = torch.rand(5, 3, 16, 16)
    codes = model.encode(frames)
    assert torch.equal(loaded.encode(frames), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_learned_background_lets_one_code_decode_to_position_dependent_pixels() -> None:
    """A conv decoder alone maps a constant code grid to a nearly constant image; the learned background
    gives each position its own pixels, which is what a fixed camera's table needs."""
    model = VQModel(tiny(quantizer="fsq", fsq_levels=[5, 4, 3], learned_background=True)).eval()
    gradient = torch.linspace(0, 1, 16)[None, None, None, :].expand(1, 3, 16, 16)
    opt = torch.optim.Adam([model.decoder.background], lr=0.05)
    codes = torch.zeros(1, 4, 4, dtype=torch.long)  # the same code everywhere
    for _ in range(100):
        loss = F.mse_loss(model.decoder(model.quantizer.lookup(codes)), gradient * 2 - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    decoded = model.decode(codes)
    assert (decoded[..., -1] - decoded[..., 0]).mean() > 0.8  # left-to-right ramp reproduced
    assert "decoder.background" in model.state_dict()
    plain = VQModel(tiny(quantizer="fsq", fsq_levels=[5, 4, 3]))
    assert "decoder.background" not in plain.state_dict()  # older checkpoints load unchanged


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    cfg = tiny(quantizer="vq", codebook_update="ema")
    model = VQModel(cfg)
    model.train()(torch.rand(4, 3, 16, 16))
    path = save_checkpoint(
        tmp_path / "step_0000001.pt",
        models={"tokenizer": model},
        step=1,
        config={"tokenizer": load_config().tokenizer.model_dump()},
        extra={"model_config": cfg.to_dict()},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["extra"]["model_config"]["codebook_update"] == "ema"
    loaded = load_tokenizer(path)
    frames = torch.rand(3, 3, 16, 16)
    model.eval()
    assert torch.equal(loaded.encode(frames), model.encode(frames))
    assert torch.equal(loaded.decode(model.encode(frames)), model.decode(model.encode(frames)))
    assert bool(loaded.quantizer.initialized)
    save_checkpoint(tmp_path / "other.pt", models={"x": torch.nn.Linear(1, 1)}, step=0, config={})
    with pytest.raises(CheckpointError, match="not a tokenizer checkpoint"):
        load_tokenizer(tmp_path / "other.pt")
    assert load_checkpoint(tmp_path / "other.pt")["step"] == 0


@pytest.mark.parametrize("preset", ["tokenizer_cpu", "tokenizer_paper"])
def test_presets_build(preset: str) -> None:
    cfg = load_config(preset).tokenizer
    model_cfg = TokenizerModelConfig.from_config(cfg)
    with torch.device("meta"):
        model = VQModel(model_cfg)
    params = sum(p.numel() for p in model.parameters())
    if preset == "tokenizer_cpu":
        assert (cfg.image_size, cfg.grid_size, model.num_codes) == (64, 8, 512)
        assert params < 3e6  # CPU-trainable
    else:
        assert cfg.grid_size == 16 and model.num_codes >= 1024 and cfg.disc_weight > 0


def test_bf16_autocast_keeps_the_quantizer_in_fp32() -> None:
    model = VQModel(tiny())
    frames = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames)
    assert out.quantizer_loss.dtype == torch.float32
    assert out.reconstruction.dtype == torch.bfloat16  # the decoder itself runs in bf16
    out.reconstruction.float().mean().backward()
    assert model.encoder.net[0].weight.grad is not None


def test_a_local_encoder_keeps_the_codes_of_unchanged_patches() -> None:
    """With per-pixel norms a code depends only on the pixels within the encoder's receptive field: a
    change in one corner of a 64x64 frame leaves the far corner's latent exactly as it was, while the
    image-wide GroupNorm carries it everywhere."""
    torch.manual_seed(0)
    size = {"image_size": 64, "grid_size": 8, "base_channels": 8, "channel_mult": [1, 2, 2, 2]}
    local = VQModel(
        tiny(**size, quantizer="fsq", fsq_levels=[5, 4, 3], norm="channel", encoder_token_kernel=1)
    )
    wide = VQModel(tiny(**size, quantizer="fsq", fsq_levels=[5, 4, 3]))
    frames = torch.rand(1, 3, 64, 64)
    changed = frames.clone()
    changed[..., :8, :8] = torch.rand(1, 3, 8, 8)  # the top-left token's patch
    for model, unchanged in ((local.eval(), True), (wide.eval(), False)):
        z, z_new = model.encoder(frames * 2 - 1), model.encoder(changed * 2 - 1)
        assert torch.equal(z[..., 5:, 5:], z_new[..., 5:, 5:]) == unchanged
        assert not torch.equal(z[..., 0, 0], z_new[..., 0, 0])  # the changed patch's own latent moves
    codes, new = local.encode(frames), local.encode(changed)
    assert torch.equal(codes[:, 5:, 5:], new[:, 5:, 5:])
