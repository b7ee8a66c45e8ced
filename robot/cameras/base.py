"""Pieces the local camera drivers share: the depth-carrying frame, device clocks, lazy SDK imports and
the frame buffer that gives every driver the same ``read`` semantics as the simulated camera.

``read()`` returns the newest frame not returned before (waiting for one if needed);
``read(after_command_seq=k)`` returns the first frame *captured* after the call, stamped
``last_command_seq = k``: the caller applied arm command ``k`` before asking, so that frame shows its
consequence. A camera cannot see arm commands; capture time is what ties the two together.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import threading
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..camera import CameraError, CameraTimeout
from ..types import Frame


@dataclass(frozen=True)
class DepthFrame(Frame):
    """A colour frame with depth aligned to it pixel for pixel (RealSense with ``camera.depth``)."""

    depth_m: np.ndarray | None = None  # (H, W) float32 metres; 0 where the sensor has no depth


def import_sdk(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional hardware SDK, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CameraError(
            f"{what} needs the Python package {module!r} ({exc}); install it with "
            f"`pip install 'maskvit-mpc[{extra}]'`"
        ) from None


class DeviceClock:
    """Maps a device's own clock (seconds) onto this host's wall clock.

    The offset is the smallest ``arrival - device_time`` seen: the frame that reached the host fastest.
    Capture times are then never later than arrival and lag true capture by the minimum transfer
    delay only. ``reset`` after a reconnect: a device clock restarts with the device.
    """

    def __init__(self) -> None:
        self.offset: float | None = None

    def wall_time(self, device_s: float, arrival_s: float) -> float:
        delay = arrival_s - device_s
        if self.offset is None or delay < self.offset:
            self.offset = delay
        return device_s + self.offset

    def reset(self) -> None:
        self.offset = None


class FrameBuffer:
    """The newest frames of a capture thread, and the two ways ``Camera.read`` picks one."""

    def __init__(self, history: int = 8) -> None:
        self._frames: collections.deque[Frame] = collections.deque(maxlen=history)
        self._cond = threading.Condition()
        self._last_read_seq = -1
        self._closed_reason: str | None = None

    def add(self, frame: Frame) -> None:
        with self._cond:
            self._frames.append(frame)
            self._cond.notify_all()

    def close(self, reason: str) -> None:
        """No more frames will come (a video ended, the thread died): wake readers with ``reason``."""
        with self._cond:
            self._closed_reason = reason
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed_reason = None

    def wait(self, timeout_s: float, after_command_seq: int | None) -> Frame | None:
        """The frame ``read`` should return, or None after ``timeout_s``; raises when closed."""
        t_call = time.time()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                frame = self._pick(after_command_seq, t_call)
                if frame is not None:
                    self._last_read_seq = frame.seq
                    if after_command_seq is not None:
                        frame = dataclasses.replace(frame, last_command_seq=after_command_seq)
                    return frame
                if self._closed_reason is not None:
                    raise CameraError(self._closed_reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _pick(self, after_command_seq: int | None, t_call: float) -> Frame | None:
        if after_command_seq is None:
            newest = self._frames[-1] if self._frames else None
            return newest if newest is not None and newest.seq > self._last_read_seq else None
        return next((f for f in self._frames if f.t_capture >= t_call), None)


def timeout_error(name: str, timeout_s: float, failures: int, limit: int, hint: str) -> CameraTimeout:
    return CameraTimeout(
        f"no frame from {name} within {timeout_s:.2f} s ({failures} in a row; a reconnect follows "
        f"{limit}); {hint}"
    )
