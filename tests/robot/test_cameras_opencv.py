"""The OpenCV camera against a video file the test writes (played like a live camera)."""

from __future__ import annotations

import glob
import time

import numpy as np
import pytest
from camera_sources import camera_images, write_video
from maskvit_mpc.configs.schema import CameraConfig
from maskvit_mpc.robot.camera import CameraError
from maskvit_mpc.robot.cameras.opencv import OpenCVCamera, parse_source

FPS = 50.0


@pytest.fixture
def video(tmp_path):
    frames = camera_images(20)
    return write_video(tmp_path / "camera.avi", frames, fps=FPS), frames


def _config(device: str, **fields) -> CameraConfig:
    return CameraConfig(driver="opencv", device=device, **fields)


def _index(frames: np.ndarray, image: np.ndarray) -> int:
    matches = [i for i, f in enumerate(frames) if np.array_equal(f, image)]
    assert matches, "the camera returned an image that is not in the video"
    return matches[0]


def test_frames_come_in_order_at_the_video_rate(video):
    path, frames = video
    with OpenCVCamera(_config(str(path))) as camera:
        t0 = time.monotonic()
        got = [camera.read(timeout_s=1.0) for _ in range(6)]
        elapsed = time.monotonic() - t0
    indices = [_index(frames, f.rgb) for f in got]
    assert indices == sorted(indices) and len(set(indices)) == 6  # newest first-seen frames, never repeated
    assert [f.seq for f in got] == indices  # seq counts the frames the camera captured
    assert elapsed >= 4 / FPS  # paced like a camera, not read as fast as the disk allows
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in got)
    assert all(abs(f.t_capture - time.time()) < 2.0 for f in got)


def test_after_command_seq_returns_a_frame_captured_after_the_call(video):
    path, _ = video
    with OpenCVCamera(_config(str(path))) as camera:
        camera.read(timeout_s=1.0)
        t_call = time.time()
        frame = camera.read(timeout_s=1.0, after_command_seq=12)
    assert frame.t_capture >= t_call and frame.last_command_seq == 12


def test_the_end_of_the_video_is_reported_clearly(video):
    path, frames = video
    with OpenCVCamera(_config(str(path))) as camera:
        time.sleep(len(frames) / FPS + 0.3)
        camera.read(timeout_s=1.0)  # the last frame is still there
        with pytest.raises(CameraError, match=r"ended after 20 frames.*replay_loop"):
            camera.read(timeout_s=1.0)


def test_a_missing_device_is_refused_with_what_to_give(tmp_path):
    with pytest.raises(CameraError, match=r"does not exist; give a device index"):
        OpenCVCamera(_config(str(tmp_path / "video9"))).connect()


def test_a_file_that_is_not_a_video_is_refused(tmp_path):
    bogus = tmp_path / "notes.avi"
    bogus.write_text("not a video")
    with pytest.raises(CameraError, match="OpenCV cannot open camera"):
        OpenCVCamera(_config(str(bogus))).connect()


def test_device_strings_parse_to_indexes_or_paths():
    assert parse_source("0") == 0 and parse_source(" 2") == 2
    assert parse_source("/dev/video2") == "/dev/video2"
    assert parse_source("rtsp://cam/stream") == "rtsp://cam/stream"


def test_reading_before_connecting_is_refused(video):
    path, _ = video
    with pytest.raises(CameraError, match="not connected"):
        OpenCVCamera(_config(str(path))).read()


@pytest.mark.hardware
def test_a_usb_camera_streams():
    if not glob.glob("/dev/video*"):
        pytest.skip("no /dev/video* device")
    with OpenCVCamera(_config("0", warmup_frames=10)) as camera:
        frame = camera.read(timeout_s=2.0)
    assert frame.rgb.ndim == 3 and frame.rgb.shape[2] == 3
