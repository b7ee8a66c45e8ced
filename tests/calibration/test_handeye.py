"""calibrate-handeye: synthetic arm and board poses with noise, and rendered board images end to end."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from board_render import Camera
from maskvit_mpc.calibration.handeye import (
    METHODS,
    HandEyeError,
    main,
    rotation_matrix,
    solve_hand_eye,
    transform,
)
from maskvit_mpc.configs.schema import BoardSpec, CameraIntrinsics
from maskvit_mpc.robot.calibration_files import CalibrationFileError, load_hand_eye, save_calibration

SIZE = (320, 240)
K = np.array([[305.0, 0.0, 160.0], [0.0, 305.0, 120.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.1, 0.02, 0.0, 0.0, 0.0])
BOARD = BoardSpec(
    type="charuco", columns=7, rows=5, square_size_m=0.04, marker_size_m=0.03, dictionary="DICT_4X4_50"
)


def _rot(rotvec_deg) -> np.ndarray:
    return cv2.Rodrigues(np.deg2rad(np.asarray(rotvec_deg, float)))[0]


# A fixed camera 0.7 m in front of the robot, looking back at it and down (eye-to-hand ground truth),
# and the board held 10 cm out from the flange.
CAMERA_IN_BASE = transform(_rot([-120.0, 0.0, 0.0]) @ _rot([0.0, 0.0, 180.0]), [0.7, 0.05, 0.45])
BOARD_IN_GRIPPER = transform(_rot([0.0, 180.0, 0.0]), [-0.14, -0.10, 0.10])
# ... and a camera on the flange (eye-in-hand ground truth), the board on the table.
CAMERA_IN_GRIPPER = transform(_rot([0.0, 0.0, 90.0]), [0.05, 0.0, 0.08])
BOARD_IN_BASE = transform(_rot([180.0, 0.0, 0.0]), [0.45, -0.1, 0.0])


def _random_gripper_poses(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    home = _rot([180.0, 0.0, 0.0])  # tool pointing down
    return [
        transform(home @ _rot(rng.uniform(-30, 30, 3)), [0.45, 0.0, 0.35] + rng.uniform(-0.1, 0.1, 3))
        for _ in range(n)
    ]


def _noisy(pose: np.ndarray, rng, mm: float, deg: float) -> np.ndarray:
    return transform(_rot(rng.normal(0, deg, 3)) @ pose[:3, :3], pose[:3, 3] + rng.normal(0, mm / 1000, 3))


def _errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    mm = 1000 * np.linalg.norm(estimate[:3, 3] - truth[:3, 3])
    deg = np.rad2deg(np.linalg.norm(cv2.Rodrigues(estimate[:3, :3].T @ truth[:3, :3])[0]))
    return mm, deg


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("setup", ["eye_to_hand", "eye_in_hand"])
def test_the_camera_pose_is_recovered_from_noisy_pairs(setup, method):
    rng = np.random.default_rng(1)
    grippers = _random_gripper_poses(15, seed=2)
    if setup == "eye_to_hand":  # board on the gripper, seen by the fixed camera
        truth = CAMERA_IN_BASE
        boards = [np.linalg.inv(truth) @ g @ BOARD_IN_GRIPPER for g in grippers]
    else:  # board on the table, seen by the camera on the gripper
        truth = CAMERA_IN_GRIPPER
        boards = [np.linalg.inv(g @ truth) @ BOARD_IN_BASE for g in grippers]
    measured_arm = [_noisy(g, rng, mm=0.2, deg=0.02) for g in grippers]  # arm encoders: very precise
    measured_boards = [_noisy(b, rng, mm=0.5, deg=0.1) for b in boards]  # PnP: less so
    solution = solve_hand_eye(measured_arm, measured_boards, setup, method)
    mm, deg = _errors(solution.transform, truth)
    # Tsai's rotation step is the most sensitive to noise in the eye-to-hand setup (about 1 degree here),
    # which is why park is the default.
    loose = method == "tsai" and setup == "eye_to_hand"
    assert mm < (6.0 if loose else 3.0) and deg < (1.5 if loose else 0.3), (mm, deg)
    assert 0.1 < solution.residual_translation_mm < 5.0 and 0.01 < solution.residual_rotation_deg < 0.5


def test_noise_free_pairs_give_the_exact_pose_and_zero_residuals():
    grippers = _random_gripper_poses(6, seed=3)
    boards = [np.linalg.inv(CAMERA_IN_BASE) @ g @ BOARD_IN_GRIPPER for g in grippers]
    solution = solve_hand_eye(grippers, boards, "eye_to_hand", "park")
    mm, deg = _errors(solution.transform, CAMERA_IN_BASE)
    assert mm < 1e-3 and deg < 1e-4
    assert solution.residual_translation_mm < 1e-3


def test_inconsistent_pose_counts_are_refused():
    grippers = _random_gripper_poses(6, seed=3)
    with pytest.raises(HandEyeError, match="6 arm poses but 5 board poses"):
        solve_hand_eye(grippers, grippers[:5], "eye_to_hand")


def test_motion_that_cannot_determine_the_camera_is_refused():
    base = _random_gripper_poses(1, seed=0)[0]
    shifted = [transform(base[:3, :3], base[:3, 3] + [0.02 * i, 0.0, 0.01 * i]) for i in range(6)]
    with pytest.raises(HandEyeError, match=r"turned at most 0.0 degrees"):
        solve_hand_eye(shifted, shifted, "eye_to_hand")
    one_axis = [transform(base[:3, :3] @ _rot([0, 0, 10.0 * i]), base[:3, 3]) for i in range(6)]
    with pytest.raises(HandEyeError, match="about the same axis"):
        solve_hand_eye(one_axis, one_axis, "eye_to_hand")
    with pytest.raises(HandEyeError, match="at least 3"):
        solve_hand_eye(one_axis[:2], one_axis[:2], "eye_to_hand")


def test_rotation_formats_agree():
    r = _rot([20.0, -35.0, 60.0])
    rotvec = cv2.Rodrigues(r)[0].ravel()
    angle = np.linalg.norm(rotvec)
    quaternion = [*(np.sin(angle / 2) * rotvec / angle), np.cos(angle / 2)]
    pitch = np.arcsin(-r[2, 0])
    rpy = np.rad2deg([np.arctan2(r[2, 1], r[2, 2]), pitch, np.arctan2(r[1, 0], r[0, 0])])
    np.testing.assert_allclose(rotation_matrix(quaternion, "quaternion_xyzw"), r, atol=1e-9)
    np.testing.assert_allclose(rotation_matrix(rotvec, "rotvec"), r, atol=1e-9)
    np.testing.assert_allclose(rotation_matrix(rpy, "rpy_deg"), r, atol=1e-9)
    with pytest.raises(HandEyeError, match="a quaternion is 4 numbers"):
        rotation_matrix([0, 0, 1], "quaternion_xyzw")


# --- end to end: rendered images, poses file, CLI --------------------------------------------------


def _quaternion(r: np.ndarray) -> list[float]:
    rotvec = cv2.Rodrigues(r)[0].ravel()
    angle = np.linalg.norm(rotvec)
    axis = rotvec / angle if angle > 1e-12 else np.zeros(3)
    return [*(np.sin(angle / 2) * axis).tolist(), float(np.cos(angle / 2))]


@pytest.fixture(scope="module")
def recorded_pairs(tmp_path_factory):
    """A fixed camera photographs the board on the gripper at 10 arm poses; poses file + intrinsics."""
    folder = tmp_path_factory.mktemp("pairs")
    camera = Camera(K, DIST, SIZE)
    rng = np.random.default_rng(5)
    board_centre = transform(np.eye(3), [-0.14, -0.10, 0.0])
    poses = []
    for i in range(10):
        # a board pose in view (about 0.45 m ahead, tilted up to ~30 degrees), then the arm pose that gives it
        tilt = _rot(rng.uniform(-30, 30, 3))
        board_in_camera = transform(tilt, [*rng.uniform(-0.04, 0.04, 2), 0.45]) @ board_centre
        gripper = CAMERA_IN_BASE @ board_in_camera @ np.linalg.inv(BOARD_IN_GRIPPER)
        rvec = cv2.Rodrigues(board_in_camera[:3, :3])[0]
        image = camera.photograph(BOARD, rvec, board_in_camera[:3, 3], seed=i)
        cv2.imwrite(str(folder / f"pair_{i:02d}.png"), image)
        poses.append({"position_m": gripper[:3, 3].tolist(), "rotation": _quaternion(gripper[:3, :3])})
    (folder / "poses.yaml").write_text(yaml.safe_dump({"rotation_format": "quaternion_xyzw", "poses": poses}))
    intrinsics = CameraIntrinsics(
        id="intrinsics-test",
        image_width=SIZE[0],
        image_height=SIZE[1],
        camera_matrix=K.tolist(),
        distortion=DIST.tolist(),
        reprojection_error_px=0.1,
        views_used=12,
        board=BOARD,
    )
    save_calibration(folder / "intrinsics.yaml", intrinsics)
    return folder


def test_calibrate_handeye_finds_the_fixed_camera_from_images(recorded_pairs, tmp_path, capsys):
    out = tmp_path / "handeye.yaml"
    args = ["--images", str(recorded_pairs), "--poses", str(recorded_pairs / "poses.yaml")]
    args += [
        "--intrinsics",
        str(recorded_pairs / "intrinsics.yaml"),
        "--setup",
        "eye-to-hand",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "10 pairs (0 images without the board)" in capsys.readouterr().out
    result = load_hand_eye(out)
    mm, deg = _errors(np.array(result.transform), CAMERA_IN_BASE)
    assert mm < 5.0 and deg < 0.5, (mm, deg)
    assert result.setup == "eye_to_hand" and result.method == "park" and result.pairs_used == 10
    assert result.residual_translation_mm < 5.0 and result.intrinsics_id == "intrinsics-test"


def test_more_images_than_poses_are_refused(recorded_pairs, tmp_path, capsys):
    poses = yaml.safe_load((recorded_pairs / "poses.yaml").read_text())
    poses["poses"] = poses["poses"][:9]
    (tmp_path / "poses.yaml").write_text(yaml.safe_dump(poses))
    args = ["--images", str(recorded_pairs), "--poses", str(tmp_path / "poses.yaml")]
    args += ["--intrinsics", str(recorded_pairs / "intrinsics.yaml"), "--setup", "eye-to-hand"]
    assert main(args) == 2
    assert "10 images in" in (err := capsys.readouterr().err) and "but 9 poses" in err


def test_images_without_the_board_are_refused(recorded_pairs, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"wall_{i}.png"), np.full((SIZE[1], SIZE[0]), 128, np.uint8))
    poses = yaml.safe_load((recorded_pairs / "poses.yaml").read_text())
    poses["poses"] = poses["poses"][:4]
    (tmp_path / "poses.yaml").write_text(yaml.safe_dump(poses))
    args = ["--images", str(images), "--poses", str(tmp_path / "poses.yaml")]
    args += ["--intrinsics", str(recorded_pairs / "intrinsics.yaml"), "--setup", "eye-to-hand"]
    assert main(args) == 2
    assert "was found in none of the 4 images" in capsys.readouterr().err


def test_bad_poses_files_are_refused(recorded_pairs, tmp_path, capsys):
    (tmp_path / "poses.yaml").write_text(
        yaml.safe_dump({"poses": [{"position_m": [0, 0], "rotation": [0, 0, 0, 1]}]})
    )
    args = ["--images", str(recorded_pairs), "--poses", str(tmp_path / "poses.yaml")]
    args += ["--intrinsics", str(recorded_pairs / "intrinsics.yaml"), "--setup", "eye-in-hand"]
    assert main(args) == 2
    assert "pose 0: position_m is x, y, z in metres" in capsys.readouterr().err


def test_hand_eye_files_are_validated_when_loaded(tmp_path):
    good = {
        "kind": "hand_eye",
        "id": "h",
        "setup": "eye_to_hand",
        "method": "tsai",
        "transform": np.eye(4).tolist(),
        "residual_translation_mm": 1.0,
        "residual_rotation_deg": 0.1,
        "pairs_used": 10,
    }
    skewed = np.eye(4)
    skewed[0, 1] = 0.3
    for change, message in [
        ({"transform": skewed.tolist()}, "not orthonormal"),
        ({"transform": np.diag([1.0, 1.0, -1.0, 1.0]).tolist()}, "reflection"),
        ({"setup": "eye_on_hand"}, r"setup: Input should be 'eye_to_hand' or 'eye_in_hand'"),
        ({"pairs_used": 2}, "pairs_used: Input should be greater than or equal to 3"),
    ]:
        (tmp_path / "h.yaml").write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(CalibrationFileError, match=message):
            load_hand_eye(tmp_path / "h.yaml")
