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
import logging
import math
import os
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, WeightedRandomSampler

from ..configs import Config
from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import MaskViTConfig
from .data import make_datasets
from .export import UnpackedPredictor
from .masking import MVMLoss, MVMObjective, background_tokens
from .maskvit import MaskViT, MaskViTModelConfig
from .prediction_eval import clip_batch, evaluate_predictions
from .token_cache import TokenCache, file_digest, token_datasets, weights_digest
from .tokenizer import VQModel, tokenizer_from_checkpoint
from .training import (
    DistContext,
    LoopSchedule,
    autocast,
    checkpoint_name,
    load_checkpoint,
    lr_at,
    nanmean,
    prune_checkpoints,
    resume_point,
    run_loop,
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
  train-maskvit --config maskvit_cpu --data runs/sim_push --tokenizer tok.pt --out runs/mv2 --token-cache runs/codes.pt
  torchrun --nproc_per_node 4 -m maskvit_mpc.models.train_maskvit --data runs/sim_push --tokenizer tok.pt --out runs/mv
  train-maskvit --config maskvit_cpu --data data/my-arm --init-from maskvit --out runs/ft --steps 1500   # fine-tune the shipped model
  train-maskvit --config maskvit_cpu --data data/my-arm --init-from predictor.ts --out runs/ft2 --set maskvit.lr=0.0003
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
    p.add_argument(
        "--init-from",
        metavar="FILE",
        help="fine-tune: start a new run from these weights (a train-maskvit checkpoint, an exported "
        "predictor, or 'maskvit' for the shipped one) with a new optimizer and the config's schedule; an "
        "export's tokenizer is unpacked to OUT/init/ and used unless --tokenizer is given",
    )
    p.add_argument(
        "--token-cache",
        type=Path,
        metavar="FILE",
        help="where the episodes' codes are cached (default OUT/token_cache.pt); runs over the same "
        "tokenizer can share one file: it is keyed by a hash of the tokenizer's weights",
    )
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


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # decay matrices only: embeddings, position tables, norms and biases keep their scale
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n and "pos_" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train(
    cfg: Config,
    data: list[str],
    out: Path,
    resume: bool = False,
    token_cache: Path | None = None,
    init_from: Path | None = None,
) -> dict[str, float]:
    """Run the training; returns the last logged metrics (averaged over ranks). ``init_from``: a
    train-maskvit checkpoint whose weights a fresh run starts from (fine-tuning: new optimizer, the
    config's schedule from step 0); ignored when the run resumes."""
    with setup_distributed(cfg.maskvit.device) as ctx:
        return _train(cfg, data, out, resume, ctx, token_cache or out / "token_cache.pt", init_from)


def _train(
    cfg: Config,
    data: list[str],
    out: Path,
    resume: bool,
    ctx: DistContext,
    cache_path: Path,
    init_from: Path | None,
) -> dict[str, float]:
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
    existing = resume_point(out, resume)

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
    # every frame is encoded once (rank 0 writes the cache, the others read it)
    episodes = [e for part in (*clips.train.datasets, *clips.val.datasets) for e in part.episodes]
    tokenizer_id = file_digest(tok_path)
    codes_id = weights_digest(tokenizer)  # the same weights saved again still reuse the cache
    cache = TokenCache.load_or_build(cache_path, tokenizer, codes_id, episodes) if ctx.is_main else None
    ctx.barrier()
    if cache is None:
        cache = TokenCache.load_or_build(cache_path, tokenizer, codes_id, episodes, progress=False)
    train_tokens = token_datasets(clips.train, cache)
    val_tokens = token_datasets(clips.val, cache)

    raw_model = MaskViT(model_cfg).to(ctx.device)
    opt = _optimizer(raw_model, mcfg.lr, mcfg.weight_decay)
    step, background = 0, None
    if existing is not None:
        ckpt = load_checkpoint(existing, map_location=ctx.device)
        differ = _network_differences(ckpt["extra"].get("model_config", {}), model_cfg)
        if differ:
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
    elif init_from is not None:
        ckpt = load_checkpoint(init_from, map_location=ctx.device)
        saved = ckpt.get("extra", {}).get("model_config")
        if saved is None or "maskvit" not in ckpt.get("models", {}):
            raise UserError(
                f"--init-from {init_from} is not a train-maskvit checkpoint or exported predictor"
            )
        differ = _network_differences(saved, model_cfg)
        # Two changes add zero-initialised weights, so the model starts out predicting as it was:
        # switching pose conditioning on, and more blocks (appended as identities: deepening).
        adds_pose = model_cfg.pose_conditioning and not saved.get("pose_conditioning", False)
        saved_blocks = int(saved.get("n_blocks", model_cfg.n_blocks))
        adds_blocks = model_cfg.n_blocks > saved_blocks
        allowed = (_POSE_FIELDS if adds_pose else ()) + (("n_blocks",) if adds_blocks else ())
        if [k for k in differ if k not in allowed]:
            raise UserError(
                f"cannot start from {init_from}: its network differs from this config's in {differ}; "
                "train with the config it was trained with (e.g. --config maskvit_cpu); only "
                "maskvit.pose_conditioning and a larger maskvit.n_blocks may be added"
            )
        trained_on = ckpt["extra"].get("tokenizer_sha256")
        if trained_on and trained_on != tokenizer_id:
            raise UserError(
                f"{init_from} was trained over another tokenizer (sha256 {trained_on[:12]}...) than "
                f"{tok_path} ({tokenizer_id[:12]}...): its codes would mean other things; pass the "
                "tokenizer it was trained on"
            )
        missing, unexpected = raw_model.load_state_dict(ckpt["models"]["maskvit"], strict=False)
        new_block = tuple(f"blocks.{i}." for i in range(saved_blocks, model_cfg.n_blocks))
        if unexpected or any("pose_proj" not in k and not k.startswith(new_block) for k in missing):
            raise UserError(
                f"{init_from} does not fit the network: missing {missing}, unexpected {unexpected}"
            )
        if adds_blocks:
            raw_model.make_blocks_identity(saved_blocks)
        if ctx.is_main and missing:
            added = [what for what, on in (("pose conditioning", adds_pose), ("blocks", adds_blocks)) if on]
            log.info("added %s: %d new tensors, set so that the model starts as loaded", " and ".join(added),
                     len(missing))  # fmt: skip
        if ckpt["extra"].get("background") is not None:
            background = torch.tensor(ckpt["extra"]["background"], device=ctx.device)
        if ctx.is_main:
            log.info("fine-tuning from %s (trained %d steps): new optimizer, step 0 of %d", init_from,
                     int(ckpt.get("step", 0)), mcfg.steps)  # fmt: skip
    if step >= mcfg.steps:
        log.info("already at step %d of %d: nothing to do (raise --steps to train further)", step, mcfg.steps)
        return {}

    if len(train_tokens) < mcfg.batch_size * ctx.world_size:
        raise UserError(
            f"{len(train_tokens)} training clips cannot fill a batch of {mcfg.batch_size} on each of "
            f"{ctx.world_size} process(es): lower maskvit.batch_size or record more episodes"
        )
    # the sampler mixes folders by weight; each rank (and each resume) draws its own stream
    train_sampler = WeightedRandomSampler(
        clips.train_sampler.weights,
        clips.train_sampler.num_samples,
        generator=torch.Generator().manual_seed(mcfg.seed + 1000 * ctx.rank + step),
    )
    batches = _endless(_loader(train_tokens, train_sampler, mcfg.batch_size, ctx, mcfg.num_workers))
    if mcfg.token_weighting == "background" and background is None:
        # every cached training frame votes; the same on every rank since the cache is shared
        found = torch.cat(
            [cache.episode_codes(e).long() for part in clips.train.datasets for e in part.episodes]
        )
        background = background_tokens(found[None]).to(ctx.device)
    objective = MVMObjective.from_config(mcfg, model_cfg.mask_token, background)
    model = wrap_ddp(raw_model, ctx)
    if ctx.is_main:
        log.info(
            "%d train / %d val clips; MaskViT %.2fM parameters, %d+%d frames of %dx%d tokens, %d codes; %d process(es) on %s",
            len(train_tokens), len(val_tokens), raw_model.num_parameters() / 1e6, mcfg.context_frames,
            mcfg.future_frames, model_cfg.grid_h, model_cfg.grid_w, model_cfg.codebook_size, ctx.world_size, ctx.device,
        )  # fmt: skip
    gen = torch.Generator(device=ctx.device).manual_seed(mcfg.seed + 7919 * (ctx.rank + 1) + step)

    def train_step(step: int) -> dict[str, float]:
        model.train()
        batch = next(batches)
        lr = lr_at(step, mcfg.lr, mcfg.warmup_steps, mcfg.steps, mcfg.min_lr_ratio)
        set_lr(opt, lr)
        with autocast(mcfg.precision, ctx.device):
            result = _objective_on(objective, model, batch, gen, mcfg, ctx.device)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        if mcfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(raw_model.parameters(), mcfg.grad_clip)
        opt.step()
        return {
            "loss": result.loss.item(),
            "accuracy": result.accuracy,
            "informative_accuracy": result.informative_accuracy,
            "mask_ratio": result.mask_ratio,
            "lr": lr,
        }

    def validate(step: int) -> dict[str, float]:
        return _validate(raw_model, tokenizer, clips.val, val_tokens, objective, cfg, ctx)

    def save(step: int) -> None:
        save_checkpoint(
            out / checkpoint_name(step),
            models={"maskvit": raw_model},
            optimizers={"maskvit": opt},
            step=step,
            config={"maskvit": mcfg.model_dump(), "data": cfg.data.model_dump()},
            extra={
                "model_config": model_cfg.to_dict(),
                "tokenizer_checkpoint": str(tok_path),
                "tokenizer_sha256": tokenizer_id,
                "background": background.tolist() if background is not None else None,
                "world_size": ctx.world_size,
            },
        )
        prune_checkpoints(out, _KEEP_CHECKPOINTS)

    last = run_loop(
        start_step=step,
        schedule=LoopSchedule(mcfg.steps, mcfg.log_every, mcfg.checkpoint_every, mcfg.val_every),
        train_step=train_step,
        save=save,
        ctx=ctx,
        csv_path=out / "metrics.csv",
        items_per_step=mcfg.batch_size,
        rate_name="clips_per_s",
        desc="maskvit",
        validate=validate,
        postfix=lambda row: {
            "loss": f"{row.get('loss', math.nan):.3f}",
            "acc": f"{row.get('accuracy', math.nan):.3f}",
        },
    )
    if ctx.is_main:
        log.info("done: step %d, loss %.3f, masked accuracy %.3f; checkpoints in %s", mcfg.steps,
                 last.get("loss", math.nan), last.get("accuracy", math.nan), out)  # fmt: skip
    return last


def _objective_on(
    objective: MVMObjective,
    model: nn.Module,
    batch: dict[str, Tensor],
    gen: torch.Generator,
    mcfg: MaskViTConfig,
    device: torch.device,
) -> MVMLoss:
    """The objective on one batch of token clips, moved to ``device`` (actions only when conditioned)."""
    actions = batch["actions"].to(device, non_blocking=True) if mcfg.action_conditioning != "none" else None
    return objective(
        model,
        batch["tokens"].to(device, non_blocking=True),
        actions,
        gen,
        batch["start_pose"].to(device),
        batch["objects"].to(device),
    )


@torch.no_grad()
def _validate(
    model: MaskViT,
    tokenizer: VQModel,
    val_clips: ConcatDataset,
    val_tokens: ConcatDataset,
    objective: MVMObjective,
    cfg: Config,
    ctx: DistContext,
) -> dict[str, float]:
    """MVM metrics over the first ``val_batches`` validation batches (fixed masks), then the decoded
    predictions of ``val_decode_clips`` fixed clips against the truth and against copy-last."""
    mcfg = cfg.maskvit
    if len(val_tokens) == 0:
        return {}
    model.eval()
    loader = DataLoader(val_tokens, batch_size=min(mcfg.batch_size, len(val_tokens)), shuffle=False)
    gen = torch.Generator(device=ctx.device).manual_seed(12345)
    sums: dict[str, list[float]] = {}
    for i, batch in enumerate(loader):
        if i >= mcfg.val_batches:
            break
        with autocast(mcfg.precision, ctx.device):
            r = _objective_on(objective, model, batch, gen, mcfg, ctx.device)
        for key, value in (
            ("val_loss", r.loss.item()),
            ("val_accuracy", r.accuracy),
            ("val_informative_accuracy", r.informative_accuracy),
        ):
            sums.setdefault(key, []).append(value)
    row = {k: nanmean(v) for k, v in sums.items()}
    if mcfg.val_decode_clips > 0:
        picks = np.linspace(0, len(val_tokens) - 1, min(mcfg.val_decode_clips, len(val_tokens))).round()
        metrics: dict[str, list[float]] = {}
        for chunk in np.array_split(picks.astype(int), max(1, math.ceil(len(picks) / mcfg.batch_size))):
            batch = clip_batch(val_clips, val_tokens, chunk.tolist())
            with autocast(mcfg.precision, ctx.device):
                m = evaluate_predictions(
                    model,
                    tokenizer,
                    batch.frames.to(ctx.device),
                    batch.tokens.to(ctx.device),
                    batch.actions.to(ctx.device) if mcfg.action_conditioning != "none" else None,
                    mcfg.context_frames,
                    segmentation=batch.segmentation,
                    steps=mcfg.decode_steps,
                    schedule=mcfg.mask_schedule,
                    temperature=0.0,
                    start_pose=batch.start_pose.to(ctx.device),
                )
            for k, v in m.items():
                metrics.setdefault(f"val_{k}", []).append(v)
        row.update({k: nanmean(v) for k, v in metrics.items()})
    return row


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one process reports
    extra = [f"maskvit.steps={args.steps}"] if args.steps is not None else []
    out = Path(args.out)
    init_from = _resolve_init(args.init_from, out) if args.init_from else None
    tokenizer = args.tokenizer or (init_from.tokenizer if init_from else None)
    if tokenizer is not None:
        extra.append(f"maskvit.tokenizer_checkpoint={tokenizer}")
    cfg = config_from_args(args, extra)
    train(
        cfg,
        list(args.data),
        out,
        resume=args.resume,
        token_cache=args.token_cache,
        init_from=init_from.maskvit if init_from else None,
    )
    return 0


_POSE_FIELDS = ("pose_conditioning", "pose_offset", "pose_scale")


def _network_differences(saved: dict, model_cfg: MaskViTModelConfig) -> list[str]:
    """The model-config fields in which a checkpoint's network differs from this run's (fields a
    checkpoint predates count with their defaults)."""
    try:
        theirs = MaskViTModelConfig.from_dict(saved).to_dict()
    except (TypeError, UserError):
        return ["(unreadable model_config)"]
    # dropout shapes no weight: a run may change it (a fine-tune without dropout trains 1.2-1.3x faster)
    return sorted(k for k, v in model_cfg.to_dict().items() if k != "dropout" and theirs.get(k) != v)


def _resolve_init(spec: str, out: Path) -> UnpackedPredictor:
    """--init-from as checkpoints: an exported predictor is unpacked once into OUT/init/ (rank 0; a
    resumed run finds it there); a checkpoint is used as it is, over the tokenizer it names."""
    from .export import unpack_predictor
    from .shipped import DEFAULT_PREDICTOR_NAME, default_model_path

    path = default_model_path() if spec == DEFAULT_PREDICTOR_NAME else Path(spec)
    if not path.is_file():
        raise UserError(f"--init-from {spec}: no such file")
    if not zipfile.is_zipfile(path) or _is_checkpoint(path):
        named = load_checkpoint(path).get("extra", {}).get("tokenizer_checkpoint")
        return UnpackedPredictor(tokenizer=Path(named) if named else None, maskvit=path)
    init_dir = out / "init"
    unpacked = UnpackedPredictor(tokenizer=init_dir / "tokenizer.pt", maskvit=init_dir / "maskvit.pt")
    if int(os.environ.get("RANK", "0")) == 0:
        if not unpacked.maskvit.is_file():
            unpacked = unpack_predictor(path, init_dir)
            log.info("unpacked %s into %s", path, init_dir)
        return unpacked
    deadline = time.monotonic() + 300  # the other ranks wait for rank 0's files (written atomically)
    while not (unpacked.maskvit.is_file() and unpacked.tokenizer.is_file()):
        if time.monotonic() > deadline:
            raise UserError(f"rank 0 did not unpack {path} into {init_dir} within 300 s")
        time.sleep(0.5)
    return unpacked


def _is_checkpoint(path: Path) -> bool:
    """torch.save files are zip archives too: a checkpoint holds data.pkl, a TorchScript file code/."""
    with zipfile.ZipFile(path) as archive:
        return not any("/code/" in n or n.startswith("code/") for n in archive.namelist())


if __name__ == "__main__":
    sys.exit(main())
