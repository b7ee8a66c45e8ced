"""Tokenizer losses: weighted reconstruction, PatchGAN hinge loss with the adaptive weight, and an
optional perceptual (VGG16 / LPIPS-style) term that needs a user-supplied weights file.

The generator loss is  rec + quantizer + perceptual_weight * perceptual + disc_weight * lambda * g,
where lambda = ||grad_last rec|| / ||grad_last g|| at the decoder's last layer (VQGAN, Esser et al. 2021),
and the GAN terms are zero before ``disc_start_step``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs.errors import UserError
from ..configs.schema import TokenizerConfig

__all__ = [
    "LossTerms",
    "PatchDiscriminator",
    "PerceptualLoss",
    "TokenizerLoss",
    "adaptive_weight",
    "hinge_d_loss",
    "hinge_g_loss",
    "pixel_weights",
]

log = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): a grid of real/fake logits, one per overlapping image patch.

    GroupNorm instead of BatchNorm: no running statistics to keep in step across DDP ranks, and the
    real and fake batches do not share statistics.
    """

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for n in range(1, layers + 1):
            c_next = channels * min(2**n, 8)
            stride = 2 if n < layers else 1
            mods += [
                nn.Conv2d(c, c_next, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(32 if c_next % 32 == 0 else 1, c_next),
                nn.LeakyReLU(0.2),
            ]
            c = c_next
        mods.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, frames: Tensor) -> Tensor:
        """Frames (B, 3, H, W) in [0, 1] -> logits (B, 1, h', w')."""
        return self.net(frames * 2.0 - 1.0)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """||d rec / d last_layer|| / ||d g / d last_layer||, clamped to [0, max_weight] and detached: it balances
    the GAN term against reconstruction whatever their scales."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def pixel_weights(segmentation: Tensor, object_weight: float, margin: int = 0) -> Tensor:
    """Segmentation (B, H, W) int (0 background, >0 gripper/objects) -> loss weights (B, 1, H, W).

    The static background covers most pixels; weighting the few moving ones keeps the tokenizer from
    spending its codes on the table. ``margin`` pixels around them (a square neighbourhood) get the
    same weight: the anti-aliased edge just outside the segmentation is where a reconstruction blurs
    an object onto the table, and unweighted it held two thirds of the whole-frame error (BENCHMARKS.md).
    """
    objects = (segmentation > 0).to(torch.float32).unsqueeze(1)
    if margin > 0:
        objects = F.max_pool2d(objects, 2 * margin + 1, stride=1, padding=margin)
    return torch.where(objects > 0, object_weight, 1.0).to(torch.float32)


# torchvision's vgg16().features layout up to relu5_3: channel counts, "M" = max-pool
_VGG16_LAYOUT: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
]
_VGG_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features.

    The weights file (loaded with ``torch.load(weights_only=True)``) holds a torchvision VGG16
    ``state_dict`` (keys ``features.N.weight`` / ``features.N.bias``; other keys such as
    ``classifier.*`` are ignored) and, optionally, LPIPS's linear layers (``lin0.model.1.weight`` ...
    ``lin4.model.1.weight``, shape (1, C, 1, 1)). Without the linear layers every channel counts equally.
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                c = int(item)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.register_buffer("lin", torch.zeros(len(_VGG_TAPS), 512))  # 0: use the channel mean
        self._load(Path(weights_path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(
                f"perceptual weights file {path} does not exist: fix tokenizer.perceptual_weights_path"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read perceptual weights {path}: {exc}") from None
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(features)
        except RuntimeError as exc:
            raise UserError(f"{path} is not a torchvision VGG16 state_dict: {exc}") from None
        for k, channels in enumerate(_VGG_CHANNELS):
            weight = state.get(f"lin{k}.model.1.weight")
            if weight is not None:
                self.lin[k, :channels] = weight.reshape(-1).float()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen: always in eval mode

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Frames (B, 3, H, W) in [0, 1] -> scalar distance (mean over the batch)."""
        x = torch.cat([pred, target]).sub(self.mean).div(self.std)
        total = x.new_zeros(())
        tap = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _VGG_TAPS[tap]:
                fp, ft = F.normalize(x, dim=1).chunk(2)
                diff = (fp - ft).pow(2)  # (B, C, h, w)
                channels = diff.shape[1]
                weights = self.lin[tap, :channels]
                if bool((weights == 0).all()):
                    total = total + diff.mean(1).mean()
                else:
                    total = total + (diff * weights.view(1, -1, 1, 1)).sum(1).mean()
                tap += 1
                if tap == len(_VGG_TAPS):
                    break
        return total


