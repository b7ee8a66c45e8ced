"""How often does the gripper pass near an object without moving it, and at what height? (recorded data)

For every recorded step whose gripper starts within --radius of an object's centre (in the table plane),
count whether the object moved during the step, and report the gripper heights of both groups. A model
that sees only images and relative actions must infer the height from the picture to know whether the
gripper will push or pass over; this measures how often that matters in the training data.

    python benchmarks/push_contact_heights.py --data data/sim-push --every 6
"""

from __future__ import annotations

import argparse

import numpy as np
from maskvit_mpc.models.data import recorded_episodes
from report import command_line, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="episode folder (collect-finetune-data --out)")
    ap.add_argument("--every", type=int, default=1, help="use every k-th episode")
    ap.add_argument(
        "--radius", type=float, default=0.03, help="gripper-object distance that counts as near (m)"
    )
    ap.add_argument("--moved", type=float, default=0.002, help="object motion in one step that counts (m)")
    args = ap.parse_args()
    heights: dict[bool, list[float]] = {True: [], False: []}
    episodes = recorded_episodes(args.data)[:: args.every]
    for episode in episodes:
        objects = episode.object_positions()
        if objects is None:
            raise SystemExit(f"{episode.path}: no recorded object positions (simulated episodes have them)")
        pose = episode.poses(0, episode.num_frames, 1)
        near = np.linalg.norm(objects[:-1, :, :2] - pose[:-1, None, :2], axis=-1) < args.radius
        moved = np.linalg.norm(objects[1:, :, :2] - objects[:-1, :, :2], axis=-1) > args.moved
        for t, k in zip(*np.nonzero(near), strict=True):
            heights[bool(moved[t, k])].append(float(pose[t, 2]))
    total = sum(len(v) for v in heights.values())
    print(f"{command_line()}  ")
    print(
        f"{len(episodes)} episodes; {total} steps with the gripper within {args.radius * 100:.0f} cm of an object\n"
    )
    rows = []
    for moved, label in ((True, "object moved"), (False, "object stayed")):
        z = np.array(heights[moved]) * 100
        pct = np.percentile(z, [10, 50, 90]) if len(z) else [np.nan] * 3
        rows.append(
            {
                "step": label,
                "count": f"{len(z)} ({100 * len(z) / max(total, 1):.0f}%)",
                "gripper height cm, p10": f"{pct[0]:.1f}",
                "median": f"{pct[1]:.1f}",
                "p90": f"{pct[2]:.1f}",
            }
        )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
