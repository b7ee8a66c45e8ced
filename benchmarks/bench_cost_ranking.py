"""Does a learned predictor rank action sequences the way the simulator does? (what limits planning)

For seeded push scenes, draw the action sequences a first CEM iteration draws (the planner's sampling
noise around a motionless plan, plus a few pushes straight at the object), score each with the image
cost twice: on the frames the learned predictor imagines and on the frames the simulator really
renders (the oracle). Reported per predictor: the Spearman rank correlation of the two costs, and the
regret of choosing by the predictor: the true cost of its top-5 sequences against the true top 5,
as a share of the spread between the true best and the median. Like the planner
(``planner.feasible_plans``), the sequences are first limited by the arm's workspace from the scene's
start pose; ``--raw-plans`` scores them as drawn; ``--ensemble`` adds a row that ranks by the mean
of the listed predictors' costs; ``--object-kept`` adds, per predictor, a row that ranks only the plans
whose predicted last frame still shows the pushed object (a diagnostic: it needs the simulator's
segmentation to know the object's colour). A predictor the planner can use ranks
well (correlation near 1, small regret); copy-last ranks every sequence the same.

    python benchmarks/bench_cost_ranking.py --predictors maskvit copy-last --scenes 8
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.costs import ImageCost
from maskvit_mpc.mpc.optimizers import ActionBounds, correlated_noise, finalize_actions, initial_mean
from maskvit_mpc.mpc.predictors import load_predictor
from maskvit_mpc.robot.safety import ActionLimiter
from maskvit_mpc.robot.sim import TabletopSim, gripper_centre, make_task
from report import command_line


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); 0 when either side is constant."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def object_shown(
    frames: np.ndarray, colour: np.ndarray, tolerance: float = 0.2, min_px: int = 3
) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> (N,) bool: at least ``min_px`` pixels within ``tolerance`` (RGB
    distance on a 0-1 scale, as eval-maskvit's object search) of an object's colour."""
    near = np.linalg.norm(frames / 255.0 - colour, axis=-1) < tolerance
    return near.sum(axis=(1, 2)) >= min_px


def judged_choice(
    ranking_cost: np.ndarray, true_cost: np.ndarray, true_dist: np.ndarray
) -> tuple[float, float, float]:
    """How good a choice by ``ranking_cost`` is: its rank correlation with the true cost, the regret of
    its top 5 (their true cost against the true top 5, as a share of the spread between the true best 5
    and the median: 0 = the best, 1 = the median plan) and, the task's own measure, how far from its goal
    the object really ends after them."""
    chosen = np.argsort(ranking_cost, kind="stable")[:5]
    best_true = np.sort(true_cost)[:5].mean()
    spread = max(1e-12, float(np.median(true_cost) - best_true))
    regret = (true_cost[chosen].mean() - best_true) / spread
    return spearman(ranking_cost, true_cost), float(regret), float(true_dist[chosen].mean())


