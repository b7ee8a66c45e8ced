"""A RealSense made of software: ``rs.software_device`` with colour (and depth) sensors, fed by a thread.

The driver under test receives it through its device factory and streams from it with the real SDK:
sensors, stream profiles, options, syncer, frame timestamps and alignment are all pyrealsense2's own.
"""

from __future__ import annotations

import threading
import time

import numpy as np

rs = __import__("pytest").importorskip("pyrealsense2")


def _intrinsics(width: int, height: int) -> rs.intrinsics:
    intr = rs.intrinsics()
    intr.width, intr.height = width, height
    intr.fx = intr.fy = 0.9 * width
    intr.ppx, intr.ppy = width / 2, height / 2
    intr.model = rs.distortion.none
    intr.coeffs = [0.0] * 5
    return intr


class SoftwareRealSense:
    """One software device; ``image(n)`` is the colour image of frame ``n``, depth is 0.5 m everywhere."""

    def __init__(
        self,
        serial: str = "000111222",
        width: int = 64,
        height: int = 48,
        fps: int = 30,
        depth: bool = False,
        domain: rs.timestamp_domain = rs.timestamp_domain.hardware_clock,
    ) -> None:
        self.width, self.height, self.fps, self.domain = width, height, fps, domain
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, "Software RealSense")
        self.colour_sensor = self.device.add_sensor("RGB Camera")
        self.colour_sensor.add_option(rs.option.enable_auto_exposure, rs.option_range(0, 1, 1, 1), True)
        # option_range(min, max, default, step); colour exposure in 0.1 ms like a D435
        self.colour_sensor.add_option(rs.option.exposure, rs.option_range(1, 10000, 156, 1), True)
        self.colour_profile = self._add(self.colour_sensor, rs.stream.color, rs.format.rgb8, 3, uid=1)
        self.depth_sensor = self.depth_profile = None
        if depth:
            self.depth_sensor = self.device.add_sensor("Stereo Module")
            self.depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
            self.depth_profile = self._add(self.depth_sensor, rs.stream.depth, rs.format.z16, 2, uid=2)
            self.depth_profile.register_extrinsics_to(self.colour_profile, _identity())
        self.device.create_matcher(rs.matchers.default)
        self.sent = 0
        self.device_t0_ms = 5_000.0  # the device clock starts anywhere; the driver must map it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _add(self, sensor, stream, fmt, bpp: int, uid: int):
        vs = rs.video_stream()
        vs.type, vs.fmt, vs.index, vs.uid = stream, fmt, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp = self.width, self.height, self.fps, bpp
        vs.intrinsics = _intrinsics(self.width, self.height)
        return sensor.add_video_stream(vs).as_video_stream_profile()

    def image(self, n: int) -> np.ndarray:
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[..., 0] = n % 256
        img[..., 1] = np.arange(self.width, dtype=np.uint8)[None, :]
        img[..., 2] = 200
        return img

    def push(self, n: int) -> None:
        if self.domain == rs.timestamp_domain.hardware_clock:
            stamp_ms = self.device_t0_ms + 1000.0 * n / self.fps
        else:
            stamp_ms = time.time() * 1000.0
        frame = rs.software_video_frame()
        frame.pixels = self.image(n)
        frame.stride, frame.bpp = 3 * self.width, 3
        frame.timestamp, frame.domain, frame.frame_number = stamp_ms, self.domain, n
        frame.profile = self.colour_profile
        self.colour_sensor.on_video_frame(frame)
        if self.depth_sensor is not None:
            depth = rs.software_video_frame()
            depth.pixels = np.full((self.height, self.width), 500, np.uint16)
            depth.stride, depth.bpp = 2 * self.width, 2
            depth.timestamp, depth.domain, depth.frame_number = stamp_ms, self.domain, n
            depth.depth_units = 0.001
            depth.profile = self.depth_profile
            self.depth_sensor.on_video_frame(depth)
        self.sent = n + 1

    def start(self) -> SoftwareRealSense:
        """Push frames at the device's rate from a thread until ``stop``."""
        self._stop.clear()

        def pump() -> None:
            t0 = time.monotonic()
            while not self._stop.is_set():
                self.push(self.sent)
                self._stop.wait(max(0.0, t0 + self.sent / self.fps - time.monotonic()))

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _identity() -> rs.extrinsics:
    ext = rs.extrinsics()
    ext.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    ext.translation = [0.0, 0.0, 0.0]
    return ext
