"""``collect-plan-branches``: fine-tuning data from the planner's own choices (simulation only).

A video model trained on exploration data is asked, at planning time, about action sequences the
exploration rarely tried: the planner's. Its mistakes there decide where the arm goes, and nothing in
exploration data corrects them. This command runs the visual-MPC planner with a learned predictor on
seeded simulated tasks (the mpc-eval episodes, from other seeds), and at every planning step it
restores the simulator's state and plays out some of the sequences the planner scored: those the
predictor ranked best (where an error makes the planner choose wrongly), the plan it executed, and a
few of its first-iteration samples. Each branch is saved as a short episode: the two context frames
the planner saw and the frames the simulator really renders after the sequence. The planner's
trajectory itself is saved as one more episode. Train on the folder beside the exploration data
(``train-maskvit --data EXPLORATION BRANCHES --set data.weights=[...]``), like the DAgger idea for
policies: the model learns the outcome of the plans it gets wrong.

Restoring the state is what a simulator offers and a real arm does not: this is simulation only.

Folder layout: one ``episode_NNNNNN.h5`` per branch or trajectory (the collector's format, so that
every tool that reads collections reads it), numbered ``scene * 1000 + k``; ``k = 0`` is the scene's
trajectory, written last, so a scene is complete when it exists. ``--resume`` skips complete scenes
and redoes the others.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import Config
from ..robot import episodes as ep_io
from ..robot.safety import was_clipped
from .predictors import DEFAULT_PREDICTOR, load_predictor
from .session import make_policy

log = logging.getLogger(__name__)

SCENE_STRIDE = 1000  # episode index = scene * SCENE_STRIDE + k; k = 0 is the trajectory

EXAMPLES = """
  collect-plan-branches --out data/plan-branches --scenes 40             # the shipped MaskViT, 2 processes
  collect-plan-branches --out data/plan-branches --scenes 40 --resume    # after an interruption
  collect-plan-branches --out data/br --scenes 4 --predictor runs/exports/step_2000.ts --top 6 --random 2

Then fine-tune on it beside the exploration data, e.g.
  train-maskvit --config maskvit_cpu --data data/sim-push data/plan-branches --init-from maskvit \\
      --out runs/ft-branches --steps 1500          # the two folders are mixed half and half

Scenes use seeds S, S+1, ... (--seed, default 300000): keep them apart from the seeds you evaluate on.
"""


@dataclass(frozen=True)
class BranchSettings:
    top: int = 4  # sequences the predictor ranked best (over all CEM iterations)
    first_top: int = 2  # the best of the first iteration (a second mode, often)
    random: int = 2  # uniformly drawn scored sequences
    max_steps: int | None = None  # planning steps per scene (None: mpc.max_steps)
    stop_on_success: bool = True


class _Scored:
    """Every sequence the planner scores and its cost, batch by batch (``VisualMPCPolicy.on_scored``)."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.costs: list[np.ndarray] = []

    def __call__(self, actions: np.ndarray, costs: np.ndarray) -> None:
        self.batches.append(np.array(actions, dtype=np.float64))
        self.costs.append(np.array(costs, dtype=np.float64))

    def clear(self) -> None:
        self.batches.clear()
        self.costs.clear()


def choose_branches(
    batches: Sequence[np.ndarray],
    costs: Sequence[np.ndarray],
    executed: np.ndarray,
    settings: BranchSettings,
    rng: np.random.Generator,
) -> list[tuple[str, np.ndarray]]:
    """The sequences to play out, each with why it was chosen: ``executed`` first, then the best-ranked
    overall and in the first batch, then random ones; no sequence twice."""
    if len(batches) != len(costs) or any(len(b) != len(c) for b, c in zip(batches, costs, strict=False)):
        raise ValueError("every scored batch needs one cost per sequence")
    chosen: list[tuple[str, np.ndarray]] = []

    def add(reason: str, seq: np.ndarray) -> bool:
        if any(np.allclose(seq, s, atol=1e-9) for _, s in chosen):
            return False
        chosen.append((reason, np.asarray(seq, dtype=np.float64)))
        return True

    add("executed", executed)
    if not batches:
        return chosen
    flat = np.concatenate(batches)
    flat_costs = np.concatenate(costs)
    order = np.argsort(flat_costs, kind="stable")
    taken = 0
    for i in order:
        if taken >= settings.top:
            break
        taken += add("top", flat[i])
    taken = 0
    for i in np.argsort(costs[0], kind="stable"):
        if taken >= settings.first_top:
            break
        taken += add("first-top", batches[0][i])
    taken = 0
    for i in rng.permutation(len(flat)):
        if taken >= settings.random:
            break
        taken += add("random", flat[i])
    return chosen


