"""Do a predictor's rollouts follow the actions? Straight gripper moves, predicted vs simulated.

For seeded push scenes, four straight 8-step moves (+x, -x, +y, -y at 2.5 cm per step) are rolled out in
the simulator and predicted from the scene's first frame. A move counts as followed when the predicted
gripper (its dark grey pixels' centroid) travels the simulator's way by at least a third of the true
distance. Reported per predictor: moves followed, and the mean error of the predicted gripper position
in pixels. Copy-last follows none; the oracle all. Like the planner (``planner.feasible_plans``), each
move is first limited by the arm's workspace from the scene's start pose, so the predictor is asked
about the motion the arm executes; ``--raw-plans`` passes them as drawn.

    python benchmarks/bench_action_following.py --predictors maskvit runs/maskvit/step_0000500.ts --scenes 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.predictors import load_predictor
from maskvit_mpc.robot.safety import ActionLimiter
from maskvit_mpc.robot.sim import TabletopSim, gripper_centre, make_task
from report import command_line

MOVES = [(0.025, 0.0), (-0.025, 0.0), (0.0, 0.025), (0.0, -0.025)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictors", nargs="+", default=["maskvit", "copy-last"])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw-plans", action="store_true", help="do not limit the moves to the workspace")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("default")
    horizon = cfg.planner.horizon
    actions = np.zeros((len(MOVES), horizon, 5), np.float32)
    for i, (dx, dy) in enumerate(MOVES):
        actions[i, :, 0], actions[i, :, 1], actions[i, :, 4] = dx, dy, 1.0
    sim = TabletopSim(cfg.sim, cfg.safety)
    limiter = None if args.raw_plans else ActionLimiter(cfg.safety)
    scenes = []
    for seed in range(args.seed, args.seed + args.scenes):
        episode = make_task(cfg.task).sample(sim, seed=seed)
        sim.set_state(episode.initial_state)
        now, pose = sim.render(), sim.ee_pose()
        moves = actions if limiter is None else limiter.limit_plans(pose, actions).astype(np.float32)
        ends = []
        for seq in moves:
            sim.set_state(episode.initial_state)
            for a in seq:
                sim.step(a)
            ends.append(gripper_centre(sim.render()))
        scenes.append((episode, now, moves, ends, pose))
    sim.close()

    print(f"{command_line()}\n")
    print("| predictor | moves followed | predicted gripper error px (mean) | gripper missing |")
    print("|---|---|---|---|")
    for name in args.predictors:
        followed = cases = missing = 0
        errors = []
        with load_predictor(name, cfg) as predictor:
            for episode, now, moves, ends, pose in scenes:
                if predictor.needs_sim_state:
                    predictor.set_sim_state(episode.initial_state)
                context = np.repeat(now[None, None], cfg.mpc.context_frames, axis=1)
                predicted = predictor.predict(
                    np.repeat(context, len(MOVES), axis=0),
                    moves,
                    frame_indices=[horizon - 1],
                    **({"pose": pose} if predictor.needs_pose else {}),
                )
                start = gripper_centre(now)
                for i, end in enumerate(ends):
                    shift = end - start
                    distance = float(np.linalg.norm(shift))
                    if distance < 3:  # the workspace edge stopped the move
                        continue
                    cases += 1
                    found = gripper_centre(predicted[i, 0])
                    if found is None:
                        missing += 1
                        continue
                    errors.append(float(np.linalg.norm(found - end)))
                    if float((found - start) @ shift) / distance > distance / 3:
                        followed += 1
        error = f"{np.mean(errors):.1f}" if errors else "-"
        print(f"| {name} | {followed}/{cases} | {error} | {missing}/{cases} |", flush=True)


if __name__ == "__main__":
    main()
