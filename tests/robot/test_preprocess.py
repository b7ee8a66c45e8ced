"""The one preprocessing step from camera image to model view, and that every path applies it alike."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from camera_sources import camera_images, write_episode, write_images, write_video
from maskvit_mpc.configs import load_config
from maskvit_mpc.configs.schema import BoardSpec, CameraIntrinsics, ViewConfig
from maskvit_mpc.robot.calibration_files import save_calibration
from maskvit_mpc.robot.cameras import make_camera
from maskvit_mpc.robot.cameras.base import DepthFrame
from maskvit_mpc.robot.preprocess import Preprocessor, ViewError, preprocess_frames
from maskvit_mpc.robot.types import Frame

H, W = 48, 64
K = [[60.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]]
DIST = [-0.25, 0.08, 0.001, -0.001, 0.0]


def _intrinsics(width: int = W, height: int = H) -> CameraIntrinsics:
    return CameraIntrinsics(
        id="intr-test",
        image_width=width,
        image_height=height,
        camera_matrix=K,
        distortion=DIST,
        reprojection_error_px=0.1,
        views_used=10,
        board=BoardSpec(),
    )


def test_default_view_is_the_centred_square_area_averaged():
    image = camera_images(1)[0]
    view = Preprocessor(ViewConfig(), image_size=16)(image)
    assert view.shape == (16, 16, 3) and view.dtype == np.uint8
    square = image[:, 8:56].astype(np.float64)  # 48x48 centred in 64 columns
    blocks = square.reshape(16, 3, 16, 3, 3).mean(axis=(1, 3))  # 3x3 pixels per output pixel
    assert np.abs(view - blocks).max() <= 1.0


def test_an_explicit_crop_is_kept_and_resized():
    image = camera_images(1)[0]
    view = Preprocessor(ViewConfig(crop=[10, 4, 32, 32]), image_size=32)(image)
    np.testing.assert_array_equal(view, image[4:36, 10:42])  # already the right size: exact


def test_a_crop_outside_the_image_is_refused():
    with pytest.raises(ViewError, match=r"reaches outside the 64x48 image"):
        Preprocessor(ViewConfig(crop=[40, 0, 32, 32]), image_size=16)(camera_images(1)[0])


def test_bad_crop_boxes_are_refused_by_the_config():
    with pytest.raises(Exception, match=r"crop is \[x, y, width, height\]"):
        load_config("default", ["camera.view.crop=[0, 0, 10]"])


def test_undistortion_moves_a_point_back_to_where_the_pinhole_model_puts_it():
    k, dist = np.array(K), np.array(DIST)
    ideal = np.array([6.0, 5.0])  # near a corner, where distortion is largest
    ray = cv2.undistortPoints(ideal.reshape(1, 1, 2), k, np.zeros(5)).reshape(2)
    seen, _ = cv2.projectPoints(np.array([[ray[0], ray[1], 1.0]]), np.zeros(3), np.zeros(3), k, dist)
    seen = seen.reshape(2)
    assert np.linalg.norm(seen - ideal) > 1.5  # the lens visibly moves it
    image = np.zeros((H, W, 3), np.uint8)  # a small bright disc where the camera sees the point
    centre_q4 = (int(round(seen[0] * 16)), int(round(seen[1] * 16)))
    cv2.circle(image, centre_q4, 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    view = ViewConfig(crop=[0, 0, H, H], undistort=True)  # a square crop: resized to itself, no change
    out = Preprocessor(view, image_size=H, intrinsics=_intrinsics())(image)
    weights = out[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:H, 0:H]
    centre = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
    assert np.linalg.norm(centre - ideal) < 0.5


def test_undistortion_needs_intrinsics_of_the_same_resolution():
    view = ViewConfig(undistort=True)
    with pytest.raises(ViewError, match="camera.intrinsics_file"):
        Preprocessor(view, image_size=16)
    with pytest.raises(ViewError, match=r"calibrated at 128x96 but the camera gives 64x48"):
        Preprocessor(view, image_size=16, intrinsics=_intrinsics(128, 96))(camera_images(1)[0])


def test_depth_follows_the_same_geometry_without_inventing_values():
    depth = np.where(np.arange(W)[None, :] < 32, 0.5, 1.5).astype(np.float32).repeat(H, axis=0)
    frame = DepthFrame(rgb=camera_images(1)[0], t_capture=1.0, seq=3, depth_m=depth)
    out = Preprocessor(ViewConfig(), image_size=16).apply(frame)
    assert out.rgb.shape == (16, 16, 3) and out.depth_m.shape == (16, 16)
    assert set(np.unique(out.depth_m)) == {0.5, 1.5}
    assert (out.t_capture, out.seq) == (1.0, 3)


def test_wrong_images_are_refused():
    with pytest.raises(ViewError, match=r"\(H, W, 3\) uint8"):
        Preprocessor(ViewConfig(), image_size=16)(np.zeros((8, 8), np.float32))


# --- the same result on every path -------------------------------------------------------------------


def _software_realsense(frames: np.ndarray):
    from rs_software import SoftwareRealSense, rs

    sw = SoftwareRealSense(domain=rs.timestamp_domain.global_time)
    sw.image = lambda n: frames[n % len(frames)]
    return sw.start()


def test_every_path_gives_the_same_model_view(tmp_path):
    """Direct call, offline preprocessing of a raw recording, and the replay, OpenCV and RealSense cameras."""
    frames = camera_images(8)
    intrinsics_file = save_calibration(tmp_path / "intrinsics.yaml", _intrinsics())
    view = ["camera.view.crop=[6, 2, 54, 44]", "camera.view.undistort=true", "camera.view.image_size=20"]
    base = [f"camera.intrinsics_file={intrinsics_file}", *view]
    preprocessor = Preprocessor.from_config(load_config("default", base).camera, 64)
    expected = np.stack([preprocessor(f) for f in frames])
    assert expected.shape == (8, 20, 20, 3)
    np.testing.assert_array_equal(
        preprocess_frames(frames, preprocessor), expected
    )  # training on raw episodes

    def frames_from(overrides: list[str], count: int, **kwargs) -> list[Frame]:
        cfg = load_config("default", base + overrides)
        with make_camera(cfg, **kwargs) as camera:
            return [camera.read(timeout_s=2.0) for _ in range(count)]

    episode = write_episode(tmp_path / "episode_000000.h5", frames)
    replayed = frames_from(["camera.driver=replay", f"camera.replay_path={episode}"], 8)
    np.testing.assert_array_equal(np.stack([f.rgb for f in replayed]), expected)

    images = write_images(tmp_path / "images", frames)
    from_images = frames_from(["camera.driver=replay", f"camera.replay_path={images}"], 8)
    np.testing.assert_array_equal(np.stack([f.rgb for f in from_images]), expected)

    video = write_video(tmp_path / "camera.mkv", frames, fps=100.0)
    for frame in frames_from(["camera.driver=opencv", f"camera.device={video}"], 3):
        assert any(np.array_equal(frame.rgb, e) for e in expected)

    sw = _software_realsense(frames)
    try:
        settings = [
            "camera.driver=realsense",
            "camera.width=64",
            "camera.height=48",
            "camera.warmup_frames=2",
        ]
        live = frames_from(settings, 3, device_factory=lambda: sw.device)
    finally:
        sw.stop()
    for frame in live:
        assert any(np.array_equal(frame.rgb, e) for e in expected)
    assert abs(live[-1].t_capture - time.time()) < 2.0