class _SceneRunner:
    """One process's simulator, task, predictor and planner; runs whole scenes."""

    def __init__(self, cfg: Config, predictor_spec: str) -> None:
        from ..robot.sim import TabletopSim, make_task

        self.cfg = cfg
        self.sim = TabletopSim(cfg.sim, cfg.safety)
        self.task = make_task(cfg.task)
        self.predictor = load_predictor(predictor_spec, cfg)
        self.scored = _Scored()

    def close(self) -> None:
        self.predictor.close()
        self.sim.close()

    def _snapshot(self) -> tuple[Any, ...]:
        """The simulator's frame and state now, as :meth:`EpisodeRecorder.add_observation` takes them."""
        sim = self.sim
        positions = sim.object_positions()
        objects = np.stack([positions[n] for n in sim.object_names]) if sim.object_names else None
        return sim.render(), sim.ee_pose(), sim.time, objects, sim.render_segmentation()

    def _meta(self, seed: int, policy: str, extra: dict[str, Any]) -> ep_io.EpisodeMetadata:
        size = self.sim.image_size
        return ep_io.EpisodeMetadata(
            robot="sim-tabletop",
            camera="sim",
            image_height=size,
            image_width=size,
            control_period_s=self.cfg.sim.control_period_s,
            seed=seed,
            software_version=_software_version(),
            task=self.cfg.task.name,
            policy=policy,
            extra=extra,
        )

    def run_scene(
        self, scene: int, seed: int, out: Path, settings: BranchSettings, predictor_name: str
    ) -> dict[str, Any]:
        sim, cfg = self.sim, self.cfg
        drawn = self.task.sample(sim, seed)
        sim.set_state(drawn.initial_state)
        names = tuple(sim.object_names)
        policy = make_policy(
            self.predictor,
            drawn.goal_image,
            cfg,
            seed,
            current_gripper=float(sim.ee_pose()[-1]),
            predict_best=False,
            on_scored=self.scored,
        )
        rng = np.random.default_rng([seed, 7])
        trajectory = ep_io.EpisodeRecorder(
            self._meta(seed, f"mpc:{predictor_name}", {"kind": "trajectory"}), object_names=names
        )
        trajectory.initial_sim_state = drawn.initial_state
        # The loop's first context repeats the first frame ("standing still"): record that as a hold.
        prev_action = np.zeros(5)
        prev_action[-1] = sim.ee_pose()[-1]
        state = prev_state = sim.get_state()
        now = prev = self._snapshot()
        trajectory.add_observation(*now)
        context_actions: np.ndarray | None = None
        max_steps = settings.max_steps or cfg.mpc.max_steps
        written, success, step = 0, False, 0
        for step in range(max_steps):
            self.scored.clear()
            plan = policy.plan(np.stack([prev[0], now[0]]), context_actions, now[1])
            chosen = choose_branches(
                self.scored.batches, self.scored.costs, plan.result.actions, settings, rng
            )
            for k, (reason, seq) in enumerate(chosen):
                branch = ep_io.EpisodeRecorder(
                    self._meta(
                        seed,
                        f"mpc-branch:{predictor_name}",
                        {"kind": "branch", "reason": reason, "scene_step": step, "rank": k},
                    ),
                    object_names=names,
                )
                branch.initial_sim_state = prev_state  # replaying ``applied`` from it gives the frames
                # the context: the previous frame, the action from it, then the present
                branch.add_observation(*prev)
                branch.add_action(prev_action, prev_action, False, now[2])
                branch.add_observation(*now)
                sim.set_state(state)
                for a in seq:
                    applied = sim.step(a)
                    branch.add_action(a, applied, was_clipped(a, applied), sim.time)
                    branch.add_observation(*self._snapshot())
                index = scene * SCENE_STRIDE + 1 + written
                ep_io.write_episode(out / ep_io.episode_filename(index), branch.to_episode())
                written += 1
            # on-policy: the arm executes the plan's first action from the present state
            sim.set_state(state)
            action = np.asarray(plan.action, dtype=np.float64)
            applied = sim.step(action)
            trajectory.add_action(action, applied, was_clipped(action, applied), sim.time)
            prev, now = now, self._snapshot()
            trajectory.add_observation(*now)
            context_actions = applied[None].astype(np.float32)
            prev_state, prev_action, state = state, applied, sim.get_state()
            success = self.task.success(sim, drawn)
            if success and settings.stop_on_success:
                break
        distance = float(self.task.distance(sim, drawn))
        # written last: its presence marks the scene complete (--resume)
        ep_io.write_episode(out / ep_io.episode_filename(scene * SCENE_STRIDE), trajectory.to_episode())
        return {
            "scene": scene,
            "seed": seed,
            "branches": written,
            "steps": step + 1,
            "success": bool(success),
            "final_distance_m": distance,
        }


def _software_version() -> str:
    from ..robot.collect import _software_version as version

    return version()


_runner: _SceneRunner | None = None


def _init_worker(cfg: Config, predictor_spec: str, threads: int) -> None:
    import torch

    global _runner
    torch.set_num_threads(threads)
    _runner = _SceneRunner(cfg, predictor_spec)


def _run_in_worker(scene: int, seed: int, out: Path, settings: BranchSettings, name: str) -> dict[str, Any]:
    assert _runner is not None
    return _runner.run_scene(scene, seed, out, settings, name)


