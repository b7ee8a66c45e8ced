"""The RealSense driver on the real pyrealsense2 SDK, fed by ``rs.software_device`` (no hardware needed)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from maskvit_mpc.configs.schema import CameraConfig
from maskvit_mpc.robot.camera import CameraError, CameraTimeout
from maskvit_mpc.robot.cameras.base import DepthFrame, import_sdk
from maskvit_mpc.robot.cameras.realsense import RealSenseCamera, connected_devices, describe_device
from rs_software import SoftwareRealSense, rs


def _config(**fields) -> CameraConfig:
    base = {
        "driver": "realsense",
        "width": 64,
        "height": 48,
        "fps": 30,
        "warmup_frames": 3,
        "frame_timeout_s": 1.0,
        "reconnect_after_failures": 2,
        "reconnect_timeout_s": 5.0,
    }
    return CameraConfig(**{**base, **fields})


@pytest.fixture
def device():
    sw = SoftwareRealSense().start()
    yield sw
    sw.stop()


def test_frames_flow_with_device_timestamps_on_the_host_clock(device):
    with RealSenseCamera(_config(), device_factory=lambda: device.device) as camera:
        assert camera.serial == "000111222"
        frames = [camera.read(timeout_s=1.0) for _ in range(5)]
        now = time.time()
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    for frame in frames:
        assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
        n = int(frame.rgb[0, 0, 0])  # the frame number the device stamped into its image
        np.testing.assert_array_equal(frame.rgb, device.image(n))
        assert frame.last_command_seq == -1
    # hardware_clock stamps start at 5 s of device time; mapped, they are recent host times
    assert all(now - 1.0 < f.t_capture <= now for f in frames)
    gaps = np.diff([f.t_capture for f in frames])
    assert np.all(gaps > 0)


def test_global_time_stamps_are_used_as_they_are():
    sw = SoftwareRealSense(domain=rs.timestamp_domain.global_time).start()
    try:
        with RealSenseCamera(_config(), device_factory=lambda: sw.device) as camera:
            before = time.time()
            frame = camera.read(timeout_s=1.0, after_command_seq=41)
            after = time.time()
    finally:
        sw.stop()
    assert before - 0.001 <= frame.t_capture <= after  # captured after the call: it follows command 41
    assert frame.last_command_seq == 41


def test_read_without_new_frames_waits_for_the_next_one(device):
    with RealSenseCamera(_config(), device_factory=lambda: device.device) as camera:
        first = camera.read(timeout_s=1.0)
        second = camera.read(timeout_s=1.0)
    assert second.seq > first.seq


def test_fixed_exposure_is_set_and_auto_exposure_turned_off(device):
    sensor = device.colour_sensor
    with RealSenseCamera(_config(exposure=200), device_factory=lambda: device.device):
        assert sensor.get_option(rs.option.exposure) == 200
        assert sensor.get_option(rs.option.enable_auto_exposure) == 0
    with RealSenseCamera(_config(), device_factory=lambda: device.device):
        assert sensor.get_option(rs.option.enable_auto_exposure) == 1


def test_exposure_outside_the_sensor_range_is_refused(device):
    camera = RealSenseCamera(_config(exposure=20000), device_factory=lambda: device.device)
    with pytest.raises(CameraError, match=r"outside the sensor's range \[1, 10000\]"):
        camera.connect()


def test_a_mode_the_device_lacks_is_refused_with_the_modes_it_offers(device):
    camera = RealSenseCamera(_config(width=1280, height=720), device_factory=lambda: device.device)
    with pytest.raises(CameraError, match=r"no colour mode 1280x720@30.*offered: 64x48@30"):
        camera.connect()


def test_depth_is_aligned_to_colour_in_metres():
    sw = SoftwareRealSense(depth=True, domain=rs.timestamp_domain.global_time).start()
    try:
        with RealSenseCamera(_config(depth=True), device_factory=lambda: sw.device) as camera:
            deadline = time.monotonic() + 5.0
            frame = camera.read(timeout_s=1.0)
            while getattr(frame, "depth_m", None) is None and time.monotonic() < deadline:
                frame = camera.read(timeout_s=1.0)
    finally:
        sw.stop()
    assert isinstance(frame, DepthFrame) and frame.depth_m is not None
    assert frame.depth_m.shape == frame.rgb.shape[:2] and frame.depth_m.dtype == np.float32
    # 500 raw units of 1 mm; alignment leaves 0 (no depth) only where a border pixel has no source
    valid = frame.depth_m > 0
    assert np.allclose(frame.depth_m[valid], 0.5, atol=1e-3) and valid.mean() > 0.9


def test_a_silent_device_times_out_with_a_clear_error(device):
    with RealSenseCamera(_config(reconnect_after_failures=5), device_factory=lambda: device.device) as camera:
        camera.read(timeout_s=1.0)
        device.stop()
        t0 = time.monotonic()
        with pytest.raises(
            CameraTimeout, match=r"no frame from RealSense 000111222 within 0.20 s \(1 in a row\)"
        ):
            camera.read(timeout_s=0.2)
        assert time.monotonic() - t0 < 1.0
        assert camera.failures == 1


def test_repeated_timeouts_reset_and_reconnect_to_the_re_enumerated_device():
    first = SoftwareRealSense().start()
    second = SoftwareRealSense()  # the same camera as it comes back after its reset
    handed_out = []

    def factory():
        device = first if not handed_out else second.start()
        handed_out.append(device)
        return device.device

    camera = RealSenseCamera(
        _config(reconnect_after_failures=2), device_factory=factory, sleep=lambda s: None
    )
    try:
        camera.connect()
        camera.read(timeout_s=1.0)
        first.stop()
        with pytest.raises(CameraTimeout, match=r"1 in a row"):
            camera.read(timeout_s=0.2)
        with pytest.raises(CameraTimeout, match=r"reset and reconnected"):
            camera.read(timeout_s=0.2)
        assert camera.reconnects == 1 and len(handed_out) == 2
        frame = camera.read(timeout_s=1.0)  # streams again, from the new device
        n = int(frame.rgb[0, 0, 0])
        np.testing.assert_array_equal(frame.rgb, second.image(n))
        assert camera.failures == 0
    finally:
        camera.disconnect()
        first.stop()
        second.stop()


def test_a_device_that_never_comes_back_ends_in_a_camera_error():
    sw = SoftwareRealSense().start()
    camera = RealSenseCamera(
        _config(reconnect_after_failures=1, reconnect_timeout_s=0.3, frame_timeout_s=0.1),
        device_factory=lambda: sw.device,
        sleep=lambda s: None,
    )
    try:
        camera.connect()
        sw.stop()
        with pytest.raises(CameraError, match="did not come back within"):
            camera.read(timeout_s=0.1)
    finally:
        camera.disconnect()


def test_warm_up_without_frames_fails_clearly():
    sw = SoftwareRealSense()  # never sends
    camera = RealSenseCamera(_config(frame_timeout_s=0.2), device_factory=lambda: sw.device)
    with pytest.raises(CameraTimeout, match=r"sent 0 of 3 warm-up frames"):
        camera.connect()
    assert not camera.is_connected


def test_reading_before_connecting_is_refused(device):
    with pytest.raises(CameraError, match="not connected"):
        RealSenseCamera(_config(), device_factory=lambda: device.device).read()


def test_describe_device_reports_serial_and_colour_modes(device):
    info = describe_device(device.device)
    assert info["serial"] == "000111222" and info["name"] == "Software RealSense"
    assert info["color_modes"] == [(64, 48, 30)]


def test_a_missing_sdk_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    with pytest.raises(CameraError, match=r"pip install 'maskvit-mpc\[realsense\]'"):
        import_sdk("pyrealsense2", "realsense", "the RealSense camera driver")


@pytest.mark.hardware
def test_a_connected_realsense_streams():
    if not connected_devices():
        pytest.skip("no RealSense connected")
    with RealSenseCamera(CameraConfig(driver="realsense", warmup_frames=15)) as camera:
        frame = camera.read(timeout_s=2.0)
    assert frame.rgb.shape == (480, 640, 3)
    assert abs(frame.t_capture - time.time()) < 1.0
