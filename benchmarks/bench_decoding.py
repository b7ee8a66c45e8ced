"""Forward passes and wall time of iterative vs autoregressive decoding of the same clip.

A randomly initialised MaskViT (speed does not depend on the weights) decodes the future frames of one
clip: autoregressively (one token per forward pass, raster order) and iteratively with S steps. Prints a
markdown table and the command that produced it.

    nice python benchmarks/bench_decoding.py                      # 2 + 6 frames of 8x8 tokens, CPU
    nice python benchmarks/bench_decoding.py --future 10 --steps 5 10 --threads 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch
from maskvit_mpc.models.decoding import autoregressive_decode, iterative_decode
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=2, help="context frames")
    parser.add_argument("--future", type=int, default=6, help="frames to decode")
    parser.add_argument("--grid", type=int, default=8, help="tokens per frame side")
    parser.add_argument("--codebook", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="clips decoded together")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16], help="iterative decoding steps S")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    T = args.context + args.future
    cfg = MaskViTModelConfig(
        codebook_size=args.codebook,
        grid_h=args.grid,
        grid_w=args.grid,
        num_frames=T,
        d_model=args.d_model,
        n_blocks=args.blocks,
        n_heads=args.heads,
        dropout=0.0,
    )
    model = MaskViT(cfg).to(device).eval()
    tokens = torch.randint(0, args.codebook, (args.batch, T, args.grid, args.grid), device=device)
    actions = torch.randn(args.batch, T - 1, 5, device=device)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, args.context :] = True

    def logits_fn(t: torch.Tensor) -> torch.Tensor:
        return model(t, actions)

    def timed(fn):  # noqa: ANN001, ANN202
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    g = torch.Generator(device=device)
    timed(lambda: logits_fn(tokens.masked_fill(mask, cfg.mask_token)))  # warm-up
    rows = []
    ar, ar_s = timed(
        lambda: autoregressive_decode(logits_fn, tokens, mask, cfg.mask_token, 1.0, g.manual_seed(0))
    )
    rows.append(("autoregressive (raster)", "-", ar.n_forward, ar_s))
    for steps in args.steps:
        it, it_s = timed(
            lambda s=steps: iterative_decode(
                logits_fn, tokens, mask, cfg.mask_token, s, "cosine", 1.0, 4.5, g.manual_seed(0)
            )
        )
        rows.append(("iterative (cosine)", str(steps), it.n_forward, it_s))

    n_params = model.num_parameters()
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(
        f"model: {n_params / 1e6:.2f}M parameters (d {args.d_model}, {args.blocks} blocks, {args.heads} heads), "
        f"{args.context} + {args.future} frames of {args.grid}x{args.grid} tokens "
        f"({mask[0].sum().item()} to decode), batch {args.batch}, device {device}, "
        f"{args.threads} thread(s), torch {torch.__version__}\n"
    )
    print(
        "| decoding | steps S | forward passes | wall time (s) | ms / pass | fewer passes than AR | speed-up vs AR |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, steps, n_forward, seconds in rows:
        print(
            f"| {name} | {steps} | {n_forward} | {seconds:.2f} | {1000 * seconds / n_forward:.1f} "
            f"| {ar.n_forward / n_forward:.0f}x | {ar_s / seconds:.1f}x |"
        )


if __name__ == "__main__":
    main()
