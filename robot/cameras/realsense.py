"""Intel RealSense colour (and aligned depth) through pyrealsense2, the optional ``realsense`` extra.

The driver streams at sensor level: it opens the colour sensor (and the depth sensor) with the exact
mode asked for and starts them into one ``rs.syncer``, which is what ``rs.pipeline`` does inside. That
path is the same for a USB device and for an ``rs.software_device`` fed by software, so the tests
exercise this code with the real SDK. Frames come from ``syncer.try_wait_for_frames`` with a timeout.

Capture times come from the device: ``global_time`` and ``system_time`` stamps are host time already;
``hardware_clock`` stamps are mapped with :class:`~.base.DeviceClock`. After
``camera.reconnect_after_failures`` timeouts in a row the device is reset (``hardware_reset``), looked
up again by serial number and restarted, with a fresh warm-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...configs.schema import CameraConfig
from ..camera import Camera, CameraError, CameraTimeout
from ..types import Frame
from .base import DepthFrame, DeviceClock, import_sdk

log = logging.getLogger(__name__)

_SETTLE_AFTER_RESET_S = 2.0  # a D400 drops off USB for about this long after hardware_reset


def realsense_sdk() -> Any:
    return import_sdk("pyrealsense2", "realsense", "the RealSense camera driver")


def _info(rs: Any, thing: Any, field: str, default: str = "") -> str:
    key = getattr(rs.camera_info, field)
    with contextlib.suppress(RuntimeError):
        if thing.supports(key):
            return str(thing.get_info(key))
    return default


def describe_device(device: Any) -> dict[str, Any]:
    """Serial, name, firmware, USB type and colour modes of one connected device."""
    rs = realsense_sdk()
    modes = set()
    for sensor in device.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() == rs.stream.color and profile.format() == rs.format.rgb8:
                video = profile.as_video_stream_profile()
                modes.add((video.width(), video.height(), profile.fps()))
    return {
        "serial": _info(rs, device, "serial_number"),
        "name": _info(rs, device, "name", "RealSense"),
        "firmware": _info(rs, device, "firmware_version"),
        "usb": _info(rs, device, "usb_type_descriptor"),
        "color_modes": sorted(modes, reverse=True),
    }


def connected_devices() -> list[Any]:
    rs = realsense_sdk()
    return list(rs.context().query_devices())


class RealSenseCamera(Camera):
    """A RealSense device selected by serial number; see the module docstring.

    ``device_factory`` returns the ``rs.device`` to stream from (default: the connected device with
    ``config.serial``, or the only one). It is called again after a reset, when the device has
    re-enumerated; tests hand in ``rs.software_device`` objects through it.
    """

    def __init__(
        self,
        config: CameraConfig,
        device_factory: Callable[[], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._device_factory = device_factory or self._find_device
        self._sleep = sleep
        self._device: Any = None
        self._sensors: list[Any] = []
        self._syncer: Any = None
        self._align: Any = None
        self._depth_scale = 0.001
        self._clock = DeviceClock()
        self._seq = -1
        self._last_read_seq = -1
        self.failures = 0  # consecutive read timeouts
        self.reconnects = 0
        self.serial = config.serial or ""

    @property
    def name(self) -> str:
        return f"realsense:{self.serial or 'any'}"

    @property
    def is_connected(self) -> bool:
        return self._syncer is not None

    # --- device and streams -----------------------------------------------------------------------

    def _find_device(self) -> Any:
        devices = connected_devices()
        serials = [describe_device(d)["serial"] for d in devices]
        if self.config.serial is None:
            if len(devices) == 1:
                return devices[0]
            if not devices:
                raise CameraError("no RealSense device is connected; check the USB 3 cable (list-cameras)")
            raise CameraError(
                f"{len(devices)} RealSense devices are connected ({', '.join(serials)}); choose one with "
                "camera.serial (--set camera.serial=SERIAL)"
            )
        for device, serial in zip(devices, serials, strict=True):
            if serial == self.config.serial:
                return device
        raise CameraError(
            f"no RealSense device with serial {self.config.serial!r}; connected: {', '.join(serials) or 'none'} "
            "(list-cameras shows them)"
        )

    def _profile(self, stream: Any, fmt: Any, what: str) -> tuple[Any, Any]:
        """The sensor and profile of ``stream`` in ``fmt`` at the configured size and rate."""
        c = self.config
        offered = []
        for sensor in self._device.query_sensors():
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() != stream or profile.format() != fmt:
                    continue
                video = profile.as_video_stream_profile()
                mode = (video.width(), video.height(), profile.fps())
                if mode == (c.width, c.height, c.fps):
                    return sensor, profile
                offered.append(mode)
        modes = ", ".join(f"{w}x{h}@{f}" for w, h, f in sorted(set(offered), reverse=True)) or "none"
        raise CameraError(
            f"RealSense {self.serial} has no {what} mode {c.width}x{c.height}@{c.fps} ({fmt}); "
            f"offered: {modes}. "
            "Set camera.width / camera.height / camera.fps to one of them"
        )

    def _configure_exposure(self, sensor: Any) -> None:
        rs = realsense_sdk()
        exposure = self.config.exposure
        if exposure is None:
            if sensor.supports(rs.option.enable_auto_exposure):
                sensor.set_option(rs.option.enable_auto_exposure, 1)
            return
        if not sensor.supports(rs.option.exposure):
            raise CameraError("this RealSense colour sensor has no exposure control; unset camera.exposure")
        if sensor.supports(rs.option.enable_auto_exposure):
            sensor.set_option(rs.option.enable_auto_exposure, 0)
        span = sensor.get_option_range(rs.option.exposure)
        if not span.min <= exposure <= span.max:
            raise CameraError(
                f"camera.exposure={exposure} is outside the sensor's range [{span.min:g}, {span.max:g}] "
                "(RealSense colour units: 0.1 ms)"
            )
        sensor.set_option(rs.option.exposure, float(exposure))

    def _start(self) -> None:
        rs = realsense_sdk()
        self._device = self._device_factory()
        self.serial = self.config.serial or _info(rs, self._device, "serial_number")
        colour_sensor, colour = self._profile(rs.stream.color, rs.format.rgb8, "colour")
        streams = [(colour_sensor, colour)]
        if self.config.depth:
            depth_sensor, depth = self._profile(rs.stream.depth, rs.format.z16, "depth")
            streams.append((depth_sensor, depth))
            if depth_sensor.supports(rs.option.depth_units):
                self._depth_scale = float(depth_sensor.get_option(rs.option.depth_units))
            self._align = rs.align(rs.stream.color)
        self._configure_exposure(colour_sensor)
        self._syncer = rs.syncer(2 * len(streams))  # small: an old frame is never worth a new one
        opened = []
        try:
            for sensor, profile in streams:
                sensor.open(profile)
                opened.append(sensor)
                sensor.start(self._syncer)
        except RuntimeError as exc:
            for sensor in opened:
                with contextlib.suppress(RuntimeError):
                    sensor.close()
            self._syncer = None
            raise CameraError(
                f"RealSense {self.serial} would not start streaming ({exc}); another program may hold it"
            ) from None
        self._sensors = opened
        self._clock.reset()
        log.info(
            "RealSense %s streaming %dx%d@%d%s, exposure %s",
            self.serial,
            self.config.width,
            self.config.height,
            self.config.fps,
            " + aligned depth" if self.config.depth else "",
            "auto" if self.config.exposure is None else self.config.exposure,
        )

    def _stop(self) -> None:
        for sensor in self._sensors:
            with contextlib.suppress(RuntimeError):
                sensor.stop()
            with contextlib.suppress(RuntimeError):
                sensor.close()
        self._sensors = []
        self._syncer = None

    def _warm_up(self) -> None:
        timeout = self.config.frame_timeout_s
        for i in range(self.config.warmup_frames):
            if self._next(timeout) is None:
                self._stop()
                raise CameraTimeout(
                    f"RealSense {self.serial} sent {i} of {self.config.warmup_frames} warm-up frames, then "
                    f"nothing for {timeout:.1f} s; check the cable (USB 3) and that no other program streams"
                )

    def connect(self) -> None:
        if self.is_connected:
            return
        realsense_sdk()
        self._start()
        self._warm_up()
        self.failures = 0

    def disconnect(self) -> None:
        self._stop()
        self._device = None

    # --- frames -----------------------------------------------------------------------------------

    def _convert(self, frames: Any) -> Frame | None:
        """A Frame from one frameset; None when the set holds no colour frame (depth arrived alone)."""
        rs = realsense_sdk()
        colour = frames.get_color_frame()
        if not colour:
            return None
        arrival = time.time()
        rgb = np.asanyarray(colour.get_data()).copy()
        stamp_s = colour.get_timestamp() / 1000.0
        if colour.get_frame_timestamp_domain() == rs.timestamp_domain.hardware_clock:
            t_capture = self._clock.wall_time(stamp_s, arrival)
        else:  # global_time / system_time: already host milliseconds
            t_capture = stamp_s
        self._seq += 1
        if self._align is None:
            return Frame(rgb=rgb, t_capture=t_capture, seq=self._seq)
        depth_m = None
        if frames.get_depth_frame():
            aligned = self._align.process(frames).get_depth_frame()
            depth_m = np.asanyarray(aligned.get_data()).astype(np.float32) * np.float32(self._depth_scale)
        return DepthFrame(rgb=rgb, t_capture=t_capture, seq=self._seq, depth_m=depth_m)

    def _next(self, timeout_s: float) -> Frame | None:
        """The next frame with colour, waiting at most ``timeout_s``; None on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            ok, frames = self._syncer.try_wait_for_frames(left_ms)
            if ok:
                frame = self._convert(frames)
                if frame is not None:
                    return frame
            if time.monotonic() >= deadline:
                return None

    def _drain(self) -> Frame | None:
        """The newest frame already queued, without waiting."""
        newest = None
        while True:
            frames = self._syncer.poll_for_frames()
            if not frames:
                return newest
            newest = self._convert(frames) or newest

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        if not self.is_connected:
            raise CameraError(
                "the RealSense camera is not connected; call connect() (or use it in a with block)"
            )
        t_call = time.time()
        deadline = time.monotonic() + timeout_s
        frame = self._drain()
        while True:
            if frame is not None:
                fresh = (
                    frame.seq > self._last_read_seq
                    if after_command_seq is None
                    else frame.t_capture >= t_call
                )
                if fresh:
                    break
            frame = self._next(max(0.0, deadline - time.monotonic()))
            if frame is None:
                self._timed_out(timeout_s)
        self.failures = 0
        self._last_read_seq = frame.seq
        if after_command_seq is not None:
            frame = dataclasses.replace(frame, last_command_seq=after_command_seq)
        return frame

    def _timed_out(self, timeout_s: float) -> None:
        self.failures += 1
        message = f"no frame from RealSense {self.serial} within {timeout_s:.2f} s ({self.failures} in a row)"
        if self.failures < self.config.reconnect_after_failures:
            raise CameraTimeout(
                f"{message}; it is reset and reconnected after {self.config.reconnect_after_failures}"
            )
        self._reconnect()
        raise CameraTimeout(f"{message}; the device was reset and reconnected, read again")

    def _reconnect(self) -> None:
        log.warning("RealSense %s silent %d times: hardware reset and reconnect", self.serial, self.failures)
        device = self._device
        self._stop()
        if device is not None:
            try:
                device.hardware_reset()
                self._sleep(_SETTLE_AFTER_RESET_S)
            except RuntimeError as exc:
                log.warning(
                    "hardware reset of RealSense %s failed (%s); reconnecting without it", self.serial, exc
                )
        self._device = None
        deadline = time.monotonic() + self.config.reconnect_timeout_s
        while True:
            try:
                self._start()
                self._warm_up()
                break
            except CameraError as exc:
                self._stop()
                if time.monotonic() >= deadline:
                    raise CameraError(
                        f"RealSense {self.serial} did not come back within {self.config.reconnect_timeout_s:.0f} s "
                        f"after a reset ({exc}); check the cable and power, then restart"
                    ) from None
                self._sleep(0.5)
        self.failures = 0
        self.reconnects += 1
        log.info("RealSense %s reconnected (%d so far)", self.serial, self.reconnects)
