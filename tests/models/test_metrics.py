"""Metrics on inputs with known answers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from maskvit_mpc.models.metrics import CodeCounter, changing_pixel_mask, masked_psnr, psnr, ssim

sys.path.insert(0, str(Path(__file__).parent))


def test_psnr_of_a_known_mse() -> None:
    target = torch.full((2, 3, 8, 8), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(pred, target).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)
    assert float(psnr(target, target)[0]) == pytest.approx(100.0)  # identical: capped, not infinite
    assert float(psnr(pred * 255, target * 255, data_range=255.0)[0]) == pytest.approx(20.0, abs=1e-3)


def test_masked_psnr_counts_only_masked_pixels() -> None:
    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    pred[:, :, 0, 0] = 0.1  # the only error, inside the mask of image 0
    pred[:, :, 3, 3] = 1.0  # a big error outside every mask
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True  # two pixels: MSE = 0.01 / 2 -> 23.01 dB
    out = masked_psnr(pred, target, mask)
    assert float(out[0]) == pytest.approx(10 * math.log10(2 / 0.01), abs=1e-3)
    assert math.isnan(float(out[1]))  # empty mask


def test_ssim_is_one_for_identical_images_and_drops_with_noise() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    slight = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(noisy, x).shape == (2,)
    assert float(ssim(noisy, x).mean()) < float(ssim(slight, x).mean()) < 1.0


def test_codebook_usage_and_perplexity() -> None:
    counter = CodeCounter(16)
    counter.update(torch.tensor([[0, 1], [2, 3]]))
    counter.update(torch.tensor([0, 1, 2, 3]))
    stats = counter.stats()
    assert (stats.used, stats.size) == (4, 16)
    assert stats.usage == pytest.approx(0.25)
    assert stats.perplexity == pytest.approx(4.0)  # uniform over 4 codes
    skewed = CodeCounter(4)
    skewed.update(torch.tensor([0] * 9 + [1]))
    p = torch.tensor([0.9, 0.1])
    assert skewed.stats().perplexity == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    assert CodeCounter(8).stats().usage == 0.0


def test_changing_pixel_mask_marks_what_moves() -> None:
    frames = torch.full((3, 4, 4, 3), 100, dtype=torch.uint8)
    frames[1, 2, 2, 0] = 200  # a moving object passes pixel (2, 2)
    frames[2, 0, 1, 1] = 105  # sensor noise below the threshold
    mask = changing_pixel_mask(frames, threshold=10)
    assert mask.shape == (4, 4)
    assert mask.nonzero().tolist() == [[2, 2]]


def test_ssim_is_exact_under_bf16_autocast():
    a = torch.rand(2, 3, 32, 32) * 0.1 + 0.8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
