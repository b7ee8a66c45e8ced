"""Where a tokenizer's reconstruction error lies: on the objects, in rings of pixels around them, far away.

Whole-frame PSNR on the simulated tabletop is an average over a static table and a few small objects.
This splits the squared error of held-out reconstructions by distance to the segmentation mask (ring 0:
the gripper and object pixels; ring r: pixels r steps of a 3x3 dilation outside them; "far": the rest),
and prints each part's share of the pixels, its share of the total error and its own PSNR, so that a
loss weighting can go where the error is.

    python benchmarks/tokenizer_error_rings.py --checkpoint runs/tok16/step_0012000.pt --data data/sim-push
    python benchmarks/tokenizer_error_rings.py --checkpoint A.pt B.pt --data data/sim-push --frames 512
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from maskvit_mpc.configs.schema import DataConfig
from maskvit_mpc.models.frame_data import frame_datasets
from maskvit_mpc.models.tokenizer import tokenizer_from_checkpoint
from maskvit_mpc.models.training import load_checkpoint
from report import command_line, markdown_table


def error_rings(rec: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor, rings: int) -> list[dict]:
    """Per ring: share of pixels, share of the squared error, PSNR. (B, 3, H, W) in [0, 1], mask (B, H, W)."""
    err = (rec.float() - frames.float()).pow(2).mean(1)  # (B, H, W)
    total = float(err.sum())
    inside = mask.to(torch.float32)
    seen = torch.zeros_like(inside, dtype=torch.bool)
    out = []
    for r in range(rings + 2):
        if r <= rings:
            region = (inside > 0) & ~seen
            name = "objects" if r == 0 else f"ring {r}"
        else:
            region = ~seen
            name = "far"
        seen |= region
        inside = F.max_pool2d(inside[:, None], 3, stride=1, padding=1)[:, 0]
        part = err[region]
        mse = float(part.mean()) if part.numel() else math.nan
        out.append(
            {
                "pixels": name,
                "share of pixels": f"{region.float().mean().item():.3f}",
                "share of the error": f"{float(part.sum()) / total:.3f}" if total > 0 else "n/a",
                "PSNR dB": f"{10 * math.log10(1.0 / mse):.1f}" if mse > 0 else "inf",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, type=Path, help="train-tokenizer step_N.pt")
    parser.add_argument("--data", nargs="+", required=True, help="episode folders")
    parser.add_argument("--frames", type=int, default=256, help="evenly spaced held-out frames")
    parser.add_argument("--rings", type=int, default=3, help="rings around the objects before 'far'")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for path in args.checkpoint:
        ckpt = load_checkpoint(path)
        model = tokenizer_from_checkpoint(ckpt, str(path)).eval()
        data_cfg = DataConfig.model_validate(ckpt["config"]["data"])  # the episodes that run held out
        dataset = frame_datasets(args.data, data_cfg, model.image_size, split="val")
        picks = np.linspace(0, len(dataset) - 1, min(args.frames, len(dataset))).round().astype(int)
        items = [dataset[int(i)] for i in sorted(set(picks.tolist()))]
        frames = torch.stack([item["frame"] for item in items])
        mask = torch.stack([item["mask"] for item in items])
        with torch.no_grad():
            rec = torch.cat([model.decode(model.encode(chunk)) for chunk in frames.split(64)])
        print(f"\n{path} (step {ckpt.get('step')}), {len(frames)} held-out frames")
        print(markdown_table(error_rings(rec, frames, mask, args.rings)))
    print(f"\n{command_line()}  \n{platform.machine()}, torch {torch.__version__}, {args.threads} threads")


if __name__ == "__main__":
    main()
