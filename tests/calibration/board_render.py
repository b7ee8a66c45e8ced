"""Photographs of a calibration board taken by a simulated camera with known intrinsics and distortion.

Every output pixel is traced back through the lens model (OpenCV's, inverted iteratively) to a ray,
the ray is intersected with the board plane at the given pose, and the printed board is sampled there;
2 x 2 rays per pixel give anti-aliased edges, as a real sensor integrates light over its pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
from maskvit_mpc.calibration.boards import Board
from maskvit_mpc.configs.schema import BoardSpec

PIXELS_PER_SQUARE = 120
MARGIN_SQUARES = 0.5
SUPERSAMPLE = 2


class Camera:
    """A pinhole camera with OpenCV distortion that photographs boards."""

    def __init__(self, k: np.ndarray, dist: np.ndarray, size: tuple[int, int]) -> None:
        self.k, self.dist, self.size = np.asarray(k, float), np.asarray(dist, float), size
        w, h = size
        offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
        xs = (np.arange(w)[:, None] + offsets[None, :]).ravel()
        ys = (np.arange(h)[:, None] + offsets[None, :]).ravel()
        gx, gy = np.meshgrid(xs, ys)  # (h*S, w*S) sub-pixel positions
        pts = np.stack([gx.ravel(), gy.ravel()], axis=1).reshape(-1, 1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
        rays = cv2.undistortPointsIter(pts, self.k, self.dist, None, None, criteria).reshape(-1, 2)
        self._rays = np.concatenate([rays, np.ones((len(rays), 1))], axis=1).T  # (3, N) normalised rays
        self._shape = gx.shape

    def photograph(
        self, spec: BoardSpec, rvec: np.ndarray, tvec: np.ndarray, noise: float = 2.0, seed: int = 0
    ) -> np.ndarray:
        """(H, W) uint8 grey image of the board whose pose in the camera frame is (rvec, tvec)."""
        printed = Board(spec).image(PIXELS_PER_SQUARE, MARGIN_SQUARES).astype(np.float32)
        r, _ = cv2.Rodrigues(np.asarray(rvec, float))
        plane_to_ray = np.column_stack([r[:, 0], r[:, 1], np.asarray(tvec, float).ravel()])
        board_xy1 = np.linalg.solve(plane_to_ray, self._rays)  # board coordinates along each ray
        in_front = board_xy1[2] > 0
        x_m, y_m = board_xy1[0] / board_xy1[2], board_xy1[1] / board_xy1[2]
        margin_px = MARGIN_SQUARES * PIXELS_PER_SQUARE
        u = (x_m / spec.square_size_m * PIXELS_PER_SQUARE + margin_px - 0.5).astype(np.float32)
        v = (y_m / spec.square_size_m * PIXELS_PER_SQUARE + margin_px - 0.5).astype(np.float32)
        u[~in_front] = v[~in_front] = -1e6
        fine = cv2.remap(
            printed,
            u.reshape(self._shape),
            v.reshape(self._shape),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=110.0,  # a grey table behind the board
        )
        w, h = self.size
        image = fine.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))
        image = 30 + 0.8 * image  # a real print is never pure black and white
        image += np.random.default_rng(seed).normal(0, noise, image.shape)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)


def board_centre(spec: BoardSpec) -> np.ndarray:
    return np.array([spec.columns * spec.square_size_m / 2, spec.rows * spec.square_size_m / 2, 0.0])


def look_at_pose(
    spec: BoardSpec,
    distance: float,
    tilt_x_deg: float,
    tilt_y_deg: float,
    roll_deg: float,
    shift: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A board pose (rvec, tvec) in the camera frame: centred ``distance`` m ahead, tilted and rolled."""
    rx, ry, rz = np.deg2rad([tilt_x_deg, tilt_y_deg, roll_deg])
    r = (
        cv2.Rodrigues(np.array([0.0, 0.0, rz]))[0]
        @ cv2.Rodrigues(np.array([0.0, ry, 0.0]))[0]
        @ cv2.Rodrigues(np.array([rx, 0.0, 0.0]))[0]
    )
    t = np.array([shift[0], shift[1], distance]) - r @ board_centre(spec)
    return cv2.Rodrigues(r)[0].ravel(), t
