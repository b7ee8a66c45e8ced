"""``mpc-eval``: success rate of a predictor (or random actions) over seeded simulated episodes."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..robot.client import ZmqArm
from ..robot.launch import launch_sim_server
from ..robot.zmq_camera import ZmqCamera
from .loop import EpisodeLog
from .predictors import DEFAULT_PREDICTOR, PREDICTOR_NAMES, load_predictor
from .session import SimSession

log = logging.getLogger(__name__)

EXAMPLES = """
  mpc-eval --task push --episodes 20                      # the shipped MaskViT, seeds 0..19
  mpc-eval --task push --episodes 20 --predictor oracle   # the same scenes, the simulator as predictor
  mpc-eval --task reach --episodes 20 --predictor random --out reach-random.csv
  mpc-eval --task push --episodes 10 --seed 100 --predictor copy-last --logs runs/eval-logs
  mpc-eval --task push --episodes 4 --set planner.samples=40 --set mpc.oracle_workers=2

Episode i uses seed S + i, so two predictors evaluated with the same --seed see the same scenes and
goals. Results: success rate with its 95% Wilson interval, mean final distance, seconds per planning
step; written as JSON (summary + episodes) or, for a .csv --out, one row per episode plus a summary
row.
"""


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% (default z) Wilson score interval of a binomial proportion; (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(rows: list[dict[str, Any]], plan_times: list[float]) -> dict[str, Any]:
    n = len(rows)
    k = sum(bool(r["success"]) for r in rows)
    low, high = wilson_interval(k, n)
    finals = [r["final_distance_m"] for r in rows if r["final_distance_m"] is not None]
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else float("nan"),
        "success_rate_ci95": [low, high],
        "mean_final_distance_m": float(np.mean(finals)) if finals else None,
        "mean_initial_distance_m": float(np.mean([r["initial_distance_m"] for r in rows])) if rows else None,
        "seconds_per_planning_step": float(np.mean(plan_times)) if plan_times else None,
        "planning_steps": len(plan_times),
    }


def _parser():
    parser = make_parser("mpc-eval", "Evaluate visual MPC on seeded simulated episodes.", EXAMPLES)
    parser.add_argument("--task", choices=["push", "reach"], help="simulated task (overrides task.name)")
    parser.add_argument("--episodes", type=int, default=20, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--predictor",
        default=DEFAULT_PREDICTOR,
        metavar="NAME_OR_PATH",
        help=f"{' | '.join(PREDICTOR_NAMES)} | random (random actions) | a TorchScript file "
        f"(default: {DEFAULT_PREDICTOR}, the shipped model)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results file, .json or .csv (default runs/mpc-eval/<task>-<predictor>-...json)",
    )
    parser.add_argument("--logs", type=Path, help="also save every episode's log under this folder")
    parser.add_argument("--max-steps", type=int, help="override mpc.max_steps")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.out is not None and args.out.suffix not in (".json", ".csv"):
        raise UserError(f"--out must end in .json or .csv, got {str(args.out)!r}")
    extra = [f"task.name={args.task}"] if args.task else []
    if args.max_steps is not None:
        extra.append(f"mpc.max_steps={args.max_steps}")
    cfg = config_from_args(args, extra)
    if not args.verbose:
        logging.getLogger("maskvit_mpc.mpc.loop").setLevel(logging.WARNING)  # the progress bar says enough

    rows: list[dict[str, Any]] = []
    plan_times: list[float] = []
    start = time.perf_counter()
    with ExitStack() as stack:
        predictor = (
            None if args.predictor == "random" else stack.enter_context(load_predictor(args.predictor, cfg))
        )
        server = stack.enter_context(launch_sim_server(cfg, verbose=args.verbose))
        arm = stack.enter_context(ZmqArm(server.bridge))
        camera = stack.enter_context(ZmqCamera(server.bridge))
        session = SimSession(cfg, arm, camera)
        stack.callback(session.close)
        bar = tqdm(range(args.seed, args.seed + args.episodes), desc=f"{cfg.task.name} / {args.predictor}")
        for seed in bar:
            episode = session.run(seed, predictor, episode=EpisodeLog(goal_image=None))
            summary = episode.summary()
            rows.append({"seed": seed, **summary})
            plan_times.extend(episode.plan_times().tolist())
            if args.logs is not None:
                episode.save(
                    args.logs / f"seed{seed}", gif=cfg.mpc.save_gif, gif_frame_ms=cfg.mpc.gif_frame_ms
                )
            done = sum(bool(r["success"]) for r in rows)
            bar.set_postfix(success=f"{done}/{len(rows)}", plan_s=f"{np.mean(plan_times):.2f}")
    result = {
        "task": cfg.task.name,
        "predictor": args.predictor,
        "first_seed": args.seed,
        **summarise(rows, plan_times),
        "wall_time_s": time.perf_counter() - start,
    }
    low, high = result["success_rate_ci95"]
    print(
        f"{cfg.task.name} / {args.predictor}: success {result['successes']}/{result['episodes']} = "
        f"{result['success_rate']:.0%} (95% CI {low:.0%}-{high:.0%}), mean final distance "
        f"{result['mean_final_distance_m'] * 100:.1f} cm (start {result['mean_initial_distance_m'] * 100:.1f} cm), "
        f"{result['seconds_per_planning_step']:.2f} s per planning step"
    )
    out = args.out or Path("runs/mpc-eval") / (
        f"{cfg.task.name}-{Path(args.predictor).stem}-seed{args.seed}-n{args.episodes}.json"
    )
    _write(out, result, rows, cfg.model_dump(mode="json"))
    print(f"results: {out}")
    return 0


def _write(path: Path, result: dict[str, Any], rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({**result, "episodes_detail": rows, "config": config}, indent=2))
        return
    fields = [
        "seed",
        "success",
        "final_distance_m",
        "initial_distance_m",
        "steps",
        "stopped_by",
        "mean_plan_time_s",
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        low, high = result["success_rate_ci95"]
        writer.writerow(
            {
                "seed": "summary",
                "success": f"{result['success_rate']:.4f} [{low:.4f}, {high:.4f}]",
                "final_distance_m": result["mean_final_distance_m"],
                "initial_distance_m": result["mean_initial_distance_m"],
                "steps": result["planning_steps"],
                "stopped_by": "",
                "mean_plan_time_s": result["seconds_per_planning_step"],
            }
        )


if __name__ == "__main__":
    raise SystemExit(main())
