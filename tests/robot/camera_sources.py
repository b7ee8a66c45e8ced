"""Recorded camera images for the camera tests: distinct frames as an episode, a lossless video, images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from maskvit_mpc.robot import episodes as ep_io


def camera_images(count: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) uint8: smooth gradients plus a moving square, so crops and resizes are visible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
        frames[i, ..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
        frames[i, ..., 2] = rng.integers(0, 60, (height, width), dtype=np.uint8)
        x, y = 4 + 3 * i % (width - 12), 6 + 2 * i % (height - 12)
        frames[i, y : y + 8, x : x + 8] = (250, 30 + 10 * i % 200, 20)
    return frames


def write_episode(path: Path, frames: np.ndarray, t0: float = 1000.0) -> Path:
    t, h, w = frames.shape[:3]
    meta = ep_io.EpisodeMetadata(
        robot="test", camera="test", image_height=h, image_width=w, control_period_s=0.2
    )
    recorder = ep_io.EpisodeRecorder(meta)
    for i, frame in enumerate(frames):
        if i:
            recorder.add_action(np.zeros(5), np.zeros(5), False, t0 + 0.2 * i - 0.1)
        recorder.add_observation(frame, np.zeros(5), t0 + 0.2 * i)
    ep_io.write_episode(path, recorder.to_episode())
    return path


def write_video(path: Path, frames: np.ndarray, fps: float = 50.0) -> Path:
    """A lossless video (FFV1 in Matroska/AVI as the suffix says): what is written is what is read."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    assert writer.isOpened(), "OpenCV has no FFV1 encoder"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_images(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder
