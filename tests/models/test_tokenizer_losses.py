"""Tokenizer losses: hinge GAN, adaptive weight, the discriminator's start step, object weighting, perceptual."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.models.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    TokenizerLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    pixel_weights,
)

sys.path.insert(0, str(Path(__file__).parent))


def tcfg(**overrides):
    return load_config("default", [f"tokenizer.{k}={v}" for k, v in overrides.items()]).tokenizer


def test_hinge_losses_on_known_logits() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 5/6
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + x): 0, 1 -> mean 0.5
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 0.5))
    assert float(hinge_g_loss(fake)) == pytest.approx(1.0)


def test_patch_discriminator_gives_a_grid_of_logits() -> None:
    logits = PatchDiscriminator(channels=8, layers=3)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    layer = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(5, 4)
    out = x @ layer
    rec, g = out.pow(2).mean(), -3.0 * out.mean()
    expected = torch.autograd.grad(rec, layer, retain_graph=True)[0].norm() / (
        torch.autograd.grad(g, layer, retain_graph=True)[0].norm() + 1e-4
    )
    w = adaptive_weight(rec, g, layer)
    assert float(w) == pytest.approx(float(expected), rel=1e-5)
    assert not w.requires_grad
    assert float(adaptive_weight(rec, g, layer, max_weight=1e-3)) == pytest.approx(1e-3)


def test_pixel_weights_from_segmentation() -> None:
    seg = torch.tensor([[[0, 1], [2, 0]]])
    w = pixel_weights(seg, 20.0)
    assert w.shape == (1, 1, 2, 2)
    assert w[0, 0].tolist() == [[1.0, 20.0], [20.0, 1.0]]


def test_pixel_weights_margin_covers_the_pixels_around_objects() -> None:
    seg = torch.zeros(1, 7, 7, dtype=torch.long)
    seg[0, 3, 3] = 1
    seg[0, 0, 6] = 2  # at the border: the margin is cut by the frame, nothing wraps around
    one = pixel_weights(seg, 5.0, margin=1)[0, 0]
    expected = torch.ones(7, 7)
    expected[2:5, 2:5] = 5.0
    expected[0:2, 5:7] = 5.0
    assert torch.equal(one, expected)
    two = pixel_weights(seg, 5.0, margin=2)[0, 0]
    expected = torch.ones(7, 7)
    expected[1:6, 1:6] = 5.0
    expected[0:3, 4:7] = 5.0
    assert torch.equal(two, expected)
    assert torch.equal(pixel_weights(seg, 5.0, margin=0), pixel_weights(seg, 5.0))


def test_object_weight_scales_errors_on_object_pixels() -> None:
    loss = TokenizerLoss(tcfg(object_weight=10.0, recon_loss="l2"))
    frames = torch.zeros(1, 3, 2, 2)
    rec = torch.zeros(1, 3, 2, 2)
    rec[..., 0, 0] = 1.0  # error on a background pixel
    background = torch.zeros(1, 2, 2, dtype=torch.long)
    on_object = background.clone()
    on_object[0, 0, 0] = 2
    assert float(loss.reconstruction(frames, rec, background)) == pytest.approx(0.25)
    assert float(loss.reconstruction(frames, rec, on_object)) == pytest.approx(2.5)
    assert float(loss.reconstruction(frames, rec, None)) == pytest.approx(0.25)


def test_discriminator_switches_on_at_its_start_step() -> None:
    torch.manual_seed(0)
    cfg = tcfg(disc_weight=0.5, disc_start_step=3, disc_layers=2, disc_channels=8)
    loss = TokenizerLoss(cfg)
    disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers)
    last = torch.nn.Parameter(torch.randn(3, 3, 1, 1))
    frames = torch.rand(2, 3, 16, 16)

    def run(step: int):
        rec = torch.sigmoid(torch.nn.functional.conv2d(torch.rand(2, 3, 16, 16), last))
        return (
            loss.generator_loss(frames, rec, torch.zeros(()), step, last, disc),
            loss.discriminator_loss(frames, rec, step, disc),
            rec,
        )

    g_before, d_before, _ = run(2)
    assert g_before.logs["g_loss"] == 0.0 and g_before.logs["adaptive_weight"] == 0.0
    assert float(d_before.loss) == 0.0
    assert float(g_before.loss.detach()) == pytest.approx(g_before.logs["rec_loss"])
    g_after, d_after, _ = run(3)
    assert g_after.logs["g_loss"] != 0.0 and g_after.logs["adaptive_weight"] > 0.0
    assert float(d_after.loss.detach()) > 0.0
    assert float(g_after.loss.detach()) != pytest.approx(g_after.logs["rec_loss"])
    # the generator's pass leaves the critic's gradients alone; the critic's own loss reaches them
    g_after.loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())
    d_after.loss.backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_gan_stays_off_with_zero_weight() -> None:
    loss = TokenizerLoss(tcfg(disc_weight=0.0, disc_start_step=0))
    assert not loss.gan_active(10_000)


def test_perceptual_off_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="maskvit_mpc.models.losses"):
        loss = TokenizerLoss(tcfg())
        frames = torch.rand(1, 3, 8, 8)
        for step in range(3):
            terms = loss.generator_loss(frames, frames.clone(), torch.zeros(()), step, torch.zeros(1), None)
            assert "perceptual_loss" not in terms.logs
    messages = [r.message for r in caplog.records if "perceptual loss off" in r.message]
    assert len(messages) == 1


def _fake_vgg_file(path: Path, with_lin: bool) -> Path:
    """A VGG16-shaped state_dict with random weights (real ones cannot be downloaded here)."""
    torch.manual_seed(0)
    state = {}
    c = 3
    index = 0
    for item in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, c, 3, 3) * (2.0 / (9 * c)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(item)
        c = item
        index += 2  # conv + relu
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's full state_dict: ignored
    if with_lin:
        for k, ch in enumerate([64, 128, 256, 512, 512]):
            state[f"lin{k}.model.1.weight"] = torch.rand(1, ch, 1, 1)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("with_lin", [False, True])
def test_perceptual_loss_from_a_weights_file(tmp_path: Path, with_lin: bool) -> None:
    path = _fake_vgg_file(tmp_path / "vgg.pth", with_lin)
    perceptual = PerceptualLoss(path)
    assert not any(p.requires_grad for p in perceptual.parameters())
    x = torch.rand(2, 3, 32, 32)
    assert float(perceptual(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    d = perceptual(y, x)
    assert float(d.detach()) > 0
    d.backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    loss = TokenizerLoss(tcfg(perceptual_weights_path=str(path)))
    assert "perceptual_loss" in loss.generator_loss(x, y, torch.zeros(()), 0, torch.zeros(1), None).logs


def test_perceptual_loss_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        PerceptualLoss(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="VGG16"):
        PerceptualLoss(bad)
