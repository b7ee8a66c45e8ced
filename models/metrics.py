"""Image and codebook metrics: PSNR, SSIM, PSNR on a pixel mask, codebook usage and perplexity.

Images are float tensors (B, C, H, W) in [0, data_range]; per-image results come back as (B,) so that
callers can average over frames, episodes or whatever they report.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = ["CodeCounter", "CodebookStats", "changing_pixel_mask", "masked_psnr", "psnr", "ssim"]

_MIN_MSE = 1e-10  # identical images: report 100 dB instead of infinity


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, dB: (B, C, H, W) x 2 -> (B,)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(_MIN_MSE))


def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR over the pixels where ``mask`` (B, H, W) is true, per image; NaN for an image with an empty mask."""
    err = (pred.float() - target.float()).pow(2).mean(1)  # (B, H, W): mean over channels
    m = mask.to(err.dtype)
    count = m.flatten(1).sum(1)
    mse = (err * m).flatten(1).sum(1) / count.clamp_min(1.0)
    out = 10.0 * torch.log10(data_range**2 / mse.clamp_min(_MIN_MSE))
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (Gaussian 11x11 window, sigma 1.5, torchmetrics): (B, C, H, W) -> (B,)."""
    # always fp32: under bf16 autocast the local variances cancel and SSIM(x, x) comes out near 0.3
    with torch.autocast(pred.device.type, enabled=False):
        return structural_similarity_index_measure(
            pred.float().clamp(0, data_range), target.float(), data_range=data_range, reduction="none"
        )


def changing_pixel_mask(frames: Tensor, threshold: int = 10) -> Tensor:
    """Pixels that change within an episode, for data without segmentation.

    frames: (T, H, W, 3) uint8 -> (H, W) bool: true where some channel's range over time exceeds
    ``threshold`` (0-255); the static background is false.
    """
    f = frames.to(torch.int16)
    return (f.amax(0) - f.amin(0)).amax(-1) > threshold


class CodebookStats(NamedTuple):
    used: int  # codes that occurred at least once
    size: int  # codebook size
    usage: float  # used / size
    perplexity: float  # exp(entropy) of the code histogram: the effective number of codes in use


class CodeCounter:
    """Accumulates a code histogram over batches: ``update(indices)`` then ``stats()``."""

    def __init__(self, codebook_size: int) -> None:
        self.counts = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, indices: Tensor) -> None:
        self.counts += torch.bincount(indices.flatten().cpu(), minlength=self.counts.numel())

    def reset(self) -> None:
        self.counts.zero_()

    def stats(self) -> CodebookStats:
        total = int(self.counts.sum())
        used = int((self.counts > 0).sum())
        size = self.counts.numel()
        if total == 0:
            return CodebookStats(0, size, 0.0, 0.0)
        p = self.counts[self.counts > 0].double() / total
        perplexity = float(torch.exp(-(p * p.log()).sum()))
        return CodebookStats(used, size, used / size, perplexity)
