"""Tokenizer training speed on this machine: frames per second of one optimizer step, fp32 vs bf16.

Builds the tokenizer of each preset named (random weights: speed does not depend on them), runs forward,
reconstruction loss, backward and an AdamW step on random frames, and reports the best of --repeats
steps for fp32 and for bf16 autocast, interleaved in one process so that the ratio is measured under
the same load. Prints a markdown table and the command.

    nice python benchmarks/bench_tokenizer_step.py --threads 1
    nice python benchmarks/bench_tokenizer_step.py --presets tokenizer_cpu --set tokenizer.grid_size=16 ...
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel
from report import command_line, markdown_table


def _step_seconds(model: VQModel, opt: torch.optim.Optimizer, frames: torch.Tensor, precision: str) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    t = time.perf_counter()
    with ctx:
        out = model(frames)
        loss = (out.reconstruction.float() - frames).pow(2).mean() + out.quantizer_loss.float()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tokenizer_cpu"])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--batch", type=int, default=64, help="frames per step")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        tcfg = load_config(preset, args.set).tokenizer
        model = VQModel(TokenizerModelConfig.from_config(tcfg))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        frames = torch.rand(args.batch, 3, tcfg.image_size, tcfg.image_size)
        best = {"fp32": float("inf"), "bf16": float("inf")}
        for precision in ("fp32", "bf16"):
            _step_seconds(model, opt, frames, precision)  # warm-up: oneDNN picks kernels on first use
        for _ in range(args.repeats):
            for precision in ("fp32", "bf16"):
                best[precision] = min(best[precision], _step_seconds(model, opt, frames, precision))
        rows.append(
            {
                "preset": preset,
                "tokens": f"{tcfg.grid_size}x{tcfg.grid_size}",
                "params": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
                "fp32 frames/s": f"{args.batch / best['fp32']:.0f}",
                "bf16 frames/s": f"{args.batch / best['bf16']:.0f}",
                "bf16 / fp32": f"{best['fp32'] / best['bf16']:.2f}x",
            }
        )
    print(f"{command_line()}  ")
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
