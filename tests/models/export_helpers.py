"""Tiny randomly initialised tokenizer and MaskViT checkpoints, written as the training commands write them."""

from __future__ import annotations

from pathlib import Path

import torch
from maskvit_mpc.configs.schema import DataConfig, MaskViTConfig
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig
from maskvit_mpc.models.token_cache import file_digest
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel
from maskvit_mpc.models.training import save_checkpoint

IMAGE_SIZE = 16
GRID = 4
CODES = 32
CONTEXT = 2
FUTURE = 3


def tiny_tokenizer(seed: int = 0, quantizer: str = "vq") -> tuple[VQModel, TokenizerModelConfig]:
    torch.manual_seed(seed)
    cfg = TokenizerModelConfig(
        image_size=IMAGE_SIZE,
        grid_size=GRID,
        channel_mult=[1, 2, 2],
        base_channels=8,
        quantizer=quantizer,
        codebook_size=CODES,
        fsq_levels=[8, 4],  # 32 codes either way
        learned_background=quantizer == "fsq",
    )
    return VQModel(cfg).eval(), cfg


def tiny_maskvit(seed: int = 0, **overrides) -> tuple[MaskViT, MaskViTModelConfig]:
    torch.manual_seed(seed)
    base = dict(
        codebook_size=CODES,
        grid_h=GRID,
        grid_w=GRID,
        num_frames=CONTEXT + FUTURE,
        d_model=32,
        n_blocks=1,
        n_heads=4,
        dropout=0.0,
    )
    cfg = MaskViTModelConfig(**{**base, **overrides})
    model = MaskViT(cfg).eval()
    with torch.no_grad():  # larger than the init's 0.02: logits that differ clearly between codes and actions
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model, cfg


def write_checkpoints(
    folder: Path,
    decode_steps: int = 3,
    temperature: float = 0.0,
    confidence_noise: float = 0.0,
    quantizer: str = "vq",
    **maskvit_cfg,
) -> tuple[Path, Path]:
    """(tokenizer.pt, maskvit.pt) in ``folder``; the MaskViT checkpoint names the tokenizer and its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    tok, tok_cfg = tiny_tokenizer(quantizer=quantizer)
    tok_path = save_checkpoint(
        folder / "tokenizer.pt",
        models={"tokenizer": tok},
        step=7,
        config={},
        extra={"model_config": tok_cfg.to_dict()},
    )
    mv, mv_cfg = tiny_maskvit(**maskvit_cfg)
    training = MaskViTConfig(
        d_model=32,
        n_heads=4,
        n_blocks=1,
        context_frames=CONTEXT,
        future_frames=FUTURE,
        decode_steps=decode_steps,
        temperature=temperature,
        confidence_noise=confidence_noise,
    )
    mv_path = save_checkpoint(
        folder / "maskvit.pt",
        models={"maskvit": mv},
        step=11,
        config={
            "maskvit": training.model_dump(),
            "data": DataConfig(clip_length=CONTEXT + FUTURE, image_size=IMAGE_SIZE).model_dump(),
        },
        extra={
            "model_config": mv_cfg.to_dict(),
            "tokenizer_checkpoint": str(tok_path),
            "tokenizer_sha256": file_digest(tok_path),
        },
    )
    return tok_path, mv_path
