"""eval-tokenizer: reconstruction quality and codebook health of a trained tokenizer on held-out episodes.

Reports whole-frame PSNR and SSIM, PSNR on gripper and object pixels (segmentation > 0 in simulation;
pixels that change within the episode on real data), PSNR on the other pixels (the table and the shadows),
and the share of codes used and the perplexity.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import DataConfig
from .frame_data import EpisodeFrames, frame_datasets
from .metrics import CodeCounter, masked_psnr, psnr, ssim
from .tokenizer import VQModel, tokenizer_from_checkpoint
from .training import load_checkpoint, write_report

log = logging.getLogger("eval-tokenizer")

EXAMPLES = """
  eval-tokenizer --checkpoint runs/tokenizer/step_0006000.pt --data runs/sim_heldout
  eval-tokenizer --checkpoint runs/tokenizer/step_0006000.pt --data runs/sim_push --split val
  eval-tokenizer --checkpoint tok.pt --data runs/real --max-frames 2000 --json results/tok_real.json
"""


def _parser() -> argparse.ArgumentParser:
    p = make_parser("eval-tokenizer", "Evaluate a tokenizer checkpoint on recorded episodes.", EXAMPLES)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="step_N.pt written by train-tokenizer")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="held-out episode folders")
    p.add_argument(
        "--split",
        choices=["all", "val", "train"],
        default="all",
        help="all: every episode of --data; val: the episodes train-tokenizer held out (data.val_fraction)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="frames per forward pass")
    p.add_argument(
        "--max-frames", type=int, default=None, help="evaluate an evenly spaced subset of this many frames"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--json", type=Path, default=None, help="where to write the results (default: CKPT stem + _eval.json)"
    )
    return p


@torch.no_grad()
def evaluate(
    model: VQModel, dataset: EpisodeFrames | Subset, batch_size: int = 64, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Metrics over every frame of ``dataset``; PSNR and SSIM are means of per-frame values."""
    model = model.to(device).eval()
    counter = CodeCounter(model.num_codes)
    whole: list[torch.Tensor] = []
    structural: list[torch.Tensor] = []
    masked: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    with_seg = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True):
        frames = batch["frame"].to(device)
        indices = model.encode(frames)
        reconstruction = model.decode(indices)
        counter.update(indices)
        whole.append(psnr(reconstruction, frames).cpu())
        structural.append(ssim(reconstruction, frames).cpu())
        mask = batch["mask"].to(device)
        masked.append(masked_psnr(reconstruction, frames, mask).cpu())
        rest.append(masked_psnr(reconstruction, frames, ~mask).cpu())
        with_seg += int(batch["has_segmentation"].sum())
    whole_t, ssim_t, masked_t = torch.cat(whole), torch.cat(structural), torch.cat(masked)
    valid = masked_t[~torch.isnan(masked_t)]
    rest_t = torch.cat(rest)
    rest_t = rest_t[~torch.isnan(rest_t)]
    stats = counter.stats()
    n = len(whole_t)
    return {
        "frames": n,
        "psnr_db": float(whole_t.mean()),
        "ssim": float(ssim_t.mean()),
        "object_psnr_db": float(valid.mean()) if len(valid) else math.nan,
        "object_frames": len(valid),
        # the other pixels (table, shadows): with the object PSNR, says which part limits whole frames
        "background_psnr_db": float(rest_t.mean()) if len(rest_t) else math.nan,
        "object_mask": "segmentation" if with_seg == n else ("changing pixels" if with_seg == 0 else "mixed"),
        "codebook_used": stats.used,
        "codebook_size": stats.size,
        "codebook_usage": stats.usage,
        "perplexity": stats.perplexity,
    }


@torch.no_grad()
def token_churn(
    model: VQModel,
    episodes: list,
    max_episodes: int = 50,
    static_threshold: int = 3,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """How often a position's code changes between consecutive frames of an episode.

    ``static_token_churn`` counts only positions whose pixels did not change (every channel of every
    pixel of the token's patch within ``static_threshold`` of 255): codes that flip on an unchanged
    table are noise MaskViT has to predict, and a planner cannot tell them from motion. Lower is better;
    0 on static content is ideal.
    """
    model = model.to(device).eval()
    changed: list[torch.Tensor] = []
    static: list[torch.Tensor] = []
    picks = np.linspace(0, len(episodes) - 1, min(max_episodes, len(episodes))).round().astype(int)
    patch = model.image_size // model.grid_size
    for i in sorted(set(picks.tolist())):
        episode = episodes[i]
        frames = torch.from_numpy(np.ascontiguousarray(episode.frames(0, episode.num_frames, 1)))  # (T,H,W,3)
        if frames.shape[1] != model.image_size or len(frames) < 2:
            continue
        codes = model.encode(frames.to(device).permute(0, 3, 1, 2).float() / 255.0)  # (T, h, w)
        flips = codes[1:] != codes[:-1]
        diff = (frames[1:].to(torch.int16) - frames[:-1].to(torch.int16)).abs().amax(-1)  # (T-1, H, W)
        patch_diff = diff.unflatten(1, (model.grid_size, patch)).unflatten(3, (model.grid_size, patch))
        still = patch_diff.amax(dim=(2, 4)) <= static_threshold  # (T-1, h, w)
        changed.append(flips.flatten().cpu())
        static.append(flips[still.to(device)].cpu())
    all_flips, static_flips = torch.cat(changed), torch.cat(static)
    return {
        "token_churn": float(all_flips.float().mean()) if all_flips.numel() else math.nan,
        "static_token_churn": float(static_flips.float().mean()) if static_flips.numel() else math.nan,
        "static_token_share": static_flips.numel() / max(1, all_flips.numel()),
    }


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU: use --device cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    cfg = config_from_args(args)
    device = _device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    model = tokenizer_from_checkpoint(ckpt, str(args.checkpoint)).to(device)
    data_cfg = cfg.data
    if args.split != "all" and "data" in ckpt["config"]:
        # the episodes the training run held out, whatever --config says now
        data_cfg = DataConfig.model_validate(ckpt["config"]["data"])
    dataset: EpisodeFrames | Subset = frame_datasets(args.data, data_cfg, model.image_size, split=args.split)
    if args.max_frames is not None and args.max_frames < len(dataset):
        if args.max_frames < 1:
            raise UserError("--max-frames must be >= 1")
        keep = np.linspace(0, len(dataset) - 1, args.max_frames).round().astype(int)
        dataset = Subset(dataset, sorted(set(keep.tolist())))
    results = evaluate(model, dataset, args.batch_size, device)
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    results.update(token_churn(model, base.episodes, device=device))
    results.update(checkpoint=str(args.checkpoint), data=[str(d) for d in args.data], split=args.split)
    write_report(results, args.checkpoint, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
