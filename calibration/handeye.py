"""``calibrate-handeye``: where the camera is relative to the robot, from pairs of arm pose and board image.

eye-to-hand (a fixed camera, the board held by the gripper): the result is the camera's pose in the
robot base frame. eye-in-hand (the camera on the arm, the board fixed on the table): the camera's pose
in the gripper (flange) frame. Both come from OpenCV's ``calibrateHandEye`` with the method chosen.

The residuals measure how constant the pose that should not change really is over the pairs: the board
in the gripper (eye-to-hand) or the board in the base (eye-in-hand), RMS in millimetres and degrees.

Poses file (YAML), one pose per image, the gripper in the robot base frame, as the arm reports it::

    rotation_format: quaternion_xyzw   # or rotvec (radians), or rpy_deg (R = Rz(yaw) Ry(pitch) Rx(roll))
    poses:
      - {position_m: [0.42, -0.05, 0.31], rotation: [0.0, 0.0, 0.0, 1.0]}
      - {position_m: [0.40, 0.02, 0.28], rotation: [0.05, -0.1, 0.02, 0.99], image: view_001.png}

Without ``image`` keys, pose ``i`` belongs to the ``i``-th image of ``--images`` in name order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..configs.cli import cli_entry, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import CameraIntrinsics, HandEyeCalibration
from ..robot.calibration_files import (
    camera_matrix,
    distortion,
    load_intrinsics,
    make_id,
    now_iso,
    save_calibration,
)
from .boards import Board, add_board_arguments, board_spec_from_args
from .intrinsics import read_images

log = logging.getLogger(__name__)

METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}
Setup = Literal["eye_to_hand", "eye_in_hand"]
MIN_PAIRS = 3  # calibrateHandEye's minimum; 10-20 varied pairs give a good result
MIN_ROTATION_DEG = 5.0  # the arm must turn between poses, about at least two different axes


class HandEyeError(UserError):
    """Pairs that cannot determine the camera pose (too few, inconsistent, no rotation)."""


# --- poses ------------------------------------------------------------------------------------------


class _Pose(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position_m: list[float]
    rotation: list[float]
    image: str | None = None


class PosesFile(BaseModel):
    """The poses file described in the module docstring."""

    model_config = ConfigDict(extra="forbid")
    rotation_format: Literal["quaternion_xyzw", "rotvec", "rpy_deg"] = "quaternion_xyzw"
    poses: list[_Pose]


def rotation_matrix(rotation: Sequence[float], fmt: str) -> np.ndarray:
    r = np.asarray(rotation, dtype=np.float64)
    if fmt == "quaternion_xyzw":
        if r.shape != (4,) or not np.isfinite(r).all() or np.linalg.norm(r) < 1e-9:
            raise HandEyeError(f"a quaternion is 4 numbers x, y, z, w (not all zero), got {list(rotation)}")
        x, y, z, w = r / np.linalg.norm(r)
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
    if r.shape != (3,) or not np.isfinite(r).all():
        raise HandEyeError(f"a {fmt} rotation is 3 numbers, got {list(rotation)}")
    if fmt == "rotvec":
        return cv2.Rodrigues(r)[0]
    roll, pitch, yaw = np.deg2rad(r)
    rx = cv2.Rodrigues(np.array([roll, 0.0, 0.0]))[0]
    ry = cv2.Rodrigues(np.array([0.0, pitch, 0.0]))[0]
    rz = cv2.Rodrigues(np.array([0.0, 0.0, yaw]))[0]
    return rz @ ry @ rx


def transform(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = np.asarray(translation, dtype=np.float64).ravel()
    return t


def read_poses(path: str | Path) -> tuple[list[np.ndarray], list[str | None]]:
    """Gripper poses in the base frame (4x4) and their image names (None: by order)."""
    path = Path(path)
    if not path.is_file():
        raise HandEyeError(f"poses file {path} does not exist")
    try:
        data = PosesFile.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise HandEyeError(f"poses file {path} is not valid: {exc}") from None
    poses = []
    for i, pose in enumerate(data.poses):
        if len(pose.position_m) != 3:
            raise HandEyeError(f"{path}: pose {i}: position_m is x, y, z in metres, got {pose.position_m}")
        try:
            poses.append(transform(rotation_matrix(pose.rotation, data.rotation_format), pose.position_m))
        except HandEyeError as exc:
            raise HandEyeError(f"{path}: pose {i}: {exc}") from None
    return poses, [p.image for p in data.poses]


# --- board poses ------------------------------------------------------------------------------------


def board_pose(image: np.ndarray, board: Board, intrinsics: CameraIntrinsics) -> np.ndarray | None:
    """The board's pose in the camera frame (4x4, metres), or None when it is not visible."""
    detection = board.detect(image)
    if detection is None:
        return None
    k, dist = camera_matrix(intrinsics), distortion(intrinsics)
    ok, rvec, tvec = cv2.solvePnP(
        detection.object_points, detection.image_points, k, dist, flags=cv2.SOLVEPNP_IPPE
    )
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(detection.object_points, detection.image_points, k, dist, rvec, tvec)
    return transform(cv2.Rodrigues(rvec)[0], tvec)


