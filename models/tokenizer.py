"""The per-frame tokenizer: a convolutional VQ-GAN generator that maps each frame to an h x w grid of codes.

Reading order: :class:`TokenizerModelConfig` -> :class:`ResBlock` -> :class:`Encoder` -> :class:`Decoder`
-> :class:`VectorQuantizer` / :class:`FSQ` -> :class:`VQModel`.

Frames enter and leave as float tensors (B, 3, H, W) in [0, 1]; inside, pixels live in [-1, 1]. Each
frame is encoded on its own (no temporal compression), so a clip is a batch of frames.

The quantizers are written here rather than taken from a library so that the inference path
(``VQModel.encode`` / ``VQModel.decode``) compiles with ``torch.jit.script``: the training-only parts
(data-dependent initialisation, dead-code restarts, EMA updates, collectives across DDP ranks) sit in
``forward`` methods marked ``@torch.jit.unused``, and the lookups the exported predictor needs are
small, branch-free tensor code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs.errors import UserError
from ..configs.schema import TokenizerConfig

__all__ = [
    "FSQ",
    "Decoder",
    "Encoder",
    "QuantizerOutput",
    "TokenizerModelConfig",
    "TokenizerOutput",
    "VQModel",
    "VectorQuantizer",
    "frames_to_tensor",
    "load_tokenizer",
    "tokenizer_from_checkpoint",
]


@dataclass
class TokenizerModelConfig:
    """What it takes to rebuild the network (not its training): stored as a plain dict in checkpoints."""

    image_size: int = 64  # square frames, pixels
    grid_size: int = 8  # tokens per side
    base_channels: int = 16
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # len - 1 = downsamplings
    num_res_blocks: int = 1
    code_dim: int = 8  # vq latent width (fsq uses len(fsq_levels))
    quantizer: str = "vq"  # "vq" or "fsq"
    codebook_size: int = 512  # vq only
    cosine_codes: bool = True  # l2-normalised latents and codes
    codebook_update: str = "gradient"  # "gradient" or "ema"
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    init_codebook_from_data: bool = True
    dead_code_steps: int = 200  # 0: never restart
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8])
    # learned position embedding at the decoder's token grid plus a learned background image added to
    # its output; False in checkpoints written before the option existed
    learned_background: bool = False
    # "group": GroupNorm, as VQ-GAN; it normalises over the whole image, so a gripper moving anywhere
    # shifts every position's latent and flips codes on unchanged table (measured: 56% of the codes of
    # bit-identical patches flip between frames). "channel": each pixel normalised over its channels.
    norm: str = "group"
    # kernel of the encoder's layers at token resolution; 1 keeps each code a function of its own patch
    # and the receptive field of the higher-resolution layers (about two tokens on each side at 64x64
    # frames and 8x8 tokens), so with "channel" norms a change far away cannot flip it
    encoder_token_kernel: int = 3

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> TokenizerModelConfig:
        names = cls.__dataclass_fields__.keys()
        return cls(**{name: getattr(cfg, name) for name in names})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerModelConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(
                f"tokenizer model config has unknown fields {sorted(unknown)}: checkpoint too new?"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def num_codes(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def latent_dim(self) -> int:
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.code_dim


def frames_to_tensor(frames: Tensor) -> Tensor:
    """uint8 frames (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    return frames.movedim(-1, -3).float().div(255.0)


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel (B, C, H, W): no statistics shared across positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(_groups(channels), channels)
    if kind == "channel":
        return ChannelNorm(channels)
    raise UserError(f"tokenizer norm must be 'group' or 'channel', got {kind!r}")


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, conv) twice, 1x1 skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group", kernel: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2),
            _norm(norm, c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, out_dim, H / 2**d, W / 2**d) with d = len(channel_mult) - 1."""

    def __init__(self, cfg: TokenizerModelConfig, out_dim: int) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c = widths[0]
        k = cfg.encoder_token_kernel
        for level, width in enumerate(widths):
            last = level == len(widths) - 1  # token resolution
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, width, cfg.norm, k if last else 3))
                c = width
            if not last:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # learned 2x downsampling
        layers += [
            ResBlock(c, c, cfg.norm, k),
            _norm(cfg.norm, c),
            nn.SiLU(),
            nn.Conv2d(c, out_dim, k, padding=k // 2),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, in_dim, h, w) -> (B, 3, h * 2**d, w * 2**d) in about [-1, 1]; the encoder mirrored."""

    def __init__(self, cfg: TokenizerModelConfig, in_dim: int) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(in_dim, c, 3, padding=1)
        # A fixed camera sees the same table in every frame. A conv decoder cannot tell positions apart
        # away from the borders, so without help it spends codes on where the background is brighter;
        # a per-position embedding and a background image make "empty table" one code everywhere and
        # leave the codes to the gripper and the objects.
        grid = cfg.grid_size
        size = cfg.image_size
        self.position = nn.Parameter(torch.zeros(1, c, grid, grid)) if cfg.learned_background else None
        self.background = nn.Parameter(torch.zeros(1, 3, size, size)) if cfg.learned_background else None
        layers: list[nn.Module] = [ResBlock(c, c, cfg.norm)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, widths[level], cfg.norm))
                c = widths[level]
            if level > 0:
                # nearest-neighbour upsampling then a conv (no checkerboard artefacts of transposed
                # convs) that already narrows to the next level's width: the high-resolution layers
                # are where the compute goes
                layers += [
                    nn.Upsample(scale_factor=2.0, mode="nearest"),
                    nn.Conv2d(c, widths[level - 1], 3, padding=1),
                ]
                c = widths[level - 1]
        layers += [_norm(cfg.norm, c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)  # its weight drives the GAN's adaptive weight

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        position = self.position
        if position is not None:
            x = x + position
        out = self.conv_out(self.net(x))
        background = self.background
        if background is not None:
            out = out + background
        return out


class QuantizerOutput(NamedTuple):
    latents: Tensor  # (B, D, h, w) quantized, straight-through: gradients reach the encoder
    indices: Tensor  # (B, h, w) int64 code indices
    loss: Tensor  # scalar: codebook + commitment (vq), zero (fsq)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantization with the measures that keep a codebook alive.

    - ``cosine``: latents and codes are l2-normalised, so nearest means highest cosine similarity
      (ViT-VQGAN); no code can drift far from the latents.
    - ``update="ema"``: codes are exponential moving averages of the latents assigned to them instead of
      being learned by the codebook loss.
    - ``init_from_data``: the first training batch's latents seed the codebook.
    - ``dead_code_steps``: a code unused for that many training steps is replaced by a random latent
      from the current batch.
    Under DistributedDataParallel all of these agree across ranks: counts and sums are all-reduced and
    the random choices are broadcast from rank 0.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        cosine: bool = True,
        update: str = "gradient",
        ema_decay: float = 0.99,
        commitment_weight: float = 0.25,
        init_from_data: bool = True,
        dead_code_steps: int = 200,
    ) -> None:
        super().__init__()
        if update not in ("gradient", "ema"):
            raise UserError(f"codebook update must be 'gradient' or 'ema', got {update!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.cosine = cosine
        self.use_ema = update == "ema"
        self.ema_decay = ema_decay
        self.commitment_weight = commitment_weight
        self.init_from_data = init_from_data
        self.dead_code_steps = dead_code_steps
        codebook = torch.randn(codebook_size, dim)
        if cosine:
            codebook = F.normalize(codebook, dim=1)
        if self.use_ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # buffers, so checkpoints and DDP's buffer broadcast carry the codebook's health state
        self.register_buffer("initialized", torch.tensor(not init_from_data))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    def codes(self) -> Tensor:
        """The effective codebook (K, D), normalised when cosine."""
        return F.normalize(self.codebook, dim=1) if self.cosine else self.codebook

    def _nearest(self, flat: Tensor, codes: Tensor) -> Tensor:
        if self.cosine:
            return torch.argmax(flat @ codes.t(), dim=1)
        distance = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codes.t() + codes.pow(2).sum(1)[None, :]
        return torch.argmin(distance, dim=1)

    def quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, h, w) -> code indices (B, h, w) int64."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        return self._nearest(flat, self.codes()).reshape(b, h, w)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) -> quantized latents (B, D, h, w)."""
        return F.embedding(indices, self.codes()).permute(0, 3, 1, 2)

    @torch.jit.unused
    def forward(self, z: Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.codes()
        indices = self._nearest(flat.detach(), codes.detach())
        quantized = codes[indices]  # (N, D); carries gradients to the codebook in gradient mode
        commitment = F.mse_loss(flat, quantized.detach())
        if self.use_ema:
            loss = self.commitment_weight * commitment
        else:
            loss = F.mse_loss(quantized, flat.detach()) + self.commitment_weight * commitment
        if self.training:
            self._maintain(flat.detach(), indices)
        straight_through = flat + (quantized - flat).detach()
        latents = straight_through.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return QuantizerOutput(latents, indices.reshape(b, h, w), loss)

    @torch.jit.unused
    def _random_rows(self, flat: Tensor, n: int) -> Tensor:
        """n random latents from this batch, the same on every rank (rank 0's choice)."""
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        rows = flat[pick].clone()
        if _is_distributed():
            dist.broadcast(rows, src=0)
        return rows

    @torch.jit.unused
    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        rows = self._random_rows(flat, self.codebook_size)
        # a little noise, so a batch smaller than the codebook still gives distinct codes
        rows = rows + 1e-3 * rows.std() * torch.randn_like(rows)
        if self.cosine:
            rows = F.normalize(rows, dim=1)
        self.codebook.data.copy_(rows)
        if self.use_ema:
            self.ema_embed_sum.copy_(rows)
            self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.jit.unused
    @torch.no_grad()
    def _maintain(self, flat: Tensor, indices: Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        if self.use_ema:
            sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat)
            if _is_distributed():
                dist.all_reduce(sums)
        if _is_distributed():
            dist.all_reduce(counts)
        if self.use_ema:
            decay = self.ema_decay
            self.ema_cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            # Laplace smoothing: a code with no members does not divide by zero
            n = self.ema_cluster_size.sum()
            size = (self.ema_cluster_size + 1e-5) / (n + self.codebook_size * 1e-5) * n
            codebook = self.ema_embed_sum / size[:, None]
            self.codebook.copy_(F.normalize(codebook, dim=1) if self.cosine else codebook)
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps <= 0:
            return
        dead = self.steps_unused >= self.dead_code_steps
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        rows = self._random_rows(flat, n_dead)
        self.codebook.data[dead] = rows
        if self.use_ema:
            self.ema_embed_sum[dead] = rows
            self.ema_cluster_size[dead] = 1.0
        self.steps_unused.masked_fill_(dead, 0)


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): each latent channel is bounded and rounded to one
    of ``levels[i]`` values; the code index is the mixed-radix number of the rounded channels. There is no
    codebook to learn, so it cannot collapse. Codebook size = prod(levels).
    """

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        levels_t = torch.tensor(levels, dtype=torch.long)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def _round(self, z: Tensor) -> Tensor:
        """(..., D) unbounded -> (..., D) integers in [-(L // 2), (L - 1) // 2] per channel, straight-through."""
        levels = self.levels.to(z.dtype)
        half_l = (levels - 1) * (1 + 1e-3) / 2  # the margin keeps tanh's extremes inside the last level
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(z + shift) * half_l - offset
        return bounded + (torch.round(bounded) - bounded).detach()

    def _to_indices(self, rounded: Tensor) -> Tensor:
        digits = (rounded + (self.levels // 2).to(rounded.dtype)).round().long()
        return (digits * self.basis).sum(-1)

    def quantize(self, z: Tensor) -> Tensor:
        """Latents (B, D, h, w) -> code indices (B, h, w) int64."""
        return self._to_indices(self._round(z.permute(0, 2, 3, 1)))

    def lookup(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) -> quantized latents (B, D, h, w) in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels  # (B, h, w, D)
        half_width = (self.levels // 2).to(torch.float32)
        return ((digits.to(torch.float32) - half_width) / half_width).permute(0, 3, 1, 2)

    @torch.jit.unused
    def forward(self, z: Tensor) -> QuantizerOutput:
        rounded = self._round(z.permute(0, 2, 3, 1))  # (B, h, w, D)
        half_width = (self.levels // 2).to(z.dtype)
        latents = (rounded / half_width).permute(0, 3, 1, 2)
        return QuantizerOutput(latents, self._to_indices(rounded.detach()), z.new_zeros(()))


class TokenizerOutput(NamedTuple):
    reconstruction: Tensor  # (B, 3, H, W), unclamped, in about [0, 1]
    indices: Tensor  # (B, h, w) int64
    quantizer_loss: Tensor  # scalar


class VQModel(nn.Module):
    """Encoder -> quantizer -> decoder. ``encode``/``decode`` compile with torch.jit.script.

    >>> model = VQModel(TokenizerModelConfig())
    >>> codes = model.encode(frames)        # (B, 3, 64, 64) in [0, 1] -> (B, 8, 8) int64
    >>> frames_hat = model.decode(codes)    # -> (B, 3, 64, 64) in [0, 1]
    """

    def __init__(self, cfg: TokenizerModelConfig) -> None:
        super().__init__()
        downs = len(cfg.channel_mult) - 1
        if cfg.image_size != cfg.grid_size * 2**downs:
            raise UserError(
                f"image_size {cfg.image_size} != grid_size {cfg.grid_size} * 2**{downs}: "
                "give channel_mult one entry per resolution level"
            )
        self.config = cfg
        self.image_size = cfg.image_size
        self.grid_size = cfg.grid_size
        self.num_codes = cfg.num_codes
        self.encoder = Encoder(cfg, cfg.latent_dim)
        self.decoder = Decoder(cfg, cfg.latent_dim)
        if cfg.quantizer == "fsq":
            self.quantizer: nn.Module = FSQ(list(cfg.fsq_levels))
        elif cfg.quantizer == "vq":
            self.quantizer = VectorQuantizer(
                cfg.code_dim,
                cfg.codebook_size,
                cosine=cfg.cosine_codes,
                update=cfg.codebook_update,
                ema_decay=cfg.ema_decay,
                commitment_weight=cfg.commitment_weight,
                init_from_data=cfg.init_codebook_from_data,
                dead_code_steps=cfg.dead_code_steps,
            )
        else:
            raise UserError(f"quantizer must be 'vq' or 'fsq', got {cfg.quantizer!r}")

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output conv weight, where the GAN's adaptive weight compares gradient norms."""
        return self.decoder.conv_out.weight

    def _check(self, frames: Tensor) -> None:
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[2] != self.image_size:
            raise UserError(
                f"tokenizer expects frames (B, 3, {self.image_size}, {self.image_size}) in [0, 1], "
                f"got {tuple(frames.shape)}: resize the episodes or set tokenizer.image_size"
            )

    @torch.jit.unused
    def forward(self, frames: Tensor) -> TokenizerOutput:
        """Training pass: frames (B, 3, H, W) in [0, 1] -> reconstruction, indices, quantizer loss."""
        self._check(frames)
        z = self.encoder(frames * 2.0 - 1.0)
        # nearest-code search and codebook statistics in fp32 even under bf16 autocast
        with torch.autocast(z.device.type, enabled=False):
            q = self.quantizer(z.float())
        reconstruction = (self.decoder(q.latents) + 1.0) / 2.0
        return TokenizerOutput(reconstruction, q.indices, q.loss)

    @torch.jit.export
    def encode(self, frames: Tensor) -> Tensor:
        """Frames (B, 3, H, W) float in [0, 1] -> code indices (B, h, w) int64."""
        return self.quantizer.quantize(self.encoder(frames * 2.0 - 1.0))

    @torch.jit.export
    def decode(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) int64 -> frames (B, 3, H, W) float in [0, 1]."""
        out = self.decoder(self.quantizer.lookup(indices))
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)


def tokenizer_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> VQModel:
    """Rebuild the tokenizer from a checkpoint dict already read with ``training.load_checkpoint``."""
    from .training import CheckpointError

    model_cfg = ckpt.get("extra", {}).get("model_config")
    if model_cfg is None or "tokenizer" not in ckpt.get("models", {}):
        raise CheckpointError(f"{where} is not a tokenizer checkpoint (train one with train-tokenizer)")
    model = VQModel(TokenizerModelConfig.from_dict(model_cfg))
    model.load_state_dict(ckpt["models"]["tokenizer"])
    return model.eval()


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> VQModel:
    """The tokenizer saved by ``train-tokenizer`` (any ``step_N.pt``), in eval mode on ``device``."""
    from .training import load_checkpoint

    return tokenizer_from_checkpoint(load_checkpoint(path, map_location=device), str(path)).to(device)
