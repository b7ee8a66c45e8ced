"""What every training script shares: devices and torchrun/DDP, seeding, the LR schedule, checkpoints,
the metrics CSV and the training loop itself (:func:`run_loop`).

A script is the same code on one CPU, one GPU or many under ``torchrun``::

    with setup_distributed("auto") as ctx:     # reads RANK / WORLD_SIZE / LOCAL_RANK if torchrun set them
        seed_everything(cfg.seed + ctx.rank)
        model = wrap_ddp(model.to(ctx.device), ctx)
        ...
        save_checkpoint(path, models={"model": unwrap(model)}, optimizers={"opt": opt}, step=step,
                        config=cfg.model_dump())

Checkpoints are a dict of ``state_dict``s, plain numbers and plain config dicts only, so they load with
``torch.load(path, weights_only=True)`` (no pickled classes, nothing executed).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..configs.errors import UserError

__all__ = [
    "CSVLogger",
    "CheckpointError",
    "DistContext",
    "LoopSchedule",
    "all_reduce_mean",
    "autocast",
    "checkpoint_name",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "nanmean",
    "write_report",
    "prune_checkpoints",
    "resume_point",
    "run_loop",
    "save_checkpoint",
    "seed_everything",
    "set_lr",
    "setup_distributed",
    "unwrap",
    "wrap_ddp",
]

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not the kind the command expects."""


# --- devices and processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    """Where this process runs and who its peers are. world_size 1 means no process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and images."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(sync=exc_type is None)  # after an error a peer may never reach the barrier

    def close(self, sync: bool = True) -> None:
        """Leave the process group. ``sync``: wait for every rank first, since a rank that tears gloo down
        while another is still in a collective can abort (``terminate called without an active
        exception``); pass False on an error path, where a peer may never arrive."""
        if self.distributed and dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()


