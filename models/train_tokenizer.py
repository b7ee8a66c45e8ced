"""train-tokenizer: train the per-frame VQ-GAN tokenizer on recorded episodes.

One script for one CPU, one GPU or several under torchrun (DistributedDataParallel; gloo on CPU, NCCL on
GPUs). Writes into --out: ``step_N.pt`` checkpoints (the last three kept), ``metrics.csv``, and
``samples/step_N.png`` grids (top row: frames, bottom row: reconstructions).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..configs import Config
from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from .frame_data import EpisodeFrames, frame_datasets
from .losses import PatchDiscriminator, TokenizerLoss
from .metrics import CodeCounter, psnr
from .tokenizer import TokenizerModelConfig, VQModel
from .training import (
    DistContext,
    LoopSchedule,
    autocast,
    checkpoint_name,
    load_checkpoint,
    lr_at,
    prune_checkpoints,
    resume_point,
    run_loop,
    save_checkpoint,
    seed_everything,
    set_lr,
    setup_distributed,
    wrap_ddp,
)

log = logging.getLogger("train-tokenizer")

EXAMPLES = """
  train-tokenizer --data runs/sim_push --out runs/tokenizer
  train-tokenizer --data runs/sim_push runs/real --config tokenizer_paper --out runs/tok_paper
  train-tokenizer --data runs/sim_push --out runs/tokenizer --resume --steps 20000
  train-tokenizer --data runs/sim_push --set tokenizer.quantizer=fsq --set tokenizer.batch_size=32
  torchrun --nproc_per_node 4 -m maskvit_mpc.models.train_tokenizer --data runs/sim_push --out runs/tok