# --- the solve ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandEyeSolution:
    transform: np.ndarray  # 4x4: camera in base (eye_to_hand) or camera in gripper (eye_in_hand)
    residual_translation_mm: float
    residual_rotation_deg: float
    per_pair_mm: np.ndarray  # (N,) translation deviation of each pair's constant pose


def _angle_deg(r: np.ndarray) -> float:
    return float(np.rad2deg(np.linalg.norm(cv2.Rodrigues(r)[0])))


def _check_motion(gripper_in_base: Sequence[np.ndarray]) -> None:
    axes, largest = [], 0.0
    first = gripper_in_base[0]
    for pose in gripper_in_base[1:]:
        relative = np.linalg.inv(first)[:3, :3] @ pose[:3, :3]
        rotvec = cv2.Rodrigues(relative)[0].ravel()
        angle = np.rad2deg(np.linalg.norm(rotvec))
        largest = max(largest, angle)
        if angle > 2.0:
            axes.append(rotvec / np.linalg.norm(rotvec))
    if largest < MIN_ROTATION_DEG:
        raise HandEyeError(
            f"the gripper turned at most {largest:.1f} degrees between poses; hand-eye needs rotations of 15-45 "
            "degrees about at least two different axes (translation alone cannot fix the camera's rotation)"
        )
    singular = np.linalg.svd(np.array(axes), compute_uv=False) if len(axes) >= 2 else np.array([1.0, 0.0])
    if singular[1] < 0.15 * singular[0]:
        raise HandEyeError(
            "every rotation between poses is about the same axis; tilt the gripper about a second axis too"
        )


