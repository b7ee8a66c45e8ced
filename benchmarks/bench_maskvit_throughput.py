"""MaskViT speed on this machine: training throughput (clips per second) and the planner's forward pass.

For each model size given, a randomly initialised MaskViT (speed does not depend on the weights):
- trains on random token clips with the MVM objective (forward, backward, AdamW step), batch --batch,
  in fp32 and bf16 autocast, and reports clips per second;
- runs the forward pass the CEM planner makes: --samples clips of --context + --horizon frames at once,
  and reports milliseconds per pass (a planning step costs decode steps x CEM iterations passes).
All variants run in the same process, one after another, so their ratios are measured under the same
load. Prints a markdown table and the command.

    nice python benchmarks/bench_maskvit_throughput.py --threads 2
    nice python benchmarks/bench_maskvit_throughput.py --sizes 128x2 192x3 256x4 --codebook 512
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time

import torch
from maskvit_mpc.configs.schema import MaskViTConfig
from maskvit_mpc.models.masking import MVMObjective
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig
from report import command_line, markdown_table


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _measure(model, objective, opt, batch, plan_batch, precision: str, repeats: int) -> tuple[float, float]:
    """Best-of seconds of one training step and of one planning forward pass."""

    def train_step() -> None:
        model.train()
        with _autocast(precision):
            loss = objective(model, *batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def plan_pass() -> None:
        model.eval()
        with _autocast(precision):
            model(*plan_batch)

    return _best(train_step, repeats), _best(plan_pass, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["128x2", "192x3", "256x4"], help="d_model x blocks")
    parser.add_argument(
        "--dropouts", nargs="+", type=float, default=[0.1], help="dropout rates to train each size with"
    )
    parser.add_argument("--codebook", type=int, default=512)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--context", type=int, default=2)
    parser.add_argument("--future", type=int, default=10, help="future frames of a training clip")
    parser.add_argument("--horizon", type=int, default=8, help="future frames of a planning rollout")
    parser.add_argument("--batch", type=int, default=32, help="training clips per step")
    parser.add_argument("--samples", type=int, default=60, help="CEM samples scored per forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    T = args.context + args.future
    for size, dropout in ((s, p) for s in args.sizes for p in args.dropouts):
        d, blocks = (int(v) for v in size.split("x"))
        cfg = MaskViTModelConfig(
            codebook_size=args.codebook, grid_h=args.grid, grid_w=args.grid, num_frames=T,
            d_model=d, n_blocks=blocks, n_heads=max(1, d // 32), dropout=dropout,
        )  # fmt: skip
        model = MaskViT(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        objective = MVMObjective.from_config(
            MaskViTConfig(context_frames=args.context, future_frames=args.future), cfg.mask_token
        )
        tokens = torch.randint(0, args.codebook, (args.batch, T, args.grid, args.grid))
        actions = torch.randn(args.batch, T - 1, 5)
        plan_tokens = torch.randint(
            0, args.codebook, (args.samples, args.context + args.horizon, args.grid, args.grid)
        )
        plan_actions = torch.randn(args.samples, args.context + args.horizon - 1, 5)
        row = {
            "model": f"d {d}, {blocks} blocks",
            "dropout": f"{dropout:g}",
            "params": f"{model.num_parameters() / 1e6:.2f}M",
        }
        for precision in ("fp32", "bf16"):
            step_s, pass_s = _measure(
                model, objective, opt, (tokens, actions), (plan_tokens, plan_actions), precision, args.repeats
            )
            row[f"train clips/s {precision}"] = f"{args.batch / step_s:.1f}"
            row[f"plan pass ms {precision}"] = f"{1000 * pass_s:.0f}"
        rows.append(row)
        print(row, file=sys.stderr, flush=True)

    print(f"{command_line()}  ")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"training: batch {args.batch} clips of {args.context}+{args.future} frames of {args.grid}x{args.grid} "
          f"tokens, {args.codebook} codes; planning pass: {args.samples} clips of {args.context}+{args.horizon} frames\n")  # fmt: skip
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