def _resolve_device(preference: str, local_rank: int) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but torch sees no CUDA GPU: use device=cpu or auto")
    if preference != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK), if any.

    NCCL on GPUs, gloo on CPU. Without torchrun this is a single process and no group is created.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        log.debug("rank %d/%d joined (%s, %s)", rank, world_size, backend, dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``module`` (already on ctx.device) when there are several processes."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of scalars over ranks (for logging); a no-op in one process."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Give each rank its own seed (seed + rank) for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- learning rate ------------------------------------------------------------------------------


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up from base_lr / warmup_steps to base_lr, then cosine decay to min_ratio * base_lr at
    total_steps (and flat after). A pure function of the step, so resuming needs no scheduler state."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- checkpoints --------------------------------------------------------------------------------

_CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def save_checkpoint(
    path: str | Path,
    *,
    models: dict[str, nn.Module],
    step: int,
    config: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{"step", "config", "models": {name: state_dict}, "optimizers": {...}, "extra"}`` atomically.

    ``config`` and ``extra`` must hold plain values (numbers, strings, lists, dicts, tensors) so the file
    loads with weights_only=True. The file is written beside its final name and renamed, so a crash
    never leaves half a checkpoint under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "maskvit_mpc.checkpoint/1",
        "step": int(step),
        "config": config,
        "models": {name: unwrap(m).state_dict() for name, m in models.items()},
        "optimizers": {name: opt.state_dict() for name, opt in (optimizers or {}).items()},
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (a checkpoint: a few MB)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """sha256 of a network's parameters and buffers (names, dtypes and values), whatever file or
    metadata they were saved with: an export records it to detect a damaged file, and the token cache
    is keyed by the tokenizer's, so the same weights saved again reuse the cache."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights_only=True: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(data, dict) or "models" not in data or "config" not in data:
        raise CheckpointError(f"{path} is not a maskvit_mpc checkpoint (no 'models'/'config' entries)")
    return data


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``step_N.pt`` with the largest N in ``directory``, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


# --- metrics CSV --------------------------------------------------------------------------------


class CSVLogger:
    """Appends rows of scalars to a CSV file. A key first seen in a later row widens the header (the file
    is rewritten once), so the file always parses as one table. Appends to an existing file on resume."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                self.fields = next(csv.reader(f), [])

    def log(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            old_rows = self.read() if self.fields else []
            self.fields += new
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(old_rows)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: _fmt(v) for k, v in row.items()})

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


# --- the training loop --------------------------------------------------------------------------


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (GPUs, and CPUs with AMX: 1.7x on the tokenizer), else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resume_point(out: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None: a fresh run), refusing the two easy mistakes: --resume
    with nothing to resume, and a fresh run that would mix its checkpoints with an older run's."""
    out = Path(out)
    existing = latest_checkpoint(out)
    if resume and existing is None:
        raise CheckpointError(f"--resume: no step_N.pt checkpoint in {out}; drop --resume to start a new run")
    if not resume and existing is not None:
        raise UserError(
            f"{out} already holds checkpoints ({existing.name}): pass --resume, or choose another --out"
        )
    return existing


def prune_checkpoints(out: str | Path, keep: int = 3) -> None:
    """Delete all but the ``keep`` newest ``step_N.pt`` in ``out``."""
    found = sorted(
        (int(m.group(1)), p) for p in Path(out).iterdir() if (m := _CKPT_RE.match(p.name)) is not None
    )
    for _, old in found[:-keep]:
        old.unlink(missing_ok=True)


def write_report(results: dict[str, Any], checkpoint: str | Path, json_path: Path | None) -> Path:
    """Print an evaluation's results (nested sections indented) and write them as JSON: to ``json_path``,
    or beside the checkpoint as ``<stem>_eval.json``. Returns the file written."""
    width = max(len(k) for k in results)
    for key, value in results.items():
        if isinstance(value, dict):
            print(key)
            inner = max(len(k) for k in value) if value else 0
            for k, v in value.items():
                print(f"  {k:<{inner}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{inner}}  {v}")
        else:
            print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    out = json_path or Path(checkpoint).with_name(Path(checkpoint).stem + "_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    log.info("wrote %s", out)
    return out


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN (a batch with nothing to measure), NaN when all are."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class LoopSchedule:
    """When the loop stops, logs, validates and checkpoints (all in optimizer steps)."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    validate_every: int = 0  # 0: never


def run_loop(
    *,
    start_step: int,
    schedule: LoopSchedule,
    train_step: Callable[[int], dict[str, float]],
    save: Callable[[int], None],
    ctx: DistContext,
    csv_path: Path,
    items_per_step: int,
    rate_name: str,
    desc: str,
    window_stats: Callable[[], dict[str, float]] | None = None,
    validate: Callable[[int], dict[str, float]] | None = None,
    after_step: Callable[[int], None] | None = None,
    postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
) -> dict[str, float]:
    """The one training loop every model uses; the model-specific parts come in as callables.

    ``train_step(step)`` runs one optimizer step (step counts steps done before it) and returns scalar
    logs. Every ``log_every`` steps the logs are averaged (NaN ignored), extended with
    ``window_stats()`` and the throughput ``rate_name`` (items per second over all ranks), averaged over
    ranks and appended to ``csv_path``; every ``validate_every`` steps ``validate(step)`` adds its
    columns to that row; every ``checkpoint_every`` steps and at the end ``save(step)`` runs on rank 0
    (the others wait). ``after_step(step)`` runs on rank 0 after each step (sample images and the like).
    Returns the union of the rows logged, the latest value of each column.
    """
    csv_log = CSVLogger(csv_path) if ctx.is_main else None
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    step = start_step
    t_window = time.perf_counter()
    bar = tqdm(
        total=schedule.total_steps, initial=step, disable=not ctx.is_main, desc=desc, dynamic_ncols=True
    )
    while step < schedule.total_steps:
        logs = train_step(step)
        step += 1
        bar.update(1)
        for key, value in logs.items():
            window.setdefault(key, []).append(float(value))
        final = step == schedule.total_steps
        row: dict[str, float] = {}
        if step % schedule.log_every == 0 or final:
            steps_in_window = max(len(v) for v in window.values()) if window else 0
            row = {k: nanmean(v) for k, v in window.items()}
            if window_stats is not None:
                row.update(window_stats())
            elapsed = time.perf_counter() - t_window
            row[rate_name] = steps_in_window * items_per_step * ctx.world_size / max(elapsed, 1e-9)
            window = {}
        if (
            validate is not None
            and schedule.validate_every > 0
            and (step % schedule.validate_every == 0 or final)
        ):
            row.update(validate(step))
        if row:
            row = all_reduce_mean(row, ctx)
            if csv_log is not None:
                csv_log.log({"step": step, **row})
            if postfix is not None:
                bar.set_postfix(postfix(row))
            last = {**last, **row}
            t_window = time.perf_counter()  # validation time does not count against throughput
        if ctx.is_main and after_step is not None:
            after_step(step)
        if step % schedule.checkpoint_every == 0 or final:
            if ctx.is_main:
                save(step)
            ctx.barrier()
    bar.close()
    return last