class LossTerms(NamedTuple):
    loss: Tensor  # scalar to backpropagate
    logs: dict[str, float]  # named parts, for the metrics CSV


@contextmanager
def _frozen(module: nn.Module):
    """Parameters stop collecting gradients inside the block (the generator's pass through the critic)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class TokenizerLoss(nn.Module):
    """Generator and discriminator objectives. The discriminator itself belongs to the trainer (it may
    be wrapped in DDP), and is passed in."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.perceptual: PerceptualLoss | None = None
        if cfg.perceptual_weights_path and cfg.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(cfg.perceptual_weights_path)
            log.info("perceptual loss on (weights %s)", cfg.perceptual_weights_path)
        else:
            log.info(
                "perceptual loss off: set tokenizer.perceptual_weights_path to a VGG16/LPIPS weights file "
                "to use it (they cannot be downloaded at run time)"
            )

    def gan_active(self, step: int) -> bool:
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start_step

    def reconstruction(self, frames: Tensor, reconstruction: Tensor, segmentation: Tensor | None) -> Tensor:
        err = (
            (reconstruction - frames).abs()
            if self.cfg.recon_loss == "l1"
            else (reconstruction - frames).pow(2)
        )
        if segmentation is not None and self.cfg.object_weight != 1.0:
            err = err * pixel_weights(segmentation, self.cfg.object_weight, self.cfg.object_margin)
        return err.mean()

    def generator_loss(
        self,
        frames: Tensor,
        reconstruction: Tensor,
        quantizer_loss: Tensor,
        step: int,
        last_layer: Tensor,
        discriminator: nn.Module | None,
        segmentation: Tensor | None = None,
    ) -> LossTerms:
        """The tokenizer's loss. frames/reconstruction (B, 3, H, W) in [0, 1]; segmentation (B, H, W) or None."""
        rec = self.reconstruction(frames, reconstruction, segmentation)
        total = rec + quantizer_loss
        logs = {"rec_loss": float(rec.detach()), "quant_loss": float(quantizer_loss.detach())}
        if self.perceptual is not None:
            perceptual = self.perceptual(reconstruction, frames)
            total = total + self.cfg.perceptual_weight * perceptual
            logs["perceptual_loss"] = float(perceptual.detach())
        g_loss = total.new_zeros(())
        weight = total.new_zeros(())
        if self.gan_active(step) and discriminator is not None:
            with _frozen(discriminator):
                g_loss = hinge_g_loss(discriminator(reconstruction))
            weight = adaptive_weight(total, g_loss, last_layer, self.cfg.adaptive_weight_max)
            total = total + self.cfg.disc_weight * weight * g_loss
        logs.update(g_loss=float(g_loss.detach()), adaptive_weight=float(weight))
        return LossTerms(total, logs)

    def discriminator_loss(
        self, frames: Tensor, reconstruction: Tensor, step: int, discriminator: nn.Module
    ) -> LossTerms:
        """Hinge loss of the critic on real frames vs detached reconstructions; zero before the GAN starts."""
        if not self.gan_active(step):
            zero = frames.new_zeros(())
            return LossTerms(zero, {"d_loss": 0.0})
        logits = discriminator(torch.cat([frames, reconstruction.detach()]))
        real, fake = logits.chunk(2)
        loss = hinge_d_loss(real, fake)
        logs = {
            "d_loss": float(loss.detach()),
            "logits_real": float(real.detach().mean()),
            "logits_fake": float(fake.detach().mean()),
        }
        return LossTerms(loss, logs)
