"""Which plan does the whole planner choose with a learned predictor, and where does it really push?

The cost-ranking benchmark scores one batch of samples; this one runs the planner itself (every CEM or
MPPI iteration, the feasible-plan limits, the predictor's batches) once from the start of each seeded
push scene, executes the chosen 8-step plan in the simulator, and measures how far from its goal the
pushed object ends. A planning step that chooses well ends close; one that exploits the predictor's
errors (an object that vanishes, a push that looks right and is not) ends where it started or worse.
Each planner variant (``--variant NAME SECTION.FIELD=VALUE ...``) plans every scene ``--repeats``
times with different sampling seeds, so that the spread between repeats shows the planner's own noise.

    python benchmarks/bench_plan_choice.py --predictor maskvit --scenes 12 --repeats 2 \\
        --variant cem --variant mppi planner.optimizer=mppi
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import VisualMPCPolicy
from maskvit_mpc.mpc.predictors import load_predictor
from maskvit_mpc.robot.safety import ActionLimiter
from maskvit_mpc.robot.sim import TabletopSim, make_task
from report import command_line


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/bench_plan_choice.py --predictor maskvit --scenes 12 "
        "--variant cem --variant mppi planner.optimizer=mppi",
    )
    ap.add_argument("--predictor", default="maskvit", help="maskvit, oracle, copy-last or an export file")
    ap.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="NAME [SECTION.FIELD=VALUE ...]",
        help="a planner variant: a name and its config overrides; repeatable (default: the defaults)",
    )
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=5000, help="first scene seed")
    ap.add_argument("--repeats", type=int, default=2, help="plans per scene and variant (sampling seeds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applies to every variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variant or [["default"]]
    cfg = load_config("default", args.overrides)
    sim = TabletopSim(cfg.sim, cfg.safety)
    task = make_task(cfg.task)
    limiter = ActionLimiter(cfg.safety)
    bounds = ActionBounds.from_safety(cfg.safety)
    setups = []
    for name, *sets in variants:
        vcfg = load_config("default", [*args.overrides, *sets])
        setups.append((name, sets, vcfg, load_predictor(args.predictor, vcfg)))
    # per variant: (scene, repeat) -> final distance, plan time
    dist: dict[str, list[list[float]]] = {name: [] for name, *_ in setups}
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    start_dist = []
    for i in range(args.scenes):
        episode = task.sample(sim, seed=args.seed + i)
        sim.set_state(episode.initial_state)
        now, pose = sim.render(), sim.ee_pose()
        start_dist.append(task.distance(sim, episode))
        context = np.repeat(now[None], cfg.mpc.context_frames, axis=0)  # as the loop's first step
        for name, _, vcfg, predictor in setups:
            row = []
            for r in range(args.repeats):
                if predictor.needs_sim_state:
                    predictor.set_sim_state(episode.initial_state)
                policy = VisualMPCPolicy(
                    predictor,
                    episode.goal_image,
                    vcfg.planner,
                    vcfg.cost,
                    bounds,
                    np.random.default_rng(1000 * r + i),
                    predict_best=False,
                    current_gripper=float(pose[4]),
                    limiter=limiter,
                )
                t0 = time.perf_counter()
                step = policy.plan(context, None, pose)
                times[name].append(time.perf_counter() - t0)
                sim.set_state(episode.initial_state)
                for action in limiter.limit_plans(pose, step.result.actions[None])[0]:
                    sim.step(action)
                row.append(task.distance(sim, episode))
            dist[name].append(row)
        print(f"scene {args.seed + i} (start {100 * start_dist[-1]:.1f} cm): "
              + ", ".join(f"{n} {' '.join(f'{100 * d:.1f}' for d in rows[-1])}" for n, rows in dist.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    sim.close()
    for *_, predictor in setups:
        predictor.close()

    threshold = cfg.task.success_threshold_m
    print(f"{command_line()}  ")
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); predictor {args.predictor}; "
          f"{args.scenes} push scenes from seed {args.seed} (object {100 * np.mean(start_dist):.1f} cm from its "
          f"goal at the start), {args.repeats} plans per scene and variant, each executed open loop for its "
          f"{cfg.planner.horizon} steps\n")  # fmt: skip
    print(
        "| variant | overrides | object's distance to its goal after the plan, cm (mean; spread of the "
        f"repeats' means) | plans that end within {100 * threshold:.0f} cm | plans that leave it further "
        "than at the start | s / plan |"
    )
    print("|---|---|---|---|---|---|")
    start = np.asarray(start_dist)[:, None]
    for name, sets, *_ in setups:
        d = np.asarray(dist[name])  # (scenes, repeats)
        per_repeat = d.mean(axis=0)
        n = d.size
        print(
            f"| {name} | {' '.join(sets) or '(defaults)'} | {100 * d.mean():.2f} ({100 * per_repeat.min():.2f} "
            f"to {100 * per_repeat.max():.2f}) | {int((d < threshold).sum())}/{n} | {int((d > start).sum())}/{n} "
            f"| {np.median(times[name]):.2f} |"
        )


if __name__ == "__main__":
    main()