"""

_KEEP_CHECKPOINTS = 3
_SAMPLE_FRAMES = 8


def _parser() -> argparse.ArgumentParser:
    p = make_parser("train-tokenizer", "Train the per-frame VQ-GAN tokenizer on recorded episodes.", EXAMPLES)
    p.add_argument(
        "--data", nargs="+", required=True, metavar="DIR", help="episode folders (collect-finetune-data)"
    )
    p.add_argument("--out", default="runs/tokenizer", metavar="DIR", help="checkpoints, metrics and samples")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument(
        "--steps", type=int, default=None, metavar="N", help="total optimizer steps (tokenizer.steps)"
    )
    p.add_argument(
        "--split",
        choices=["train", "all"],
        default="train",
        help="train: hold out data.val_fraction of the episodes for eval-tokenizer --split val; all: use every episode",
    )
    return p


def _batches(
    dataset: EpisodeFrames, batch_size: int, ctx: DistContext, num_workers: int, seed: int
) -> Iterator[dict]:
    """An endless stream of shuffled batches; under DDP each rank sees its own share of every epoch."""
    per_rank = len(dataset) // ctx.world_size
    if per_rank < batch_size:
        raise UserError(
            f"{len(dataset)} frames cannot fill a batch of {batch_size} on each of {ctx.world_size} process(es): "
            "lower tokenizer.batch_size or record more episodes"
        )
    if ctx.distributed:
        sampler: DistributedSampler | RandomSampler = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=ctx.device.type == "cuda",
    )
    epoch = 0
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sample_grid(frames: torch.Tensor, reconstructions: torch.Tensor) -> Image.Image:
    """Two rows of (N, 3, H, W) images in [0, 1]: originals on top, reconstructions below."""
    rows = [torch.cat(list(x.clamp(0, 1)), dim=2) for x in (frames, reconstructions)]  # (3, H, N*W)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0)  # (2H, N*W, 3)
    return Image.fromarray((grid.cpu().numpy() * 255).round().astype(np.uint8))


def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _check_resume_config(saved: dict, current: TokenizerModelConfig) -> None:
    now = current.to_dict()
    differ = sorted(k for k in now if saved.get(k) != now[k])
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in differ)
        raise UserError(
            f"cannot resume: the network differs from the checkpoint's ({detail}); use the same --config/--set"
        )


def train(
    cfg: Config, data: list[str], out: Path, resume: bool = False, split: str = "train"
) -> dict[str, float]:
    """Run the training; returns the last logged metrics (averaged over ranks)."""
    tcfg = cfg.tokenizer
    with setup_distributed(tcfg.device) as ctx:
        return _train(cfg, data, out, resume, split, ctx)


def _train(
    cfg: Config, data: list[str], out: Path, resume: bool, split: str, ctx: DistContext
) -> dict[str, float]:
    tcfg = cfg.tokenizer
    if tcfg.precision == "bf16" and ctx.device.type == "cpu" and not _cpu_has_fast_bf16():
        log.warning(
            "bf16 autocast on a CPU without native bf16 (AMX / AVX512-BF16) is slow: try precision=fp32"
        )
    existing = resume_point(out, resume)

    seed_everything(tcfg.seed)  # identical initial weights on every rank
    dataset = frame_datasets(data, cfg.data, tcfg.image_size, split=split)  # type: ignore[arg-type]
    model_cfg = TokenizerModelConfig.from_config(tcfg)
    raw_model = VQModel(model_cfg).to(ctx.device)
    raw_disc = (
        PatchDiscriminator(tcfg.disc_channels, tcfg.disc_layers).to(ctx.device)
        if tcfg.disc_weight > 0
        else None
    )
    loss_fn = TokenizerLoss(tcfg).to(ctx.device)
    opt_g = torch.optim.AdamW(
        raw_model.parameters(), lr=tcfg.lr, betas=(0.9, 0.99), weight_decay=tcfg.weight_decay
    )
    opt_d = (
        torch.optim.AdamW(raw_disc.parameters(), lr=tcfg.lr, betas=(0.5, 0.9))
        if raw_disc is not None
        else None
    )

    step = 0
    if existing is not None:
        ckpt = load_checkpoint(existing, map_location=ctx.device)
        _check_resume_config(ckpt["extra"].get("model_config", {}), model_cfg)
        raw_model.load_state_dict(ckpt["models"]["tokenizer"])
        opt_g.load_state_dict(ckpt["optimizers"]["tokenizer"])
        if raw_disc is not None and opt_d is not None and "discriminator" in ckpt["models"]:
            raw_disc.load_state_dict(ckpt["models"]["discriminator"])
            opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])
        step = int(ckpt["step"])
        if ctx.is_main:
            log.info("resumed from %s at step %d", existing, step)
    if step >= tcfg.steps:
        log.info("already at step %d of %d: nothing to do (raise --steps to train further)", step, tcfg.steps)
        return {}

    model = wrap_ddp(raw_model, ctx)
    disc = wrap_ddp(raw_disc, ctx) if raw_disc is not None else None
    # data order differs per rank and per resume, so a resumed run does not replay the same batches
    batches = _batches(dataset, tcfg.batch_size, ctx, tcfg.num_workers, seed=tcfg.seed + step)
    sample_idx = np.linspace(0, len(dataset) - 1, min(_SAMPLE_FRAMES, len(dataset))).round().astype(int)
    sample_frames = torch.stack([dataset[int(i)]["frame"] for i in sample_idx]).to(ctx.device)
    if ctx.is_main:
        n_params = sum(p.numel() for p in raw_model.parameters())
        log.info(
            "%d frames from %d episodes; tokenizer %.2fM parameters, %dx%d tokens, %d codes; %d process(es) on %s",
            len(dataset), len(dataset.episodes), n_params / 1e6, tcfg.grid_size, tcfg.grid_size,
            model_cfg.num_codes, ctx.world_size, ctx.device,
        )  # fmt: skip
    counter = CodeCounter(model_cfg.num_codes)

    def train_step(step: int) -> dict[str, float]:
        batch = next(batches)
        frames = batch["frame"].to(ctx.device, non_blocking=True)
        mask = batch["mask"].to(ctx.device, non_blocking=True)
        lr = lr_at(step, tcfg.lr, tcfg.warmup_steps, tcfg.steps, tcfg.min_lr_ratio)
        set_lr(opt_g, lr)
        model.train()
        with autocast(tcfg.precision, ctx.device):
            out_g = model(frames)
            rec = out_g.reconstruction.float()
            g = loss_fn.generator_loss(
                frames,
                rec,
                out_g.quantizer_loss.float(),
                step,
                raw_model.last_layer,
                raw_disc,
                segmentation=mask.long(),
            )
        opt_g.zero_grad(set_to_none=True)
        g.loss.backward()
        if tcfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(raw_model.parameters(), tcfg.grad_clip)
        opt_g.step()
        logs = dict(g.logs)
        if disc is not None and opt_d is not None and loss_fn.gan_active(step):
            set_lr(opt_d, lr)
            with autocast(tcfg.precision, ctx.device):
                d = loss_fn.discriminator_loss(frames, rec, step, disc)
            opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            opt_d.step()
            logs.update(d.logs)
        counter.update(out_g.indices)
        logs["psnr"] = float(psnr(rec.detach(), frames).mean())
        logs["lr"] = lr
        return logs

    def window_stats() -> dict[str, float]:
        stats = counter.stats()
        counter.reset()
        return {"codebook_usage": stats.usage, "perplexity": stats.perplexity}

    def after_step(step: int) -> None:
        if step % tcfg.sample_every == 0 or step == tcfg.steps:
            _write_samples(raw_model, sample_frames, out / "samples" / f"step_{step:07d}.png")

    def save(step: int) -> None:
        models = {"tokenizer": raw_model}
        optimizers: dict[str, torch.optim.Optimizer] = {"tokenizer": opt_g}
        if raw_disc is not None and opt_d is not None:
            models["discriminator"] = raw_disc
            optimizers["discriminator"] = opt_d
        save_checkpoint(
            out / checkpoint_name(step),
            models=models,
            optimizers=optimizers,
            step=step,
            config={"tokenizer": tcfg.model_dump(), "data": cfg.data.model_dump()},
            extra={"model_config": model_cfg.to_dict(), "world_size": ctx.world_size},
        )
        prune_checkpoints(out, _KEEP_CHECKPOINTS)

    last = run_loop(
        start_step=step,
        schedule=LoopSchedule(tcfg.steps, tcfg.log_every, tcfg.checkpoint_every),
        train_step=train_step,
        save=save,
        ctx=ctx,
        csv_path=out / "metrics.csv",
        items_per_step=tcfg.batch_size,
        rate_name="frames_per_s",
        desc="tokenizer",
        window_stats=window_stats,
        after_step=after_step,
        postfix=lambda row: {
            "loss": f"{row['rec_loss']:.4f}",
            "psnr": f"{row['psnr']:.1f}",
            "codes": f"{row['codebook_usage']:.2f}",
        },
    )
    if ctx.is_main:
        log.info("done: step %d, psnr %.2f dB, codebook usage %.2f; checkpoints in %s", tcfg.steps,
                 last.get("psnr", float("nan")), last.get("codebook_usage", float("nan")), out)  # fmt: skip
    return last


@torch.no_grad()
def _write_samples(model: VQModel, frames: torch.Tensor, path: Path) -> None:
    model.eval()
    try:
        reconstructions = model.decode(model.encode(frames))
    finally:
        model.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    _sample_grid(frames, reconstructions).save(path)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.verbose)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one process reports
    extra = [f"tokenizer.steps={args.steps}"] if args.steps is not None else []
    cfg = config_from_args(args, extra)
    train(cfg, list(args.data), Path(args.out), resume=args.resume, split=args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
