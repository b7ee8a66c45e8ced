"""train-maskvit: train MaskViT with masked visual modeling on recorded episodes, over a frozen tokenizer.

Clips of ``data.clip_length = maskvit.context_frames + maskvit.future_frames`` frames are tokenized on
the fly by the tokenizer checkpoint (frozen, eval mode), masked as :mod:`.masking` describes, and the
transformer learns to predict the masked tokens given the visible ones and the actions.

One script for one CPU, one GPU or several under torchrun. Writes into --out: ``step_N.pt`` checkpoints
(the last three kept; ``extra`` holds the model config, the tokenizer path and, for background
weighting, the background tokens) and ``metrics.csv`` (train rows every ``log_every`` steps, ``val_*``
columns every ``val_every`` steps: the same validation clips and masks every time).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from tqdm import tqdm

from ..configs import Config
from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from .data import make_datasets
from .masking import MVMObjective, background_tokens
from .maskvit import MaskViT, MaskViTModelConfig
from .tokenizer import VQModel, tokenizer_from_checkpoint
from .training import (
    CheckpointError,
    CSVLogger,
    DistContext,
    all_reduce_mean,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    seed_everything,
    set_lr,
    setup_distributed,
    wrap_ddp,
)

log = logging.getLogger("train-maskvit")

EXAMPLES = """
  train-maskvit --data runs/sim_push --tokenizer runs/tokenizer/step_0006000.pt --out runs/maskvit
  train-maskvit --data runs/sim_push --tokenizer runs/tok/step_0006000.pt --out runs/mv --resume --steps 40000
  train-maskvit --data runs/sim_push --tokenizer tok.pt --out runs/mv_w4 --set maskvit.token_weighting=changed
  torchrun --nproc_per_node 4 -m maskvit_mpc.models.train_maskvit --data runs/sim_push --tokenizer tok.pt --out runs/mv
"""

_KEEP_CHECKPOINTS = 3
_BACKGROUND_BATCHES = 16  # batches tokenized to find each position's most common token


def _parser() -> argparse.ArgumentParser:
    p = make_parser("train-maskvit", "Train MaskViT on recorded episodes over a trained tokenizer.", EXAMPLES)
    p.add_argument(
        "--data", nargs="+", required=True, metavar="FOLDER", help="episode folders (overrides data.folders)"
    )
    p.add_argument(
        "--tokenizer", metavar="CKPT", help="train-tokenizer checkpoint (maskvit.tokenizer_checkpoint)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder for checkpoints and metrics.csv")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--steps", type=int, help="total optimizer steps (maskvit.steps)")
    return p


def _loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, ctx: DistContext, workers: int
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=ctx.device.type == "cuda",
    )


def _endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


@torch.no_grad()
def _tokenize(tokenizer: VQModel, frames: Tensor) -> Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, h, w) long codes."""
    B, T = frames.shape[:2]
    x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0  # (B*T, 3, H, W)
    codes = tokenizer.encode(x)  # (B*T, h, w)
    return codes.reshape(B, T, *codes.shape[1:])


