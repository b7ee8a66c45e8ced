"""Peak memory and time of window vs full attention: forward + backward of one batch.

Each configuration runs in its own subprocess so that peak memory is measured cleanly: on CPU the peak
resident set size (``ru_maxrss``) minus the resident size just before the step; on CUDA
``torch.cuda.max_memory_allocated``. Two attention kernels are compared, because the default
``scaled_dot_product_attention`` kernel may avoid materialising the attention matrix, while the
"math" kernel materialises it as the paper's implementation did.

    nice python benchmarks/bench_attention_memory.py                  # 16 frames x 16x16 tokens, CPU
    nice python benchmarks/bench_attention_memory.py --frames 8 --d-model 256 --kernels default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shlex
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> dict:
    import torch
    from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = MaskViTModelConfig(
        codebook_size=args.codebook,
        grid_h=args.grid,
        grid_w=args.grid,
        num_frames=args.frames,
        d_model=args.d_model,
        n_blocks=args.blocks,
        n_heads=args.heads,
        dropout=0.0,
        attention=args.attention,
    )
    model = MaskViT(cfg).to(device).train()
    tokens = torch.randint(
        0, args.codebook + 1, (args.batch, args.frames, args.grid, args.grid), device=device
    )
    actions = torch.randn(args.batch, args.frames - 1, 5, device=device)

    def kernel_choice() -> contextlib.AbstractContextManager:
        # default: whatever torch picks for these shapes; math: the explicit softmax(QK^T)V
        return sdpa_kernel([SDPBackend.MATH]) if args.kernel == "math" else contextlib.nullcontext()

    def step() -> None:
        with kernel_choice():
            logits = model(tokens, actions)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, -2), tokens.clamp(max=args.codebook - 1).flatten()
            )
            loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        step()  # warm-up: kernels and allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # ru_maxrss only grows: warm up (libraries, thread pools) on one frame, far below the real peak
        with kernel_choice():
            model(tokens[:, :1], None).sum().backward()
        model.zero_grad(set_to_none=True)
        base = _rss_mb() * 2**20
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak_mb": peak / 2**20, "seconds": seconds, "params": model.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=16, help="tokens per frame side")
    parser.add_argument("--codebook", type=int, default=1024)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernels", nargs="+", default=["default", "math"], choices=["default", "math"])
    parser.add_argument("--attention", choices=["window", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--kernel", choices=["default", "math"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.attention is not None:  # a child process: measure one configuration
        print(json.dumps(child(args)))
        return

    shared = [
        f"--{k}={v}"
        for k, v in [
            ("frames", args.frames),
            ("grid", args.grid),
            ("codebook", args.codebook),
            ("d-model", args.d_model),
            ("blocks", args.blocks),
            ("heads", args.heads),
            ("batch", args.batch),
            ("threads", args.threads),
            ("device", args.device),
        ]
    ]
    results = {}
    for kernel in args.kernels:
        for attention in ("window", "full"):
            cmd = [sys.executable, __file__, *shared, f"--attention={attention}", f"--kernel={kernel}"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{attention}/{kernel} failed: {last}", file=sys.stderr)
                continue  # e.g. out of memory: reported as a missing row
            results[(attention, kernel)] = json.loads(done.stdout.strip().splitlines()[-1])

    n_tokens = args.frames * args.grid * args.grid
    params = next(iter(results.values()))["params"] if results else 0
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(
        f"forward + backward of one batch: {args.batch} x {args.frames} frames x {args.grid}x{args.grid} tokens "
        f"({n_tokens} per clip), d {args.d_model}, {args.blocks} blocks, {args.heads} heads, "
        f"{params / 1e6:.2f}M parameters, device {args.device}, {args.threads} thread(s)\n"
    )
    memory = "peak RSS above the start (MiB)" if args.device == "cpu" else "peak allocated (MiB)"
    print(f"| SDPA kernel | attention | {memory} | time (s) | full / window memory |")
    print("| --- | --- | --- | --- | --- |")
    for kernel in args.kernels:
        window = results.get(("window", kernel))
        for attention in ("window", "full"):
            r = results.get((attention, kernel))
            if r is None:
                print(f"| {kernel} | {attention} | failed (out of memory?) | - | - |")
                continue
            ratio = f"{r['peak_mb'] / window['peak_mb']:.1f}x" if window else "-"
            print(f"| {kernel} | {attention} | {r['peak_mb']:.0f} | {r['seconds']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
