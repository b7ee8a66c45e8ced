"""Tiny synthetic episodes for the tokenizer tests: a textured table, a moving gripper and a box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from maskvit_mpc.robot import episodes as E


def synthetic_frames(steps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps + 1, size, size, 3) uint8 frames and (steps + 1, size, size) uint8 segmentation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    table = np.stack([90 + 20 * np.sin(xx / 3.0), 110 + 15 * np.cos(yy / 4.0), 80 + 0 * xx], -1)
    frames = np.zeros((steps + 1, size, size, 3), np.uint8)
    seg = np.zeros((steps + 1, size, size), np.uint8)
    box = rng.integers(2, size - 6, size=2)
    grip = rng.integers(2, size - 6, size=2).astype(float)
    for t in range(steps + 1):
        img = table.copy()
        s = np.zeros((size, size), np.uint8)
        by, bx = box
        img[by : by + 4, bx : bx + 4] = (200, 40, 40)
        s[by : by + 4, bx : bx + 4] = 2
        gy, gx = np.clip(grip.round().astype(int), 0, size - 3)
        img[gy : gy + 3, gx : gx + 3] = (230, 230, 230)
        s[gy : gy + 3, gx : gx + 3] = 1
        frames[t], seg[t] = img.astype(np.uint8), s
        grip += rng.normal(0, 1.0, size=2)
    return frames, seg


def write_episodes(folder: Path, n: int, steps: int = 5, size: int = 16, segmentation: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        frames, seg = synthetic_frames(steps, size, seed=i)
        meta = E.EpisodeMetadata("test", "test", size, size, 0.2, seed=i)
        rec = E.EpisodeRecorder(meta)
        for t in range(steps + 1):
            pose = np.array([0.01 * t, -0.02 * t, 0.05 + 0.01 * i, 0.0, 1.0])  # a known path per episode
            rec.add_observation(frames[t], pose, float(t), segmentation=seg[t] if segmentation else None)
            if t < steps:
                rec.add_action(np.zeros(5), np.zeros(5), False, float(t))
        E.write_episode(folder / E.episode_filename(i), rec.to_episode())
    return folder