def _mean(values: list[float]) -> float:
    """Mean ignoring NaN (a batch with no informative token), NaN when all are."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # decay matrices only: embeddings, position tables, norms and biases keep their scale
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n and "pos_" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _prune(out: Path) -> None:
    for old in sorted(out.glob("step_*.pt"))[:-_KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def train(cfg: Config, data: list[str], out: Path, resume: bool = False) -> dict[str, float]:
    """Run the training; returns the last logged metrics (averaged over ranks)."""
    ctx = setup_distributed(cfg.maskvit.device)
    try:
        return _train(cfg, data, out, resume, ctx)
    finally:
        ctx.close()


def _train(cfg: Config, data: list[str], out: Path, resume: bool, ctx: DistContext) -> dict[str, float]:
    mcfg = cfg.maskvit
    clip_length = mcfg.context_frames + mcfg.future_frames
    if cfg.data.clip_length != clip_length:
        raise UserError(
            f"data.clip_length ({cfg.data.clip_length}) must equal maskvit.context_frames + future_frames "
            f"({clip_length}): set one to match the other"
        )
    if mcfg.tokenizer_checkpoint is None:
        raise UserError(
            "no tokenizer: pass --tokenizer runs/tokenizer/step_N.pt (train one with train-tokenizer)"
        )
    existing = latest_checkpoint(out)
    if resume and existing is None:
        raise CheckpointError(f"--resume: no step_N.pt checkpoint in {out}; drop --resume to start a new run")
    if not resume and existing is not None:
        raise UserError(
            f"{out} already holds checkpoints ({existing.name}): pass --resume, or choose another --out"
        )

    tok_path = Path(mcfg.tokenizer_checkpoint)
    tokenizer = tokenizer_from_checkpoint(load_checkpoint(tok_path, map_location="cpu"), str(tok_path)).to(
        ctx.device
    )
    tokenizer.requires_grad_(False)
    if cfg.data.image_size != tokenizer.image_size:
        raise UserError(
            f"data.image_size ({cfg.data.image_size}) differs from the tokenizer's ({tokenizer.image_size}): "
            f"set data.image_size={tokenizer.image_size}"
        )
    model_cfg = MaskViTModelConfig.from_config(mcfg, tokenizer.num_codes, tokenizer.grid_size)

    seed_everything(mcfg.seed)  # identical initial weights on every rank
    clips = make_datasets(cfg.data, data, num_samples=None, seed=mcfg.seed)
    raw_model = MaskViT(model_cfg).to(ctx.device)
    opt = _optimizer(raw_model, mcfg.lr, mcfg.weight_decay)

    step, background = 0, None
    if resume and existing is not None:
        ckpt = load_checkpoint(existing, map_location=ctx.device)
        saved = ckpt["extra"].get("model_config", {})
        if saved != model_cfg.to_dict():
            differ = sorted(k for k, v in model_cfg.to_dict().items() if saved.get(k) != v)
            raise UserError(
                f"cannot resume: the network differs from the checkpoint's in {differ}; use the same --config/--set"
            )
        raw_model.load_state_dict(ckpt["models"]["maskvit"])
        opt.load_state_dict(ckpt["optimizers"]["maskvit"])
        step = int(ckpt["step"])
        if ckpt["extra"].get("background") is not None:
            background = torch.tensor(ckpt["extra"]["background"], device=ctx.device)
        if ctx.is_main:
            log.info("resumed from %s at step %d", existing, step)
    if step >= mcfg.steps:
        log.info("already at step %d of %d: nothing to do (raise --steps to train further)", step, mcfg.steps)
        return {}

    if len(clips.train) < mcfg.batch_size * ctx.world_size:
        raise UserError(
            f"{len(clips.train)} training clips cannot fill a batch of {mcfg.batch_size} on each of "
            f"{ctx.world_size} process(es): lower maskvit.batch_size or record more episodes"
        )
    # the sampler mixes folders by weight; each rank (and each resume) draws its own stream
    train_sampler = WeightedRandomSampler(
        clips.train_sampler.weights,
        clips.train_sampler.num_samples,
        generator=torch.Generator().manual_seed(mcfg.seed + 1000 * ctx.rank + step),
    )
    batches = _endless(_loader(clips.train, train_sampler, mcfg.batch_size, ctx, mcfg.num_workers))
    if mcfg.token_weighting == "background" and background is None:
        # computed on rank 0's stream and shared, so every rank weighs the same tokens
        found = torch.cat(
            [_tokenize(tokenizer, next(batches)["frames"].to(ctx.device)) for _ in range(_BACKGROUND_BATCHES)]
        )
        background = background_tokens(found)
        if ctx.distributed:
            torch.distributed.broadcast(background, src=0)
    objective = MVMObjective.from_config(mcfg, model_cfg.mask_token, background)

    model = wrap_ddp(raw_model, ctx)
    csv_log = CSVLogger(out / "metrics.csv") if ctx.is_main else None
    if ctx.is_main:
        log.info(
            "%d train / %d val clips; MaskViT %.2fM parameters, %d+%d frames of %dx%d tokens, %d codes; %d process(es) on %s",
            len(clips.train), len(clips.val), raw_model.num_parameters() / 1e6, mcfg.context_frames,
            mcfg.future_frames, model_cfg.grid_h, model_cfg.grid_w, model_cfg.codebook_size, ctx.world_size, ctx.device,
        )  # fmt: skip
    gen = torch.Generator(device=ctx.device).manual_seed(mcfg.seed + 7919 * (ctx.rank + 1) + step)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    t_window = time.perf_counter()
    bar = tqdm(total=mcfg.steps, initial=step, disable=not ctx.is_main, desc="maskvit", dynamic_ncols=True)
    while step < mcfg.steps:
        model.train()
        batch = next(batches)
        tokens = _tokenize(tokenizer, batch["frames"].to(ctx.device, non_blocking=True))
        actions = (
            batch["actions"].to(ctx.device, non_blocking=True) if mcfg.action_conditioning != "none" else None
        )
        lr = lr_at(step, mcfg.lr, mcfg.warmup_steps, mcfg.steps, mcfg.min_lr_ratio)
        set_lr(opt, lr)
        with _autocast(mcfg.precision, ctx.device):
            result = objective(model, tokens, actions, gen)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        if mcfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(raw_model.parameters(), mcfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        for key, value in (
            ("loss", result.loss.item()),
            ("accuracy", result.accuracy),
            ("informative_accuracy", result.informative_accuracy),
            ("mask_ratio", result.mask_ratio),
        ):
            window.setdefault(key, []).append(value)

        row: dict[str, float] = {}
        if step % mcfg.log_every == 0 or step == mcfg.steps:
            row = {k: _mean(v) for k, v in window.items()}
            row["clips_per_s"] = (
                len(window["loss"]) * mcfg.batch_size * ctx.world_size / (time.perf_counter() - t_window)
            )
            window, t_window = {}, time.perf_counter()
        if step % mcfg.val_every == 0 or step == mcfg.steps:
            row.update(_validate(raw_model, tokenizer, clips.val, objective, cfg, ctx))
        if row:
            row = all_reduce_mean(row, ctx)
            if csv_log is not None:
                csv_log.log({"step": step, "lr": lr, **row})
            bar.set_postfix(
                loss=f"{row.get('loss', math.nan):.3f}", acc=f"{row.get('accuracy', math.nan):.3f}"
            )
            last = {**last, **row}
        if step % mcfg.checkpoint_every == 0 or step == mcfg.steps:
            if ctx.is_main:
                save_checkpoint(
                    out / checkpoint_name(step),
                    models={"maskvit": raw_model},
                    optimizers={"maskvit": opt},
                    step=step,
                    config={"maskvit": mcfg.model_dump(), "data": cfg.data.model_dump()},
                    extra={
                        "model_config": model_cfg.to_dict(),
                        "tokenizer_checkpoint": str(tok_path),
                        "background": background.tolist() if background is not None else None,
                        "world_size": ctx.world_size,
                    },
                )
                _prune(out)
            ctx.barrier()
    bar.close()
    if ctx.is_main:
        log.info("done: step %d, loss %.3f, masked accuracy %.3f; checkpoints in %s", step,
                 last.get("loss", math.nan), last.get("accuracy", math.nan), out)  # fmt: skip
    return last


@torch.no_grad()
def _validate(
    model: MaskViT, tokenizer: VQModel, val: Dataset, objective: MVMObjective, cfg: Config, ctx: DistContext
) -> dict[str, float]:
    """Mean MVM metrics over the first ``val_batches`` validation batches, with fixed masks."""
    mcfg = cfg.maskvit
    if len(val) == 0:
        return {}
    model.eval()
    loader = DataLoader(val, batch_size=min(mcfg.batch_size, len(val)), shuffle=False)
    gen = torch.Generator(device=ctx.device).manual_seed(12345)
    sums: dict[str, list[float]] = {}
    for i, batch in enumerate(loader):
        if i >= mcfg.val_batches:
            break
        tokens = _tokenize(tokenizer, batch["frames"].to(ctx.device))
        actions = batch["actions"].to(ctx.device) if mcfg.action_conditioning != "none" else None
        with _autocast(mcfg.precision, ctx.device):
            r = objective(model, tokens, actions, gen)
        for key, value in (
            ("val_loss", r.loss.item()),
            ("val_accuracy", r.accuracy),
            ("val_informative_accuracy", r.informative_accuracy),
        ):
            sums.setdefault(key, []).append(value)
    return {k: _mean(v) for k, v in sums.items()}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one process reports
    extra = [f"maskvit.steps={args.steps}"] if args.steps is not None else []
    if args.tokenizer is not None:
        extra.append(f"maskvit.tokenizer_checkpoint={args.tokenizer}")
    cfg = config_from_args(args, extra)
    train(cfg, list(args.data), Path(args.out), resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
