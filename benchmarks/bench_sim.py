"""Benchmark the MuJoCo tabletop: physics per control step and rendering per frame, by image size.

    python benchmarks/bench_sim.py
    python benchmarks/bench_sim.py --steps 400 --sizes 64 128 256 --set sim.substeps=40

Draws push episodes (so the gripper is near an object and contacts happen), applies random actions
within the step limits, and times each control step's physics, each RGB render and each segmentation
render separately (median and 90th percentile over ``--steps``), plus restoring a state, and one
oracle-style rollout (restore, ``--horizon`` steps, render the last frame only). Prints a markdown
table and the command that produced it.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import numpy as np
from maskvit_mpc.configs import load_config
from maskvit_mpc.robot.sim import TabletopSim, make_task


def _ms(samples: list[float]) -> str:
    a = np.asarray(samples) * 1e3
    return f"{np.median(a):.2f} / {np.percentile(a, 90):.2f}"


def bench_size(cfg, size: int, steps: int, horizon: int) -> dict[str, str]:
    sim_cfg = cfg.sim.model_copy(update={"image_size": size})
    sim = TabletopSim(sim_cfg, cfg.safety)
    task = make_task(cfg.task.model_copy(update={"name": "push"}))
    rng = np.random.default_rng(0)
    limits = cfg.safety.step_limits
    scale = np.array([limits.dx, limits.dy, limits.dz * 0.2, limits.dyaw, 1.0])
    sim.render()  # start the GL context and compile shaders outside the timed loop
    physics, rgb, seg, restore, rollout = [], [], [], [], []
    episode = task.sample(sim, 0)
    for i in range(steps):
        if i % 15 == 0:
            episode = task.sample(sim, i)
        action = rng.uniform(-1.0, 1.0, 5) * scale
        t0 = time.perf_counter()
        sim.step(action)
        t1 = time.perf_counter()
        sim.render()
        t2 = time.perf_counter()
        sim.render_segmentation()
        t3 = time.perf_counter()
        physics.append(t1 - t0)
        rgb.append(t2 - t1)
        seg.append(t3 - t2)
    for _ in range(max(5, steps // horizon // 2)):
        actions = rng.uniform(-1.0, 1.0, (horizon, 5)) * scale
        t0 = time.perf_counter()
        sim.set_state(episode.initial_state)
        t1 = time.perf_counter()
        for a in actions:
            sim.step(a)
        sim.render()
        t2 = time.perf_counter()
        restore.append(t1 - t0)
        rollout.append(t2 - t0)
    backend = sim.render_backend
    sim.close()
    return {
        "size": f"{size}x{size}",
        "physics": _ms(physics),
        "rgb": _ms(rgb),
        "seg": _ms(seg),
        "step+rgb": f"{np.median(np.add(physics, rgb)) * 1e3:.2f}",
        "restore": _ms(restore),
        "rollout": _ms(rollout),
        "backend": backend,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="timed control steps per image size")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="square image sizes")
    p.add_argument("--horizon", type=int, default=10, help="steps per oracle-style rollout")
    p.add_argument("--config", default="default", help="config preset or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="SECTION.FIELD=VALUE")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    rows = [bench_size(cfg, size, args.steps, args.horizon) for size in args.sizes]
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}; "
        f"control period {cfg.sim.control_period_s} s, {cfg.sim.substeps} substeps "
        f"({cfg.sim.control_period_s / cfg.sim.substeps * 1e3:.1f} ms), shadows {cfg.sim.shadows}, "
        f"{cfg.sim.num_objects} objects"
    )
    print()
    print(
        "| image | physics / control step (ms) | RGB render (ms) | segmentation render (ms) "
        f"| step + RGB, median (ms) | set_state (ms) | rollout: restore + {args.horizon} steps + 1 render (ms) "
        "| backend |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['size']} | {r['physics']} | {r['rgb']} | {r['seg']} | {r['step+rgb']} | {r['restore']} "
            f"| {r['rollout']} | {r['backend']} |"
        )
    print("\ncells: median / 90th percentile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
