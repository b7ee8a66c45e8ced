"""Recorded frames as a camera: an episode file (``.h5``), a video file or a folder of images.

Each ``read`` returns the next frame in order (``camera.replay_fps`` > 0 paces them like a live camera
instead). At the end the camera reports the end clearly, or starts over with ``camera.replay_loop``.
Episode frames keep their recorded capture times; video and image frames are stamped when read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...configs.schema import CameraConfig
from ..camera import Camera, CameraError, CameraTimeout
from ..types import Frame

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


class _Source:
    """Random access to (rgb, recorded capture time or None) by index."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[np.ndarray, float | None]: ...

    def close(self) -> None:
        pass


class _EpisodeSource(_Source):
    def __init__(self, path: Path) -> None:
        from ..episodes import read_episode

        episode = read_episode(path)
        self.frames = episode.frames
        self.times = episode.t_frame

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, index: int) -> tuple[np.ndarray, float | None]:
        return self.frames[index], float(self.times[index])


class _ImageFolderSource(_Source):
    def __init__(self, folder: Path) -> None:
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise CameraError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> tuple[np.ndarray, float | None]:
        return read_image_rgb(self.paths[index]), None


class _VideoSource(_Source):
    """Reads a video sequentially (seeking in compressed video is neither exact nor cheap)."""

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        self._cv2 = cv2
        self._open()
        self._length: int | None = None

    def _open(self) -> None:
        self.capture = self._cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise CameraError(f"OpenCV cannot read the video {self.path}")
        self.position = 0

    def __len__(self) -> int:
        if self._length is None:
            probe = self._cv2.VideoCapture(str(self.path))
            n = 0
            while probe.grab():
                n += 1
            probe.release()
            self._length = n
        return self._length

    def get(self, index: int) -> tuple[np.ndarray, float | None]:
        if index < self.position:
            self.capture.release()
            self._open()
        while self.position < index:
            self.capture.grab()
            self.position += 1
        ok, bgr = self.capture.read()
        if not ok:
            raise IndexError(index)
        self.position += 1
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB), None

    def close(self) -> None:
        self.capture.release()


def read_image_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file; a clear error when it cannot be read."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CameraError(f"cannot read the image {path} (missing, or not an image OpenCV can decode)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _open_source(path: Path) -> _Source:
    if path.is_dir():
        return _ImageFolderSource(path)
    if not path.is_file():
        raise CameraError(f"replay source {path} does not exist (an episode .h5, a video or an image folder)")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _EpisodeSource(path)
    if suffix in VIDEO_SUFFIXES:
        return _VideoSource(path)
    raise CameraError(
        f"cannot replay {path}: give an episode (.h5), a video ({', '.join(VIDEO_SUFFIXES)}) or an image folder"
    )


class ReplayCamera(Camera):
    """Frames of ``config.replay_path`` in order; see the module docstring."""

    def __init__(self, config: CameraConfig, clock: Callable[[], float] = time.time) -> None:
        if not config.replay_path:
            raise CameraError(
                "the replay camera needs camera.replay_path (an episode .h5, a video or a folder)"
            )
        self.config = config
        self.path = Path(config.replay_path).expanduser()
        self._clock = clock
        self._source: _Source | None = None
        self._index = 0
        self._seq = -1
        self._t_start = 0.0
        self.loops = 0

    @property
    def name(self) -> str:
        return f"replay:{self.path.name}"

    @property
    def is_connected(self) -> bool:
        return self._source is not None

    def connect(self) -> None:
        if self._source is None:
            self._source = _open_source(self.path)
            self._index = 0
            self._t_start = time.monotonic()

    def disconnect(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def __len__(self) -> int:
        if self._source is None:
            raise CameraError("connect the replay camera first")
        return len(self._source)

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        if self._source is None:
            raise CameraError("the replay camera is not connected; call connect() (or use a with block)")
        fps = self.config.replay_fps
        if fps > 0:
            due = self._t_start + (self._seq + 1) / fps
            wait = due - time.monotonic()
            if wait > timeout_s:
                time.sleep(timeout_s)
                raise CameraTimeout(f"next replay frame is due in {wait:.2f} s (camera.replay_fps={fps})")
            time.sleep(max(0.0, wait))
        rgb, recorded = self._next()
        self._seq += 1
        frame = Frame(
            rgb=rgb,
            t_capture=recorded if recorded is not None else self._clock(),
            seq=self._seq,
        )
        if after_command_seq is not None:
            frame = dataclasses.replace(frame, last_command_seq=after_command_seq)
        return frame

    def _next(self) -> tuple[np.ndarray, float | None]:
        source = self._source
        try:
            item = source.get(self._index)
        except IndexError:
            item = None
        if item is None:
            if not self.config.replay_loop or self._index == 0:
                raise CameraError(
                    f"replay of {self.path} ended after {self._index} frames; set camera.replay_loop=true to "
                    "start over"
                )
            self._index = 0
            self.loops += 1
            item = source.get(0)
        self._index += 1
        return item