def complete_scenes(out: Path) -> set[int]:
    """Scenes whose trajectory episode (written last) exists."""
    return {
        ep_io.episode_index(p) // SCENE_STRIDE
        for p in ep_io.episode_files(out)
        if ep_io.episode_index(p) % SCENE_STRIDE == 0
    }


def _remove_incomplete(out: Path, done: set[int]) -> int:
    removed = 0
    for p in ep_io.episode_files(out):
        if ep_io.episode_index(p) // SCENE_STRIDE not in done:
            p.unlink()
            removed += 1
    return removed


def _parser():
    parser = make_parser(
        "collect-plan-branches",
        "Simulation only: run the planner with a learned predictor on seeded tasks and, at every planning "
        "step, restore the simulator's state and play out the sequences the predictor ranked best, the "
        "executed plan and a few random ones. Each becomes a short episode (the planner's two context "
        "frames, then what really follows): fine-tuning data on the model's own planning mistakes. The "
        "planner's trajectory is saved too. Episodes are numbered scene * 1000 + k (k = 0: the trajectory, "
        "written last).",
        EXAMPLES,
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="episode folder")
    parser.add_argument("--scenes", type=int, default=40, help="number of seeded task scenes")
    parser.add_argument("--seed", type=int, default=300000, help="seed of the first scene")
    parser.add_argument("--task", choices=["push", "reach"], help="simulated task (overrides task.name)")
    parser.add_argument(
        "--predictor",
        default=DEFAULT_PREDICTOR,
        metavar="NAME_OR_PATH",
        help=f"the predictor the planner uses ({DEFAULT_PREDICTOR}: the shipped model, or a file)",
    )
    parser.add_argument("--top", type=int, default=4, help="best-ranked sequences played out per step")
    parser.add_argument("--first-top", type=int, default=2, help="best of the first CEM iteration, per step")
    parser.add_argument("--random", type=int, default=2, help="random scored sequences per step")
    parser.add_argument("--max-steps", type=int, help="planning steps per scene (default mpc.max_steps)")
    parser.add_argument("--no-stop-on-success", action="store_true", help="plan on after the task is solved")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes, each with an equal share of the cores"
    )
    parser.add_argument("--resume", action="store_true", help="keep complete scenes in --out, redo the rest")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    for name in ("scenes", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("top", "first_top", "random"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.predictor == "random":
        raise UserError("--predictor random has no planner to branch from; name a predictor")
    cfg = config_from_args(args, [f"task.name={args.task}"] if args.task else [])
    if cfg.mpc.context_frames != 2:
        raise UserError(
            f"branches record two context frames (the previous and the present), but mpc.context_frames "
            f"is {cfg.mpc.context_frames}"
        )
    if not args.verbose:
        logging.getLogger("maskvit_mpc.mpc.loop").setLevel(logging.WARNING)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UserError(f"{out} is not empty: pass --resume to complete it, or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    ep_io.clean_stale_temp_files(out)
    done = complete_scenes(out) if args.resume else set()
    removed = _remove_incomplete(out, done)
    if removed:
        log.info("removed %d episodes of incomplete scenes", removed)
    settings = BranchSettings(
        top=args.top,
        first_top=args.first_top,
        random=args.random,
        max_steps=args.max_steps,
        stop_on_success=not args.no_stop_on_success,
    )
    todo = [s for s in range(args.scenes) if s not in done]
    name = Path(args.predictor).stem if args.predictor != DEFAULT_PREDICTOR else DEFAULT_PREDICTOR
    start = time.perf_counter()
    bar = tqdm(total=args.scenes, initial=args.scenes - len(todo), desc="scenes", unit="scene")
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        bar.update(1)
        wins = sum(r["success"] for r in rows)
        bar.set_postfix(branches=sum(r["branches"] for r in rows), success=f"{wins}/{len(rows)}")

    workers = min(args.workers, max(1, len(todo)))
    try:
        if workers == 1:
            import torch

            torch.set_num_threads(max(1, os.cpu_count() or 1))
            runner = _SceneRunner(cfg, args.predictor)
            try:
                for s in todo:
                    report(runner.run_scene(s, args.seed + s, out, settings, name))
            finally:
                runner.close()
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(cfg, args.predictor, threads)
            ) as pool:
                futures = [pool.submit(_run_in_worker, s, args.seed + s, out, settings, name) for s in todo]
                for f in as_completed(futures):
                    report(f.result())
    finally:
        bar.close()
        manifest = ep_io.rebuild_manifest(
            out, info={"kind": "plan-branches", "predictor": args.predictor, "first_seed": args.seed}
        )
    wins = sum(r["success"] for r in rows)
    print(
        f"{len(rows)} scenes in {time.perf_counter() - start:.0f} s: {sum(r['branches'] for r in rows)} "
        f"branches; the planner solved {wins}/{len(rows)}; {manifest.num_episodes} episodes in {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