def candidate_plans(cfg, rng: np.random.Generator, n: int, towards: np.ndarray, gripper: float) -> np.ndarray:
    """CEM's first-iteration samples, with a quarter of them aimed along ``towards`` (a unit xy vector)."""
    p = cfg.planner
    mean = initial_mean(p.horizon, p)
    mean[:, 4] = gripper
    std = np.broadcast_to(np.asarray(p.init_std), mean.shape)
    plans = mean + std * correlated_noise(rng, (n, *mean.shape), p.noise_beta)
    k = n // 4
    speeds = rng.uniform(0.01, 0.04, size=(k, 1))
    plans[:k, :, 0] = speeds * towards[0] + 0.005 * rng.standard_normal((k, p.horizon))
    plans[:k, :, 1] = speeds * towards[1] + 0.005 * rng.standard_normal((k, p.horizon))
    plans = plans[rng.permutation(n)]  # so that a predictor with tied costs picks at random
    return finalize_actions(plans, ActionBounds.from_safety(cfg.safety), p.gripper == "discrete").astype(
        np.float32
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictors", nargs="+", default=["maskvit", "copy-last"])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=3000, help="first scene seed")
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--raw-plans", action="store_true", help="do not limit the plans to the workspace")
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="also rank by the mean of the listed predictors' costs (an ensemble of models)",
    )
    ap.add_argument(
        "--object-kept",
        action="store_true",
        help="also rank, per predictor, only among the plans whose predicted last frame shows the pushed object",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("default", args.overrides)
    horizon = cfg.planner.horizon
    sim = TabletopSim(cfg.sim, cfg.safety)
    task = make_task(cfg.task)
    predictors = {name: load_predictor(name, cfg) for name in args.predictors}
    # per scene: rho, regret, object's distance after the top 5, erased grippers, lost objects
    results: dict[str, list[tuple[float, float, float, int | None, int | None]]] = {
        name: [] for name in predictors
    }
    ensemble_name = "mean cost of " + " + ".join(predictors)
    if args.ensemble:
        results[ensemble_name] = []
    kept_names = {name: f"{name}, object kept" for name in predictors} if args.object_kept else {}
    for name in kept_names.values():
        results[name] = []
    best_dist, median_dist, true_lost = [], [], 0
    limiter = None if args.raw_plans else ActionLimiter(cfg.safety)
    rng = np.random.default_rng(0)
    for i in range(args.scenes):
        episode = task.sample(sim, seed=args.seed + i)
        sim.set_state(episode.initial_state)
        now, start_pose = sim.render(), sim.ee_pose()
        # the pushed object's colour, from its pixels now (segmentation labels: 2 + object index)
        label = 2 + sim.object_names.index(episode.info["object"])
        colour = now[sim.render_segmentation() == label].mean(axis=0) / 255.0
        grip = float(start_pose[4])
        obj_to_goal = episode.goal_xy - sim.object_positions()[episode.info["object"]][:2]
        towards = obj_to_goal / max(1e-9, float(np.linalg.norm(obj_to_goal)))
        plans = candidate_plans(cfg, rng, args.samples, towards, grip)
        if limiter is not None:
            plans = limiter.limit_plans(start_pose, plans).astype(np.float32)
        cost = ImageCost(cfg.cost, episode.goal_image, horizon)
        scored = list(cost.frame_indices)
        true_frames, true_dist = [], []
        for seq in plans:
            sim.set_state(episode.initial_state)
            frames = []
            for t, a in enumerate(seq):
                sim.step(a)
                if t in scored:
                    frames.append(sim.render())
            true_frames.append(np.stack(frames))
            true_dist.append(task.distance(sim, episode))
        true_frames = np.stack(true_frames)  # (plans, scored frames, H, W, 3)
        true_cost = cost(true_frames)
        true_lost += int((~object_shown(true_frames[:, -1], colour)).sum())
        true_dist = np.asarray(true_dist)
        best_dist.append(np.sort(true_dist)[:5].mean())
        median_dist.append(float(np.median(true_dist)))
        context = np.repeat(now[None, None], cfg.mpc.context_frames, axis=1).repeat(len(plans), axis=0)
        scene_costs = []
        for name, predictor in predictors.items():
            if predictor.needs_sim_state:
                predictor.set_sim_state(episode.initial_state)
            pose = {"pose": start_pose} if predictor.needs_pose else {}  # the arm's pose before the plans
            predicted = predictor.predict(context, plans, frame_indices=scored, **pose)
            model_cost = cost(predicted)
            scene_costs.append(model_cost)
            # a predicted frame without the gripper: the push goal has none, so it looks cheap
            erased = sum(gripper_centre(frame) is None for frame in predicted[:, -1])
            # rollouts that lost the pushed object
            shown = object_shown(predicted[:, -1], colour)
            results[name].append(
                (*judged_choice(model_cost, true_cost, true_dist), erased, int((~shown).sum()))
            )
            if name in kept_names:  # rollouts that lost the object rank after every one that kept it
                kept_cost = np.where(shown, model_cost, model_cost.max() + 1.0 + model_cost)
                results[kept_names[name]].append(
                    (*judged_choice(kept_cost, true_cost, true_dist), None, None)
                )
        if args.ensemble:  # no frames of its own: the frame counts are not defined for it (None)
            results[ensemble_name].append(
                (*judged_choice(np.mean(scene_costs, axis=0), true_cost, true_dist), None, None)
            )
        print(f"scene {args.seed + i}: " + ", ".join(f"{n} rho {r[-1][0]:.2f} regret {r[-1][1]:.2f}" for n, r in results.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    sim.close()
    for predictor in predictors.values():
        predictor.close()

    print(f"{command_line()}  ")
    print(f"{platform.machine()}, torch {torch.__version__}; {args.scenes} push scenes from seed {args.seed}, "
          f"{args.samples} sequences each (horizon {horizon}, {'as drawn' if args.raw_plans else 'limited to the workspace'}), "
          f"cost {cfg.cost.frames} frame(s), blur {cfg.cost.blur_sigma_px} px\n")  # fmt: skip
    print(
        "| predictor | Spearman rho, true vs predicted cost (mean, min-max) | regret of its top 5 (0 = true top 5, "
        f"1 = median) | predicted last frames without the gripper (of {args.scenes * args.samples}) "
        f"| object's distance to its goal after its top 5, cm (true best 5: {100 * np.mean(best_dist):.2f}, "
        f"median plan: {100 * np.mean(median_dist):.2f}) | predicted last frames without the pushed object "
        f"(true frames: {true_lost}) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        rho = np.array([r[0] for r in rows])
        reg = np.array([r[1] for r in rows])
        dist = 100 * np.mean([r[2] for r in rows])
        erased = "-" if rows[0][3] is None else sum(r[3] for r in rows)
        lost = "-" if rows[0][4] is None else sum(r[4] for r in rows)
        print(
            f"| {name} | {rho.mean():.2f} ({rho.min():.2f} to {rho.max():.2f}) | {reg.mean():.2f} | {erased} "
            f"| {dist:.2f} | {lost} |"
        )


if __name__ == "__main__":
    main()
