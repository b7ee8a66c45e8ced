"""MaskViT: a bidirectional window transformer over per-frame VQ tokens (Gupta et al., arXiv 2206.11894).

Read top to bottom: config -> Attention -> MLP -> Layer -> Block -> MaskViT.

A clip of ``T`` frames, each an ``h x w`` grid of codebook indices, goes in; logits over the codebook come
out for every position. Index ``codebook_size`` is the [MASK] token. Each block has two layers:

* spatial window (SW): attention within one frame, a ``1 x h x w`` window;
* spatiotemporal window (STW): attention within a ``T x h' x w'`` tube (default ``h' = w' = 4``).

Both windows are plain reshapes (no padding, no cyclic shift), done with einops ``Rearrange`` layers,
which TorchScript can compile. ``attention="full"`` makes both layers attend over the whole clip, for
the window-vs-full ablation.

Action conditioning: the 5-D action taken between frames ``t`` and ``t+1`` (``actions[:, t]``) conditions
frame ``t+1``, the frame it leads to: a linear projection of it is added to every token of that frame.
Frame 0 gets nothing. With ``action_conditioning="input"`` this happens once, before the first block;
with ``"every_block"`` each block adds its own projection to its input, which keeps the action visible
deep in the network. ``actions=None`` runs the model action-free (no action term at all).

The module compiles with ``torch.jit.script`` and traces with ``torch.jit.trace``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from ..configs.errors import UserError
from ..configs.schema import MaskViTConfig

__all__ = ["MaskViT", "MaskViTInputError", "MaskViTModelConfig", "maskvit_from_checkpoint"]

ACTION_DIM = 5  # dx, dy, dz, dyaw, gripper (robot/types.py); repeated here so models need not import robot
POSE_DIM = 3  # the end effector's x, y, z (metres) that pose conditioning uses of the arm's 5-D pose


class MaskViTInputError(UserError, ValueError):
    """A model config or input tensor that does not fit the network; the message says what was expected."""


@dataclass
class MaskViTModelConfig:
    """What it takes to rebuild the network (not its objective or training): a plain dict in checkpoints."""

    codebook_size: int = 512  # from the tokenizer; index codebook_size is [MASK]
    grid_h: int = 8  # tokens per frame, vertically (from the tokenizer)
    grid_w: int = 8
    num_frames: int = 12  # most frames per clip (context + future); shorter clips use the first ones
    d_model: int = 256
    n_blocks: int = 4  # each block = SW layer + STW layer
    n_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attention: Literal["window", "full"] = "window"
    st_window_h: int = 4  # h' of the T x h' x w' spatiotemporal window
    st_window_w: int = 4
    action_conditioning: Literal["none", "input", "every_block"] = "input"
    action_dim: int = ACTION_DIM
    # Per-component divisor applied to actions before their projection, so that every component reaches
    # the network at a similar scale (raw metres are ~30x smaller than the gripper's +-1). None: no
    # scaling (checkpoints written before the field existed).
    action_scale: list[float] | None = None
    # Also feed the running sum of the (scaled) actions since the clip's first frame: frame t+1 then
    # sees its total displacement from a visible context frame directly, not only the last step.
    action_cumulative: bool = False
    # Condition every frame on the arm's end-effector position (x, y, z, metres) at the clip's first
    # frame: with the summed actions it gives the gripper's absolute position in every frame, which the
    # oblique camera cannot tell apart from the image (a higher gripper looks like one further back, and
    # only a low one pushes). Normalised as (position - pose_offset) / pose_scale; zero-initialised, so
    # a model fine-tuned with it starts out as the model without it.
    pose_conditioning: bool = False
    pose_offset: list[float] | None = None
    pose_scale: list[float] | None = None

    @property
    def action_features(self) -> int:
        return self.action_dim * (2 if self.action_cumulative else 1)

    def __post_init__(self) -> None:
        if self.action_scale is not None:
            self.action_scale = [float(v) for v in self.action_scale]
            if len(self.action_scale) != self.action_dim or min(self.action_scale) <= 0:
                raise MaskViTInputError(
                    f"action_scale needs {self.action_dim} positive values, got {self.action_scale}"
                )
        for name in ("pose_offset", "pose_scale"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, [float(v) for v in value])
                if len(value) != POSE_DIM:
                    raise MaskViTInputError(f"{name} needs {POSE_DIM} values (x, y, z), got {value}")
        if self.pose_scale is not None and min(self.pose_scale) <= 0:
            raise MaskViTInputError(f"pose_scale must be positive, got {self.pose_scale}")
        if self.d_model % self.n_heads:
            raise MaskViTInputError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        if self.grid_h % self.st_window_h or self.grid_w % self.st_window_w:
            raise MaskViTInputError(
                f"the {self.grid_h}x{self.grid_w} token grid must split into whole "
                f"{self.st_window_h}x{self.st_window_w} windows: pick an st_window that divides it"
            )
        if self.attention not in ("window", "full"):
            raise MaskViTInputError(f"attention must be 'window' or 'full', got {self.attention!r}")
        if self.action_conditioning not in ("none", "input", "every_block"):
            raise MaskViTInputError(
                f"action_conditioning must be 'none', 'input' or 'every_block', got {self.action_conditioning!r}"
            )
        if min(self.codebook_size, self.grid_h, self.grid_w, self.num_frames, self.n_blocks) < 1:
            raise MaskViTInputError("codebook_size, grid sides, num_frames and n_blocks must all be >= 1")

    @classmethod
    def from_config(
        cls, cfg: MaskViTConfig, codebook_size: int, grid: int | tuple[int, int]
    ) -> MaskViTModelConfig:
        """The network described by the ``maskvit`` config section, over a tokenizer's codes and grid."""
        grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
        return cls(
            codebook_size=codebook_size,
            grid_h=grid_h,
            grid_w=grid_w,
            num_frames=cfg.context_frames + cfg.future_frames,
            d_model=cfg.d_model,
            n_blocks=cfg.n_blocks,
            n_heads=cfg.n_heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            attention=cfg.attention,
            st_window_h=cfg.st_window[0],
            st_window_w=cfg.st_window[1],
            action_conditioning=cfg.action_conditioning,
            action_scale=list(cfg.action_scale),
            action_cumulative=cfg.action_cumulative,
            pose_conditioning=cfg.pose_conditioning,
            pose_offset=list(cfg.pose_offset) if cfg.pose_conditioning else None,
            pose_scale=list(cfg.pose_scale) if cfg.pose_conditioning else None,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskViTModelConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise MaskViTInputError(
                f"MaskViT model config has unknown fields {sorted(unknown)}: checkpoint too new?"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mask_token(self) -> int:
        return self.codebook_size


class Attention(nn.Module):
    """Multi-head self-attention over the last-but-one axis; every leading axis is a separate window."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., L, d), the leading axes index windows
        shape = x.shape
        x = x.flatten(0, -3)  # (W, L, d): one batch axis, so SDPA's fused (flash) kernels apply
        W, L, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(W, L, self.n_heads, -1).transpose(1, 2)  # (W, nh, L, hs)
        k = k.view(W, L, self.n_heads, -1).transpose(1, 2)
        v = v.view(W, L, self.n_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(shape)  # (..., L, d)
        return self.proj_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(round(d_model * mlp_ratio))
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Layer(nn.Module):
    """One pre-norm transformer layer whose attention runs inside windows of the (B, T, h, w, d) clip.

    ``kind``: "spatial" (1 x h x w: one frame), "spatiotemporal" (T x h' x w') or "full" (the whole clip).
    ``partition`` maps the clip to (..., window tokens, d) and ``merge`` is its exact inverse.
    """

    def __init__(self, cfg: MaskViTModelConfig, kind: str) -> None:
        super().__init__()
        h, w, wh, ww = cfg.grid_h, cfg.grid_w, cfg.st_window_h, cfg.st_window_w
        if kind == "spatial":
            self.partition = Rearrange("b t h w d -> b t (h w) d")
            self.merge = Rearrange("b t (h w) d -> b t h w d", h=h, w=w)
        elif kind == "spatiotemporal":
            self.partition = Rearrange("b t (nh wh) (nw ww) d -> b nh nw (t wh ww) d", wh=wh, ww=ww)
            self.merge = Rearrange("b nh nw (t wh ww) d -> b t (nh wh) (nw ww) d", wh=wh, ww=ww)
        elif kind == "full":
            self.partition = Rearrange("b t h w d -> b (t h w) d")
            self.merge = Rearrange("b (t h w) d -> b t h w d", h=h, w=w)
        else:
            raise MaskViTInputError(f"unknown attention kind {kind!r}")
        self.kind = kind
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, T, h, w, d); the MLP is per token, so only attention needs the windows
        x = x + self.merge(self.attn(self.partition(self.ln_1(x))))
        return x + self.mlp(self.ln_2(x))


class Block(nn.Module):
    """SW layer then STW layer (both full-attention layers in the ablation), with an optional action term."""

    def __init__(self, cfg: MaskViTModelConfig) -> None:
        super().__init__()
        window = cfg.attention == "window"
        self.first = Layer(cfg, "spatial" if window else "full")
        self.second = Layer(cfg, "spatiotemporal" if window else "full")
        self.action_proj = (
            nn.Linear(cfg.action_features, cfg.d_model) if cfg.action_conditioning == "every_block" else None
        )
        self.pose_proj = (
            nn.Linear(POSE_DIM, cfg.d_model)
            if cfg.pose_conditioning and cfg.action_conditioning == "every_block"
            else None
        )

    def forward(self, x: Tensor, actions: Tensor | None, pose: Tensor | None) -> Tensor:
        if self.action_proj is not None and actions is not None:
            x = x + _frame_action_term(self.action_proj(actions))
        if self.pose_proj is not None and pose is not None:
            x = x + self.pose_proj(pose)[:, None, None, None, :]
        return self.second(self.first(x))


def _frame_action_term(projected: Tensor) -> Tensor:
    """(B, T-1, d) projected actions -> (B, T, 1, 1, d): action t lands on frame t+1, frame 0 gets zeros."""
    zeros = torch.zeros_like(projected[:, :1])
    return torch.cat([zeros, projected], dim=1)[:, :, None, None, :]


class MaskViT(nn.Module):
    """The transformer. ``forward(tokens, actions, start_pose)`` -> logits over the codebook at every position.

    tokens: (B, T, h, w) long, codebook indices or ``mask_token``; T <= num_frames.
    actions: (B, T-1, action_dim) float (metres / radians / gripper in [-1, 1]) or None (action-free);
        divided by ``config.action_scale`` inside, so callers pass them as the robot commands them.
    start_pose: (B, 3) float, the end effector's x, y, z (metres, robot base frame) at the clip's first
        frame; required by a model with ``pose_conditioning``, ignored by others.
    returns: (B, T, h, w, codebook_size) float logits ([MASK] is never predicted).
    """

    def __init__(self, cfg: MaskViTModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # plain ints for forward (TorchScript cannot read the dataclass)
        self.codebook_size = cfg.codebook_size
        self.mask_token = cfg.mask_token
        self.grid_h = cfg.grid_h
        self.grid_w = cfg.grid_w
        self.num_frames = cfg.num_frames
        self.action_dim = cfg.action_dim
        self.action_cumulative = cfg.action_cumulative
        self.pose_conditioning = cfg.pose_conditioning
        offset = cfg.pose_offset if cfg.pose_offset is not None else [0.0] * POSE_DIM
        pose_scale = cfg.pose_scale if cfg.pose_scale is not None else [1.0] * POSE_DIM
        self.register_buffer("pose_offset", torch.tensor(offset, dtype=torch.float32), persistent=False)
        self.register_buffer("pose_scale", torch.tensor(pose_scale, dtype=torch.float32), persistent=False)
        scale = cfg.action_scale if cfg.action_scale is not None else [1.0] * cfg.action_dim
        # derived from the config, so not part of the state dict
        self.register_buffer("action_scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

        self.tok_emb = nn.Embedding(cfg.codebook_size + 1, cfg.d_model)  # +1: [MASK]
        self.pos_spatial = nn.Parameter(torch.zeros(cfg.grid_h, cfg.grid_w, cfg.d_model))
        self.pos_temporal = nn.Parameter(torch.zeros(cfg.num_frames, cfg.d_model))
        self.action_proj = (
            nn.Linear(cfg.action_features, cfg.d_model) if cfg.action_conditioning == "input" else None
        )
        self.pose_proj = (
            nn.Linear(POSE_DIM, cfg.d_model)
            if cfg.pose_conditioning and cfg.action_conditioning != "every_block"
            else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_blocks)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.codebook_size)
        self.apply(_init_weights)
        nn.init.normal_(self.pos_spatial, std=0.02)
        nn.init.normal_(self.pos_temporal, std=0.02)
        # residual projections scaled down with depth, as GPT-2 does: keeps the stream's variance flat
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and "action" not in name and "pose" not in name:
                nn.init.normal_(p, std=0.02 / math.sqrt(4 * cfg.n_blocks))
            if "pose_proj" in name:
                nn.init.zeros_(p)

    def forward(
        self, tokens: Tensor, actions: Tensor | None = None, start_pose: Tensor | None = None
    ) -> Tensor:
        B, T, h, w = tokens.shape
        if h != self.grid_h or w != self.grid_w:
            raise MaskViTInputError(
                f"tokens must be (B, T, {self.grid_h}, {self.grid_w}), got a {h}x{w} grid: "
                "was the model trained with this tokenizer?"
            )
        if self.num_frames < T:
            raise MaskViTInputError(f"the model takes at most {self.num_frames} frames, got {T}")
        if actions is not None:
            if actions.dim() != 3 or actions.shape[0] != B or actions.shape[1] != T - 1:
                raise MaskViTInputError(
                    f"actions must be (B, T-1, {self.action_dim}) = ({B}, {T - 1}, {self.action_dim}), "
                    f"got {list(actions.shape)}"
                )
            if actions.shape[2] != self.action_dim:
                raise MaskViTInputError(
                    f"actions must have {self.action_dim} components, got {actions.shape[2]}"
                )
            scaled = actions.float() / self.action_scale
            if self.action_cumulative:
                scaled = torch.cat([scaled, torch.cumsum(scaled, dim=1)], dim=2)
            actions = scaled.to(self.pos_temporal.dtype)

        pose: Tensor | None = None
        if self.pose_conditioning:
            if start_pose is None:
                raise MaskViTInputError(
                    "this model conditions on the arm's position at the clip's first frame: pass start_pose (B, 3)"
                )
            if start_pose.dim() != 2 or start_pose.shape[0] != B or start_pose.shape[1] != 3:
                raise MaskViTInputError(f"start_pose must be (B, 3) = ({B}, 3), got {list(start_pose.shape)}")
            pose = ((start_pose.float() - self.pose_offset) / self.pose_scale).to(self.pos_temporal.dtype)

        x = self.tok_emb(tokens)  # (B, T, h, w, d)
        x = x + self.pos_spatial + self.pos_temporal[:T, None, None, :]
        if self.action_proj is not None and actions is not None:
            x = x + _frame_action_term(self.action_proj(actions))
        if self.pose_proj is not None and pose is not None:
            x = x + self.pose_proj(pose)[:, None, None, None, :]  # the same for every token of the clip
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, actions, pose)
        return self.head(self.ln_f(x))  # (B, T, h, w, codebook_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def make_blocks_identity(self, first: int) -> None:
        """Zero every residual output of ``blocks[first:]`` (attention and MLP projections, action and
        pose terms), so those blocks pass their input through unchanged.

        Deepening a trained model: load its weights into a deeper network with this config, call this
        for the new blocks, and the deeper model predicts exactly as the trained one did; training
        then grows the new blocks from zero (their output projections get gradients at once).
        """
        for block in self.blocks[first:]:
            for layer in (block.first, block.second):
                for proj in (layer.attn.proj, layer.mlp.proj):
                    nn.init.zeros_(proj.weight)
                    nn.init.zeros_(proj.bias)
            for term in (block.action_proj, block.pose_proj):
                if term is not None:
                    nn.init.zeros_(term.weight)
                    nn.init.zeros_(term.bias)


def maskvit_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> MaskViT:
    """Rebuild the model (in eval mode) from a checkpoint dict read with ``training.load_checkpoint``."""
    model_cfg = ckpt.get("extra", {}).get("model_config")
    if model_cfg is None or "maskvit" not in ckpt.get("models", {}):
        raise MaskViTInputError(f"{where} is not a MaskViT checkpoint (train one with train-maskvit)")
    model = MaskViT(MaskViTModelConfig.from_dict(model_cfg))
    model.load_state_dict(ckpt["models"]["maskvit"])
    return model.eval()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
