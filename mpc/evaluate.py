"""``mpc-eval``: success rate of a predictor (or random actions) over seeded simulated episodes."""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
from tqdm import tqdm

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import Config
from ..robot.client import ZmqArm
from ..robot.launch import launch_sim_server
from ..robot.server import watch_parent
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
  mpc-eval --task push --episodes 30 --seed 1000 --workers 2   # two processes, one core each

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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the episodes in this many processes, each with its own simulated arm and an equal "
        "share of the CPU cores (the results are the same as with one)",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.out is not None and args.out.suffix not in (".json", ".csv"):
        raise UserError(f"--out must end in .json or .csv, got {str(args.out)!r}")
    extra = [f"task.name={args.task}"] if args.task else []
    if args.max_steps is not None:
        extra.append(f"mpc.max_steps={args.max_steps}")
    cfg = config_from_args(args, extra)
    if not args.verbose:
        logging.getLogger("maskvit_mpc.mpc.loop").setLevel(logging.WARNING)  # the progress bar says enough

    seeds = list(range(args.seed, args.seed + args.episodes))
    workers = min(args.workers, len(seeds))
    start = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=f"{cfg.task.name} / {args.predictor}")
    rows: list[dict[str, Any]] = []
    plan_times: list[float] = []

    def report(row: dict[str, Any], times: list[float]) -> None:
        rows.append(row)
        plan_times.extend(times)
        bar.update(1)
        done = sum(bool(r["success"]) for r in rows)
        bar.set_postfix(success=f"{done}/{len(rows)}", plan_s=f"{np.mean(plan_times):.2f}")

    if workers == 1:
        _run_seeds(cfg, args.predictor, seeds, args.logs, args.verbose, report)
    else:
        _run_in_workers(cfg, args.predictor, seeds, args.logs, args.verbose, workers, report)
    bar.close()
    rows.sort(key=lambda r: r["seed"])
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


def _run_seeds(
    cfg: Config,
    predictor_spec: str,
    seeds: list[int],
    logs: Path | None,
    verbose: bool,
    report: Callable[[dict[str, Any], list[float]], None],
) -> None:
    """One simulated arm server, camera and predictor for these episodes; ``report(row, plan_times)``
    after each."""
    with ExitStack() as stack:
        predictor = (
            None if predictor_spec == "random" else stack.enter_context(load_predictor(predictor_spec, cfg))
        )
        server = stack.enter_context(launch_sim_server(cfg, verbose=verbose))
        arm = stack.enter_context(ZmqArm(server.bridge))
        camera = stack.enter_context(ZmqCamera(server.bridge))
        session = SimSession(cfg, arm, camera)
        stack.callback(session.close)
        for seed in seeds:
            episode = session.run(seed, predictor, episode=EpisodeLog(goal_image=None))
            if logs is not None:
                episode.save(logs / f"seed{seed}", gif=cfg.mpc.save_gif, gif_frame_ms=cfg.mpc.gif_frame_ms)
            report({"seed": seed, **episode.summary()}, episode.plan_times().tolist())


_results: Any = None  # a worker's queue to mpc-eval, set when the worker starts


def _start_worker(results: Any) -> None:
    """Each worker's initializer: keep the results queue (a queue can only be handed over at process
    start, which spares a separate manager process) and stop with mpc-eval if it is killed."""
    global _results
    _results = results
    _exit_with_parent(os.getppid())


def _worker(
    cfg: Config,
    predictor_spec: str,
    seeds: list[int],
    logs: Path | None,
    verbose: bool,
    threads: int,
) -> None:
    import torch

    torch.set_num_threads(threads)  # the workers share the cores instead of each taking them all
    if not verbose:
        logging.getLogger("maskvit_mpc.mpc.loop").setLevel(logging.WARNING)
    _run_seeds(cfg, predictor_spec, seeds, logs, verbose, lambda row, times: _results.put((row, times)))


def _exit_with_parent(parent_pid: int, period_s: float = 0.5, grace_s: float = 10.0) -> None:
    """Stop this worker once ``parent_pid`` (the mpc-eval process) is gone, killed or crashed, instead of
    planning on as an orphan: the main thread gets SIGINT (a KeyboardInterrupt), so the episode stops and the
    arm server closes as on Ctrl-C; a worker still alive ``grace_s`` later exits hard. Call it from the
    main thread: it restores Python's SIGINT handler, which a shell ignores for a job started with ``&``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def stop() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it also wakes a blocking call
        time.sleep(grace_s)
        os._exit(1)

    watch_parent(parent_pid, stop, period_s)


def _run_in_workers(
    cfg: Config,
    predictor_spec: str,
    seeds: list[int],
    logs: Path | None,
    verbose: bool,
    workers: int,
    report: Callable[[dict[str, Any], list[float]], None],
) -> None:
    """The episodes split over ``workers`` processes, each with its own arm server, camera and predictor
    and an equal share of the cores; every episode keeps its seed, so the results are those of one
    process."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    chunks = [seeds[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("spawn")  # no forked torch or ZeroMQ state
    queue = context.Queue()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(queue,)
    ) as pool:
        futures = [
            pool.submit(_worker, cfg, predictor_spec, chunk, logs, verbose, threads) for chunk in chunks
        ]
        reported = 0
        while reported < len(seeds):
            try:
                row, times = queue.get(timeout=1.0)
            except Empty:
                row = None
            if row is not None:
                report(row, times)
                reported += 1
                continue
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:  # a worker's error (a bad predictor file, say) is the run's
                for f in futures:
                    f.cancel()
                raise failed.exception()
        for f in futures:
            f.result()


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
