"""eval-maskvit: prediction quality of a trained MaskViT on held-out episodes, against copy-last.

Decodes the future frames of evenly spaced held-out clips from their context frames and actions, the
way the planner does (iterative decoding, argmax by default), and reports PSNR / SSIM against the true
frames next to the copy-last-frame baseline and the tokenizer's own ceiling, and in simulation the
object-position error (see :mod:`.prediction_eval`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import DataConfig, MaskViTConfig
from .data import make_datasets
from .maskvit import maskvit_from_checkpoint
from .prediction_eval import clip_segmentation, evaluate_predictions
from .tokenizer import tokenizer_from_checkpoint
from .training import autocast, load_checkpoint, write_report

log = logging.getLogger("eval-maskvit")

EXAMPLES = """
  eval-maskvit --checkpoint runs/maskvit/step_0004000.pt --data data/sim-push
  eval-maskvit --checkpoint runs/maskvit/step_0004000.pt --data data/sim-push --clips 512 --steps 1 2 4
  eval-maskvit --checkpoint mv.pt --tokenizer tok.pt --data data/real --split all --json results/mv_real.json
"""


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        "eval-maskvit", "Evaluate a MaskViT checkpoint's predictions on held-out episodes.", EXAMPLES
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="step_N.pt written by train-maskvit")
    p.add_argument(
        "--tokenizer", metavar="CKPT", help="tokenizer checkpoint (default: the one it was trained on)"
    )
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="episode folders")
    p.add_argument(
        "--split",
        choices=["val", "all"],
        default="val",
        help="val: the episodes training held out; all: every one",
    )
    p.add_argument("--clips", type=int, default=256, help="evenly spaced clips to decode")
    p.add_argument(
        "--steps", type=int, nargs="+", help="decoding steps to compare (default: the checkpoint's)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0: argmax")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: the checkpoint's")
    p.add_argument("--json", type=Path, help="results file (default: CKPT stem + _eval.json)")
    return p


def _weighted_nanmean(values: list[float], weights: list[int]) -> float:
    """Mean over batches weighted by their clip counts, skipping batches with nothing to measure."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if not math.isnan(v)]
    return float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])) if pairs else math.nan


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.clips < 1 or args.batch_size < 1:
        raise UserError("--clips and --batch-size must be >= 1")
    cfg = config_from_args(args)
    ckpt = load_checkpoint(args.checkpoint)
    model = maskvit_from_checkpoint(ckpt, str(args.checkpoint))
    mcfg = MaskViTConfig.model_validate(ckpt["config"]["maskvit"])
    tok_path = Path(args.tokenizer or ckpt["extra"].get("tokenizer_checkpoint") or "")
    if not tok_path.is_file():
        raise UserError(f"tokenizer checkpoint {str(tok_path)!r} not found: pass --tokenizer")
    tokenizer = tokenizer_from_checkpoint(load_checkpoint(tok_path), str(tok_path))
    data_cfg = DataConfig.model_validate(ckpt["config"]["data"]) if "data" in ckpt["config"] else cfg.data
    data_cfg = data_cfg.model_copy(
        update={"val_fraction": data_cfg.val_fraction if args.split == "val" else 0.0}
    )
    clips = make_datasets(data_cfg, args.data)
    dataset = clips.val if args.split == "val" else clips.train
    if len(dataset) == 0:
        raise UserError(f"no {args.split} clips of {data_cfg.clip_length} frames in {args.data}")
    picks = np.linspace(0, len(dataset) - 1, min(args.clips, len(dataset))).round().astype(int)
    precision = args.precision or mcfg.precision
    results: dict[str, object] = {}
    for steps in args.steps or [mcfg.decode_steps]:
        sums: dict[str, list[float]] = {}
        weights: list[int] = []
        chunks = np.array_split(picks, math.ceil(len(picks) / args.batch_size))
        for chunk in tqdm(chunks, desc=f"{steps} decoding step(s)", dynamic_ncols=True):
            items = [dataset[int(i)] for i in chunk]
            frames = torch.stack([torch.as_tensor(it["frames"]) for it in items])  # (B, T, H, W, 3) uint8
            actions = torch.stack([it["actions"] for it in items])
            start_pose = torch.stack(
                [torch.as_tensor(it["poses"][0, :3], dtype=torch.float32) for it in items]
            )
            segs = [clip_segmentation(dataset, int(i)) for i in chunk]
            with torch.no_grad():
                x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
                tokens = tokenizer.encode(x).unflatten(0, frames.shape[:2])
            with autocast(precision, torch.device("cpu")):
                m = evaluate_predictions(
                    model,
                    tokenizer,
                    frames,
                    tokens,
                    actions if mcfg.action_conditioning != "none" else None,
                    mcfg.context_frames,
                    segmentation=None if any(s is None for s in segs) else torch.stack(segs),  # type: ignore[misc]
                    steps=steps,
                    schedule=mcfg.mask_schedule,
                    temperature=args.temperature,
                    generator=torch.Generator().manual_seed(0),
                    start_pose=start_pose,
                )
            for k, v in m.items():
                sums.setdefault(k, []).append(v)
            weights.append(len(chunk))
        results[f"steps_{steps}"] = {k: _weighted_nanmean(vals, weights) for k, vals in sums.items()}
    results.update(
        checkpoint=str(args.checkpoint), tokenizer=str(tok_path), clips=len(picks), split=args.split
    )
    write_report(results, args.checkpoint, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
