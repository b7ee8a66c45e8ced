"""Benchmark ``collect-finetune-data --sim``: wall time, episodes per second, MB per robot-hour.

    python benchmarks/bench_collect.py --hours 4 --out ~/data/collect4h
    python benchmarks/bench_collect.py --hours 0.05 --out ~/data/collect-small --keep

Runs the real command (sim server, bridge, camera stream) in a subprocess, then reads the folder's
manifest and prints one JSON object: episodes (and the number expected from robot-hours x control
rate / steps per episode), wall time, episodes and frames per second, MB per robot-hour, and the
share of episodes in which an object moved more than 2 cm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from maskvit_mpc.configs import load_config
from maskvit_mpc.robot import episodes as ep_io


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=4.0, help="simulated robot-hours to collect")
    p.add_argument("--out", required=True, help="episode folder (outside the repository); emptied first")
    p.add_argument("--config", default="default")
    p.add_argument("--keep", action="store_true", help="keep the episodes afterwards")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cfg = load_config(args.config)
    cmd = [
        sys.executable,
        "-m",
        "maskvit_mpc.robot.collect",
        "--sim",
        "--hours",
        str(args.hours),
        "--out",
        str(out),
        "--config",
        args.config,
        "--no-progress",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        return proc.returncode
    manifest = ep_io.read_manifest(out)
    period, steps = cfg.sim.control_period_s, cfg.collect.episode_steps
    robot_hours = manifest.robot_time_s / 3600
    result = {
        "robot_hours": round(robot_hours, 4),
        "episodes": manifest.num_episodes,
        "episodes_expected": args.hours * 3600 / period / steps,
        "frames": manifest.num_frames,
        "wall_s": round(wall, 1),
        "episodes_per_s": round(manifest.num_episodes / wall, 2),
        "steps_per_s": round(manifest.num_steps / wall, 1),
        "mb_total": round(manifest.bytes / 1e6, 1),
        "mb_per_robot_hour": round(manifest.bytes / 1e6 / robot_hours, 1),
        "moved_over_2cm_share": manifest.moved_share(0.02),
        "faults": manifest.info.get("faults", {}),
        "image_size": cfg.sim.image_size,
    }
    print(json.dumps(result, indent=1))
    print(proc.stdout.strip())  # the command's own summary
    if not args.keep:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
