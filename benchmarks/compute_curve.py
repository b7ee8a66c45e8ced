"""Planning success and prediction quality against training compute, from one MaskViT run's checkpoints.

For each chosen checkpoint of a ``train-maskvit`` run: export it with its tokenizer (``export-predictor``),
measure prediction quality on held-out clips (``eval-maskvit``: PSNR / SSIM vs copy-last, object-position
error) and closed-loop push success (``mpc-eval``, the same seeds for every checkpoint). Training time is
read from the run's ``metrics.csv`` (clips per second over each logging interval), so it is the wall time
the run itself took on its machine. Prints a markdown table and the command; results land in --work.

    python benchmarks/compute_curve.py --run runs/maskvit --data data/sim-push --steps 250 500 1000 1500
    python benchmarks/compute_curve.py --run runs/maskvit --data data/sim-push --episodes 30 --seed 1000

Checkpoints of one run are points on one cosine schedule: an early one has seen a higher learning rate
than a separate run of that length would end on, so read the curve as a lower bound for short runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

from report import command_line, markdown_table


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def training_minutes(run: Path, batch_size: int) -> dict[int, float]:
    """Cumulative training minutes at each logged step, from the clips-per-second column."""
    minutes, total, last = {}, 0.0, 0
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step, rate = int(row["step"]), row.get("clips_per_s")
            if rate:
                total += (step - last) * batch_size / float(rate) / 60.0
                last = step
                minutes[step] = total
    return minutes


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}); see {log}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="train-maskvit --out folder")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="episode folders (held-out clips)")
    p.add_argument("--steps", type=int, nargs="+", help="checkpoint steps (default: every one in --run)")
    p.add_argument("--episodes", type=int, default=10, help="mpc-eval push episodes per checkpoint")
    p.add_argument("--seed", type=int, default=1000, help="first mpc-eval seed (the same for every point)")
    p.add_argument("--clips", type=int, default=256, help="eval-maskvit held-out clips")
    p.add_argument("--work", type=Path, help="exports and results (default: RUN/compute_curve)")
    p.add_argument(
        "--eval-args", default="", help="extra mpc-eval arguments, e.g. '--set planner.samples=40'"
    )
    args = p.parse_args()

    work = args.work or args.run / "compute_curve"
    work.mkdir(parents=True, exist_ok=True)
    ckpts = {int(c.stem.split("_")[1]): c for c in sorted(args.run.glob("step_*.pt"))}
    steps = args.steps or sorted(ckpts)
    missing = [s for s in steps if s not in ckpts]
    if missing:
        raise SystemExit(f"no checkpoint for steps {missing} in {args.run} (have {sorted(ckpts)})")
    import torch

    cfg = torch.load(ckpts[steps[0]], map_location="cpu", weights_only=True)["config"]
    minutes = training_minutes(args.run, int(cfg["maskvit"]["batch_size"]))
    decode_steps = int(cfg["maskvit"]["decode_steps"])  # what the export plans with

    rows = []
    for step in steps:
        ckpt, stem = ckpts[step], f"step_{step:07d}"
        exported = work / f"{stem}.ts"
        if not exported.exists():
            _run(
                [_bin("export-predictor"), "--maskvit", str(ckpt), "--out", str(exported)],
                work / f"{stem}_export.log",
            )
        quality = work / f"{stem}_quality.json"
        if not quality.exists():
            _run(
                [_bin("eval-maskvit"), "--checkpoint", str(ckpt), "--data", *map(str, args.data),
                 "--clips", str(args.clips), "--steps", str(decode_steps), "--json", str(quality)],
                work / f"{stem}_quality.log",
            )  # fmt: skip
        planning = work / f"{stem}_push.json"
        if not planning.exists():
            _run(
                [_bin("mpc-eval"), "--task", "push", "--episodes", str(args.episodes), "--seed", str(args.seed),
                 "--predictor", str(exported), "--out", str(planning), *shlex.split(args.eval_args)],
                work / f"{stem}_push.log",
            )  # fmt: skip
        q = json.loads(quality.read_text())
        q = q[f"steps_{decode_steps}"]
        s = json.loads(planning.read_text())["summary"]
        low, high = s["success_rate_ci95"]
        rows.append(
            {
                "step": str(step),
                "training min": f"{minutes.get(step, float('nan')):.0f}",
                "pred PSNR dB (copy-last)": f"{q['pred_psnr']:.2f} ({q['copy_last_psnr']:.2f})",
                "pred SSIM (copy-last)": f"{q['pred_ssim']:.3f} ({q['copy_last_ssim']:.3f})",
                "moved-object err px (copy-last)": (
                    f"{q['moved_object_err_px']:.2f} ({q['copy_last_moved_object_err_px']:.2f})"
                ),
                "push success": f"{s['successes']}/{s['episodes']} ({low:.0%}-{high:.0%})",
                "final distance cm": f"{100 * s['mean_final_distance_m']:.1f}",
                "s / planning step": f"{s['seconds_per_planning_step']:.2f}",
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)

    print(f"{command_line()}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
