"""Scoring predicted frames against a goal image.

The cost of one action sequence is the (optionally weighted) squared pixel error between each scored
predicted frame and the goal image, summed over the scored frames. Pixels are scaled to [0, 1], so a
64x64 RGB frame costs at most 64 * 64 * 3 = 12288.

Blurring both images first (a Gaussian, sigma in pixels) turns the error into a smooth function of
where an object is: without it the error does not change until the object overlaps its goal, and
pushing the object out of view looks like progress.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import CostConfig


class CostError(UserError):
    """A goal image or a predicted clip the cost cannot score."""


@lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 matrix B with B @ column = the Gaussian-blurred column.

    Rows are renormalised where the kernel runs past the border, so borders keep their brightness.
    """
    idx = np.arange(size, dtype=np.float64)
    weights = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    weights[weights < 1e-6] = 0.0  # truncate far tails: ~5 sigma
    weights /= weights.sum(axis=1, keepdims=True)
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


def gaussian_blur(images: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a batch of images (..., H, W, C) with a separable Gaussian; returns float32 in input units.

    ``sigma_px <= 0`` returns the images as float32 unchanged.
    """
    images = np.asarray(images, dtype=np.float32)
    if sigma_px <= 0:
        return images
    h, w = images.shape[-3], images.shape[-2]
    rows, cols = _blur_matrix(h, float(sigma_px)), _blur_matrix(w, float(sigma_px))
    chw = np.moveaxis(images, -1, -3)  # (..., C, H, W)
    blurred = rows @ chw @ cols.T  # blur along H then along W, batched by matmul broadcasting
    return np.ascontiguousarray(np.moveaxis(blurred, -3, -1))


def frame_weights(cfg: CostConfig, horizon: int) -> np.ndarray:
    """(horizon,) float64 weight of each predicted frame (frame i follows action i)."""
    if cfg.frame_weights is not None:
        if len(cfg.frame_weights) != horizon:
            raise CostError(
                f"cost.frame_weights has {len(cfg.frame_weights)} values but the planner horizon is "
                f"{horizon}; give one weight per predicted frame or leave frame_weights unset"
            )
        return np.asarray(cfg.frame_weights, dtype=np.float64)
    if cfg.frames == "last":
        weights = np.zeros(horizon)
        weights[-1] = 1.0
        return weights
    return np.ones(horizon)


def check_goal_image(goal_image: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """Validate a goal image: (H, W, 3) uint8, and square ``image_size`` when given."""
    goal = np.asarray(goal_image)
    if goal.dtype != np.uint8 or goal.ndim != 3 or goal.shape[-1] != 3:
        raise CostError(
            f"the goal image must be RGB uint8 of shape (H, W, 3), got dtype {goal.dtype} shape {goal.shape}"
        )
    if image_size is not None and goal.shape[:2] != (image_size, image_size):
        raise CostError(
            f"the goal image is {goal.shape[1]}x{goal.shape[0]} but the camera/predictor frames are "
            f"{image_size}x{image_size}"
        )
    return goal


class ImageCost:
    """Weighted, optionally blurred, squared pixel error of predicted frames against one goal image.

    ``frame_indices`` says which predicted frames the cost reads (the others have zero weight); a
    predictor that can skip frames renders only those.
    """

    def __init__(self, cfg: CostConfig, goal_image: np.ndarray, horizon: int) -> None:
        self.cfg = cfg
        self.horizon = horizon
        self.goal_image = check_goal_image(goal_image)
        weights = frame_weights(cfg, horizon)
        self.frame_indices: tuple[int, ...] = tuple(int(i) for i in np.flatnonzero(weights))
        self._weights = weights[list(self.frame_indices)].astype(np.float32)
        self._goal = gaussian_blur(self.goal_image / np.float32(255.0), cfg.blur_sigma_px)  # (H, W, 3)

    def __call__(self, predicted: np.ndarray) -> np.ndarray:
        """Cost per sequence.

        predicted: (B, K, H, W, 3) uint8, either the frames at ``frame_indices`` (K = their number) or
        the whole predicted clip (K = horizon). Returns (B,) float64, lower is better.
        """
        predicted = np.asarray(predicted)
        k = len(self.frame_indices)
        if predicted.ndim != 5 or predicted.shape[-1] != 3 or predicted.shape[1] not in (k, self.horizon):
            raise CostError(
                f"predicted frames must be (B, {k} or {self.horizon}, H, W, 3), got shape {predicted.shape}"
            )
        if predicted.shape[2:4] != self.goal_image.shape[:2]:
            raise CostError(
                f"predicted frames are {predicted.shape[3]}x{predicted.shape[2]} but the goal image is "
                f"{self.goal_image.shape[1]}x{self.goal_image.shape[0]}; resize the goal to the model's view"
            )
        if predicted.shape[1] != k:
            predicted = predicted[:, list(self.frame_indices)]
        frames = gaussian_blur(predicted / np.float32(255.0), self.cfg.blur_sigma_px)  # (B, K, H, W, 3)
        per_frame = ((frames - self._goal) ** 2).sum(axis=(2, 3, 4))  # (B, K)
        return (per_frame @ self._weights).astype(np.float64)