def _spread(poses: Sequence[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """RMS deviation (mm, degrees) of poses that should all be the same, and per-pose mm."""
    translations = np.array([p[:3, 3] for p in poses])
    deviations_mm = 1000.0 * np.linalg.norm(translations - translations.mean(axis=0), axis=1)
    u, _, vt = np.linalg.svd(sum(p[:3, :3] for p in poses))
    mean_rotation = u @ vt
    angles = np.array([_angle_deg(mean_rotation.T @ p[:3, :3]) for p in poses])
    return float(np.sqrt(np.mean(deviations_mm**2))), float(np.sqrt(np.mean(angles**2))), deviations_mm


def solve_hand_eye(
    gripper_in_base: Sequence[np.ndarray],
    board_in_camera: Sequence[np.ndarray],
    setup: Setup,
    method: str = "park",
) -> HandEyeSolution:
    """The camera pose (see :class:`HandEyeSolution`) from matching lists of 4x4 poses."""
    if len(gripper_in_base) != len(board_in_camera):
        raise HandEyeError(
            f"{len(gripper_in_base)} arm poses but {len(board_in_camera)} board poses: one pair per image"
        )
    if len(gripper_in_base) < MIN_PAIRS:
        raise HandEyeError(
            f"{len(gripper_in_base)} usable pairs; hand-eye needs at least {MIN_PAIRS} (10-20 is good)"
        )
    if method not in METHODS:
        raise HandEyeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_motion(gripper_in_base)
    # eye-to-hand is eye-in-hand with the base and gripper swapped: hand OpenCV the inverse arm poses.
    arm = [np.linalg.inv(p) for p in gripper_in_base] if setup == "eye_to_hand" else list(gripper_in_base)
    r_cam, t_cam = cv2.calibrateHandEye(
        [p[:3, :3] for p in arm],
        [p[:3, 3].reshape(3, 1) for p in arm],
        [p[:3, :3] for p in board_in_camera],
        [p[:3, 3].reshape(3, 1) for p in board_in_camera],
        method=METHODS[method],
    )
    u, _, vt = np.linalg.svd(r_cam)  # re-orthonormalise: some methods return a slightly skewed matrix
    camera = transform(u @ vt, t_cam)
    constant = [a @ camera @ b for a, b in zip(arm, board_in_camera, strict=True)]
    mm, deg, per_pair = _spread(constant)
    return HandEyeSolution(camera, mm, deg, per_pair)


def calibrate_from_files(
    images_dir: str | Path,
    poses_path: str | Path,
    intrinsics: CameraIntrinsics,
    board: Board,
    setup: Setup,
    method: str,
) -> tuple[HandEyeCalibration, list[str]]:
    """Pairs from an image folder and a poses file -> the calibration and the images left out."""
    images = read_images(images_dir)
    poses, names = read_poses(poses_path)
    if any(n is not None for n in names):
        if not all(n is not None for n in names):
            raise HandEyeError(f"{poses_path}: give every pose an image, or none (then they pair by order)")
        by_name = dict(images)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise HandEyeError(f"{poses_path} names images not in {images_dir}: {', '.join(missing[:5])}")
        images = [(n, by_name[n]) for n in names]
    elif len(images) != len(poses):
        raise HandEyeError(
            f"{len(images)} images in {images_dir} but {len(poses)} poses in {poses_path}: give one pose per image, "
            "in the images' name order (or name each pose's image)"
        )
    size = (intrinsics.image_width, intrinsics.image_height)
    arm, boards, left_out = [], [], []
    for (name, image), pose in zip(images, poses, strict=True):
        if (image.shape[1], image.shape[0]) != size:
            raise HandEyeError(
                f"{name} is {image.shape[1]}x{image.shape[0]} but the intrinsics {intrinsics.id} are for "
                f"{size[0]}x{size[1]}"
            )
        found = board_pose(image, board, intrinsics)
        if found is None:
            left_out.append(name)
            log.warning("%s: board not found, pair left out", name)
            continue
        arm.append(pose)
        boards.append(found)
    if not arm:
        raise HandEyeError(
            f"the {board.describe()} was found in none of the {len(images)} images; check the board options "
            "(default: the intrinsics' board) and the images"
        )
    solution = solve_hand_eye(arm, boards, setup, method)
    calibration = HandEyeCalibration(
        id=make_id("handeye", setup, solution.transform.round(6).tolist()),
        setup=setup,
        method=method,
        transform=[[float(x) for x in row] for row in solution.transform],
        residual_translation_mm=solution.residual_translation_mm,
        residual_rotation_deg=solution.residual_rotation_deg,
        pairs_used=len(arm),
        intrinsics_id=intrinsics.id,
        created=now_iso(),
    )
    return calibration, left_out


_EXAMPLES = """
  calibrate-handeye --images pairs/ --poses pairs/poses.yaml --intrinsics intrinsics.yaml --setup eye-to-hand
  calibrate-handeye --images pairs/ --poses poses.yaml --intrinsics cam.yaml --setup eye-in-hand --method park
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "calibrate-handeye",
        "Camera pose relative to the robot from pairs of (gripper pose, board image). Record 10-20 pairs "
        "with the arm turned 15-45 degrees about different axes; the poses file format is in this module's "
        "docstring (gripper in the base frame, as the arm reports it).",
        _EXAMPLES,
    )
    parser.add_argument("--images", required=True, metavar="DIR", help="board images, one per pose")
    parser.add_argument("--poses", required=True, metavar="YAML", help="gripper poses in the base frame")
    parser.add_argument("--intrinsics", required=True, metavar="YAML", help="calibrate-camera's output")
    parser.add_argument("--setup", required=True, choices=["eye-to-hand", "eye-in-hand"])
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default="park",
        help="OpenCV calibrateHandEye method; park is robust to noise",
    )
    parser.add_argument("--out", default="handeye.yaml")
    add_board_arguments(parser, required=False)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    intrinsics = load_intrinsics(args.intrinsics)
    board = Board(board_spec_from_args(args, base=intrinsics.board))
    setup: Setup = "eye_to_hand" if args.setup == "eye-to-hand" else "eye_in_hand"
    calibration, left_out = calibrate_from_files(
        args.images, args.poses, intrinsics, board, setup, args.method
    )
    parent = "robot base" if setup == "eye_to_hand" else "gripper"
    save_calibration(args.out, calibration, f"camera pose in the {parent} frame from calibrate-handeye")
    t = np.asarray(calibration.transform)
    print(
        f"{calibration.pairs_used} pairs ({len(left_out)} images without the board); camera in the {parent} frame "
        f"at {np.round(t[:3, 3], 4).tolist()} m; residuals {calibration.residual_translation_mm:.2f} mm, "
        f"{calibration.residual_rotation_deg:.3f} deg RMS\nwritten {args.out} (id {calibration.id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
