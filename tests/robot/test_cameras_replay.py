"""The replay camera (episode, video, image folder), camera selection and ``list-cameras``."""

from __future__ import annotations

import time

import numpy as np
import pytest
from camera_sources import camera_images, write_episode, write_images, write_video
from maskvit_mpc.configs import load_config
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.configs.schema import CameraConfig
from maskvit_mpc.robot.camera import CameraError, CameraTimeout
from maskvit_mpc.robot.cameras import camera_overrides, make_camera
from maskvit_mpc.robot.cameras.factory import format_listing, main
from maskvit_mpc.robot.cameras.opencv import OpenCVCamera
from maskvit_mpc.robot.cameras.replay import ReplayCamera
from maskvit_mpc.robot.preprocess import PreprocessedCamera
from maskvit_mpc.robot.zmq_camera import ZmqCamera

FRAMES = camera_images(6)


@pytest.fixture(params=["episode", "video", "images"])
def source(request, tmp_path):
    if request.param == "episode":
        return write_episode(tmp_path / "episode_000000.h5", FRAMES)
    if request.param == "video":
        return write_video(tmp_path / "clip.mkv", FRAMES)
    return write_images(tmp_path / "views", FRAMES)


def test_every_source_replays_its_frames_in_order(source):
    with ReplayCamera(CameraConfig(driver="replay", replay_path=str(source))) as camera:
        assert len(camera) == len(FRAMES)
        got = [camera.read() for _ in FRAMES]
        with pytest.raises(CameraError, match=r"ended after 6 frames; set camera.replay_loop=true"):
            camera.read()
    np.testing.assert_array_equal(np.stack([f.rgb for f in got]), FRAMES)
    assert [f.seq for f in got] == list(range(len(FRAMES)))


def test_episodes_keep_their_recorded_capture_times(tmp_path):
    path = write_episode(tmp_path / "episode_000000.h5", FRAMES, t0=1000.0)
    with ReplayCamera(CameraConfig(driver="replay", replay_path=str(path))) as camera:
        times = [camera.read().t_capture for _ in FRAMES]
    np.testing.assert_allclose(times, 1000.0 + 0.2 * np.arange(len(FRAMES)))


def test_loop_starts_over_and_command_seqs_are_stamped(tmp_path):
    path = write_images(tmp_path / "views", FRAMES[:3])
    config = CameraConfig(driver="replay", replay_path=str(path), replay_loop=True)
    with ReplayCamera(config) as camera:
        got = [camera.read(after_command_seq=k) for k in range(7)]
        assert camera.loops == 2
    np.testing.assert_array_equal(got[3].rgb, FRAMES[0])
    np.testing.assert_array_equal(got[6].rgb, FRAMES[0])
    assert [f.last_command_seq for f in got] == list(range(7))


def test_replay_fps_paces_frames_like_a_camera(tmp_path):
    path = write_images(tmp_path / "views", FRAMES)
    with ReplayCamera(CameraConfig(driver="replay", replay_path=str(path), replay_fps=20.0)) as camera:
        t0 = time.monotonic()
        for _ in range(4):
            camera.read(timeout_s=1.0)
        assert time.monotonic() - t0 >= 3 / 20.0
    with pytest.raises(CameraTimeout, match="due in"):
        _late_read(path)


def _late_read(path) -> None:
    with ReplayCamera(CameraConfig(driver="replay", replay_path=str(path), replay_fps=1.0)) as camera:
        camera.read(timeout_s=0.01)  # frame 0 is due at once
        camera.read(timeout_s=0.01)  # frame 1 is due in a second: too late


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.h5", "does not exist"), ("notes.txt", "cannot replay"), ("empty", "holds no images")],
)
def test_unusable_sources_are_refused(tmp_path, name, message):
    target = tmp_path / name
    if name == "notes.txt":
        target.write_text("x")
    if name == "empty":
        target.mkdir()
    with pytest.raises(CameraError, match=message):
        ReplayCamera(CameraConfig(driver="replay", replay_path=str(target))).connect()


def test_replay_needs_a_path():
    with pytest.raises(CameraError, match="camera.replay_path"):
        ReplayCamera(CameraConfig(driver="replay"))


def test_camera_spec_shorthands_become_config_fields(tmp_path):
    cfg = load_config("default", camera_overrides("realsense:0123"))
    assert cfg.camera.driver == "realsense" and cfg.camera.serial == "0123"
    assert load_config("default", camera_overrides("opencv:/dev/video2")).camera.device == "/dev/video2"
    assert load_config("default", camera_overrides("opencv:0")).camera.device == "0"
    assert load_config("default", camera_overrides("replay:a b.h5")).camera.replay_path == "a b.h5"
    with pytest.raises(UserError, match="not understood"):
        camera_overrides("webcam")


def test_make_camera_builds_the_configured_driver_with_the_shared_view(tmp_path):
    video = write_video(tmp_path / "clip.mkv", FRAMES)
    cfg = load_config("default", ["camera.driver=opencv", f"camera.device={video}"])
    camera = make_camera(cfg)
    assert isinstance(camera, PreprocessedCamera) and isinstance(camera.camera, OpenCVCamera)
    assert camera.preprocessor.image_size == cfg.data.image_size
    assert isinstance(make_camera(load_config("default"), preprocess=False), ZmqCamera)


def test_list_cameras_runs_and_formats_devices(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "RealSense" in out and "OpenCV / V4L2" in out
    listing = format_listing(
        [
            {
                "serial": "123",
                "name": "Intel RealSense D435",
                "firmware": "5.16",
                "usb": "3.2",
                "color_modes": [(640, 480, 30)],
            }
        ],
        "",
        [{"device": "/dev/video0", "status": "640x480"}],
    )
    assert "123  Intel RealSense D435, firmware 5.16, USB 3.2" in listing
    assert "colour: 640x480@30" in listing and "/dev/video0  640x480" in listing
    assert "unavailable: no SDK" in format_listing([], "no SDK", [])
