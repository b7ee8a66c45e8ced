"""From a camera image to the model's view: undistort (optional), crop, resize with area interpolation.

One :class:`Preprocessor` serves every path: collection records what it returns, planning feeds what it
returns to the predictor, and recordings made at full resolution go through :func:`preprocess_frames`
before training. Area interpolation averages every source pixel that falls into an output pixel, so
small objects fade rather than flicker or alias when a 640x480 image shrinks to 64x64.

Undistortion keeps the camera matrix (``newCameraMatrix = K``), so crop boxes are in the same pixel
coordinates before and after it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import CameraConfig, CameraIntrinsics, ViewConfig
from .calibration_files import camera_matrix, distortion, load_intrinsics
from .camera import Camera
from .cameras.base import DepthFrame
from .types import Frame


class ViewError(UserError):
    """The image does not fit the configured view (crop outside it, calibration for another size)."""


class Preprocessor:
    """Camera image (H, W, 3) uint8 -> model view (S, S, 3) uint8, S = ``image_size``."""

    def __init__(self, view: ViewConfig, image_size: int, intrinsics: CameraIntrinsics | None = None) -> None:
        if view.undistort and intrinsics is None:
            raise ViewError(
                "view.undistort needs the camera's intrinsics: run calibrate-camera and set camera.intrinsics_file"
            )
        self.view = view
        self.image_size = int(image_size)
        self.intrinsics = intrinsics
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_config(cls, camera: CameraConfig, default_size: int) -> Preprocessor:
        """The view of ``camera.view``; ``default_size`` (data.image_size) when it names no size."""
        intrinsics = load_intrinsics(camera.intrinsics_file) if camera.intrinsics_file else None
        return cls(camera.view, camera.view.image_size or default_size, intrinsics)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the region kept from a ``height`` x ``width`` image."""
        if self.view.crop is None:
            side = min(height, width)
            return (width - side) // 2, (height - side) // 2, side, side
        x, y, w, h = self.view.crop
        if x + w > width or y + h > height:
            raise ViewError(
                f"view.crop {self.view.crop} (x, y, width, height) reaches outside the {width}x{height} image; "
                "make it fit, or check camera.width / camera.height"
            )
        return x, y, w, h

    def _undistort_maps(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        intr = self.intrinsics
        if (intr.image_width, intr.image_height) != (width, height):
            raise ViewError(
                f"the intrinsics {intr.id} were calibrated at {intr.image_width}x{intr.image_height} but the "
                f"camera gives {width}x{height}; calibrate at this resolution or set camera.width / height"
            )
        if self._maps is None:
            k = camera_matrix(intr)
            self._maps = cv2.initUndistortRectifyMap(
                k, distortion(intr), None, k, (width, height), cv2.CV_32FC1
            )
        return self._maps

    def _geometry(self, image: np.ndarray, interpolation: int) -> np.ndarray:
        """Undistort and crop one (H, W, ...) image."""
        import cv2

        height, width = image.shape[:2]
        if self.view.undistort:
            map_x, map_y = self._undistort_maps(height, width)
            image = cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT)
        x, y, w, h = self.crop_box(height, width)
        return image[y : y + h, x : x + w]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ViewError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        region = self._geometry(rgb, cv2.INTER_LINEAR)
        size = self.image_size
        if region.shape[:2] == (size, size):
            return np.ascontiguousarray(region)
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)

    def depth(self, depth_m: np.ndarray) -> np.ndarray:
        """Depth through the same geometry; nearest-neighbour, so no depth is invented across edges."""
        import cv2

        region = self._geometry(depth_m, cv2.INTER_NEAREST)
        size = self.image_size
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_NEAREST)

    def apply(self, frame: Frame) -> Frame:
        """The frame with its image (and aligned depth, if any) in the model's view; timing unchanged."""
        changes: dict[str, Any] = {"rgb": self(frame.rgb)}
        if isinstance(frame, DepthFrame) and frame.depth_m is not None:
            changes["depth_m"] = self.depth(frame.depth_m)
        return dataclasses.replace(frame, **changes)

    def describe(self) -> dict[str, Any]:
        """What an episode records about its view (JSON-able)."""
        return {
            "crop": self.view.crop,
            "image_size": self.image_size,
            "undistort": self.view.undistort,
            "intrinsics_id": self.intrinsics.id if self.intrinsics is not None else "",
        }


def preprocess_frames(frames: np.ndarray, preprocessor: Preprocessor) -> np.ndarray:
    """(T, H, W, 3) uint8 camera images -> (T, S, S, 3) uint8 model views."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ViewError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    return np.stack([preprocessor(f) for f in frames]) if len(frames) else frames


class PreprocessedCamera(Camera):
    """Any camera, its frames turned into the model's view by ``preprocessor``."""

    def __init__(self, camera: Camera, preprocessor: Preprocessor) -> None:
        self.camera = camera
        self.preprocessor = preprocessor

    @property
    def name(self) -> str:
        return str(getattr(self.camera, "name", type(self.camera).__name__))

    @property
    def is_connected(self) -> bool:
        return self.camera.is_connected

    def connect(self) -> None:
        self.camera.connect()

    def disconnect(self) -> None:
        self.camera.disconnect()

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        return self.preprocessor.apply(self.camera.read(timeout_s, after_command_seq))
