"""A USB (UVC) camera, a capture device path, a stream URL or a video file, through OpenCV.

A background thread grabs frames as they come, so the capture buffer never holds stale images and
``read`` gets the newest one (``FrameBuffer`` semantics, as for every driver). Capture time is the host
clock when ``grab`` returned: OpenCV exposes no portable device timestamp. A video file plays at its own
frame rate, like a live camera, and ends with a clear error. After ``camera.reconnect_after_failures``
timeouts in a row the device is closed and opened again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ...configs.schema import CameraConfig
from ..camera import Camera, CameraError, CameraTimeout
from ..types import Frame
from .base import FrameBuffer, timeout_error

log = logging.getLogger(__name__)

_V4L2_MANUAL_EXPOSURE, _V4L2_AUTO_EXPOSURE = 1, 3  # CAP_PROP_AUTO_EXPOSURE values of the V4L2 backend


def _cv2() -> Any:
    import cv2

    return cv2


def parse_source(device: str) -> int | str:
    """``"0"`` -> device index 0; anything else is a path or URL."""
    return int(device) if device.strip().isdigit() else device


class OpenCVCamera(Camera):
    """``config.device``: an index (``0`` is /dev/video0), a device path, a URL or a video file."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.source = parse_source(config.device)
        self.is_file = isinstance(self.source, str) and Path(self.source).is_file()
        self._capture: Any = None
        self._buffer = FrameBuffer()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._seq = -1
        self.failures = 0
        self.reconnects = 0
        self.frame_period_s = 1.0 / config.fps

    @property
    def name(self) -> str:
        return f"opencv:{self.config.device}"

    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _open(self) -> None:
        cv2 = _cv2()
        c = self.config
        local = isinstance(self.source, str) and not self.is_file and "://" not in self.source
        if local and not Path(self.source).exists():
            raise CameraError(
                f"camera {self.source!r} does not exist; give a device index, a /dev/video path, a URL "
                "or a video file (list-cameras shows the devices)"
            )
        capture = cv2.VideoCapture(self.source)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"OpenCV cannot open camera {self.source!r}; is it connected and not used by another program? "
                "(list-cameras)"
            )
        if self.is_file:
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.frame_period_s = 1.0 / fps if fps and fps > 0 else 1.0 / c.fps
        else:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
            capture.set(cv2.CAP_PROP_FPS, c.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if c.exposure is not None:
                capture.set(cv2.CAP_PROP_AUTO_EXPOSURE, _V4L2_MANUAL_EXPOSURE)
                if not capture.set(cv2.CAP_PROP_EXPOSURE, c.exposure):
                    log.warning("camera %s ignored exposure %s", self.source, c.exposure)
            else:
                capture.set(cv2.CAP_PROP_AUTO_EXPOSURE, _V4L2_AUTO_EXPOSURE)
            got = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            if got != (c.width, c.height):
                log.warning(
                    "camera %s delivers %dx%d, not the requested %dx%d", self.source, *got, c.width, c.height
                )
        self._capture = capture

    def _grab(self) -> Frame | None:
        cv2 = _cv2()
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            return None
        t_capture = time.time()
        self._seq += 1
        return Frame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t_capture=t_capture, seq=self._seq)

    def _warm_up(self) -> None:
        deadline = time.monotonic() + self.config.frame_timeout_s * max(1, self.config.warmup_frames)
        wanted = 0 if self.is_file else self.config.warmup_frames  # a file has no exposure to settle
        for i in range(wanted):
            while self._grab() is None:
                if time.monotonic() > deadline:
                    raise CameraTimeout(
                        f"camera {self.source!r} opened but sent {i} of {wanted} warm-up frames; check it "
                        "with list-cameras --probe"
                    )
                time.sleep(0.01)

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            frame = self._grab()
            if frame is None:
                if self.is_file:
                    self._buffer.close(
                        f"video {self.source} ended after {self._seq + 1} frames; use the replay driver to "
                        "loop it (camera.driver=replay, camera.replay_loop=true)"
                    )
                    return
                self._stop.wait(0.005)
                continue
            self._buffer.add(frame)
            if self.is_file:  # play at the file's rate, as the camera did
                next_due += self.frame_period_s
                self._stop.wait(max(0.0, next_due - time.monotonic()))

    def _start_thread(self) -> None:
        self._stop.clear()
        self._buffer = FrameBuffer()
        self._thread = threading.Thread(target=self._run, name="opencv-camera", daemon=True)
        self._thread.start()

    def connect(self) -> None:
        if self.is_connected:
            return
        self._open()
        try:
            self._warm_up()
        except BaseException:
            self._release()
            raise
        self.failures = 0
        self._start_thread()

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        if self._capture is not None:
            with contextlib.suppress(Exception):
                self._capture.release()
            self._capture = None

    def disconnect(self) -> None:
        self._release()

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        if self._capture is None:
            raise CameraError(
                f"camera {self.source!r} is not connected; call connect() (or use a with block)"
            )
        frame = self._buffer.wait(timeout_s, after_command_seq)
        if frame is not None:
            self.failures = 0
            return frame
        self.failures += 1
        error = timeout_error(
            f"camera {self.source!r}",
            timeout_s,
            self.failures,
            self.config.reconnect_after_failures,
            "check the cable and that no other program uses the camera",
        )
        if self.failures >= self.config.reconnect_after_failures and not self.is_file:
            self._reconnect()
        raise error

    def _reconnect(self) -> None:
        log.warning("camera %s silent %d times: reopening it", self.source, self.failures)
        self._release()
        deadline = time.monotonic() + self.config.reconnect_timeout_s
        while True:
            try:
                self._open()
                self._warm_up()
                break
            except CameraError as exc:
                self._release()
                if time.monotonic() >= deadline:
                    raise CameraError(
                        f"camera {self.source!r} did not come back within {self.config.reconnect_timeout_s:.0f} s "
                        f"({exc}); check the cable, then restart"
                    ) from None
                time.sleep(0.5)
        self.failures = 0
        self.reconnects += 1
        self._start_thread()
