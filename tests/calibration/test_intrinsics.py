"""calibrate-camera on boards photographed by a simulated camera with known intrinsics and distortion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from board_render import Camera, look_at_pose
from maskvit_mpc.calibration.boards import Board, BoardError
from maskvit_mpc.calibration.intrinsics import main
from maskvit_mpc.configs.schema import BoardSpec
from maskvit_mpc.robot.calibration_files import CalibrationFileError, load_intrinsics

SIZE = (320, 240)
K = np.array([[305.0, 0.0, 163.0], [0.0, 302.0, 118.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.28, 0.09, 0.001, -0.0008, 0.0])
CHECKER = BoardSpec(type="checkerboard", columns=9, rows=6, square_size_m=0.03)
CHARUCO = BoardSpec(
    type="charuco", columns=7, rows=5, square_size_m=0.04, marker_size_m=0.03, dictionary="DICT_4X4_50"
)
# distance (m), tilt about x and y, roll (degrees), shift (m): varied views that reach the image corners
POSES = [
    (0.45, 0, 0, 0, (0.0, 0.0)),
    (0.40, 35, 0, 5, (0.05, 0.0)),
    (0.40, -35, 0, -5, (-0.05, 0.02)),
    (0.45, 0, 35, 10, (0.0, 0.04)),
    (0.45, 0, -35, -10, (0.03, -0.04)),
    (0.50, 28, 28, 30, (0.06, 0.05)),
    (0.50, -28, 28, -30, (-0.06, 0.05)),
    (0.50, 28, -28, 15, (0.07, -0.06)),
    (0.50, -28, -28, -15, (-0.07, -0.06)),
    (0.38, 14, -14, 45, (0.0, 0.0)),
    (0.54, 42, 14, 0, (-0.1, 0.0)),
    (0.54, -42, -14, 0, (0.1, 0.0)),
]


@pytest.fixture(scope="module")
def camera() -> Camera:
    return Camera(K, DIST, SIZE)


def _photograph(camera: Camera, spec: BoardSpec, folder, poses=POSES):
    folder.mkdir()
    for i, (d, tx, ty, roll, shift) in enumerate(poses):
        rvec, tvec = look_at_pose(spec, d, tx, ty, roll, shift)
        cv2.imwrite(str(folder / f"view_{i:02d}.png"), camera.photograph(spec, rvec, tvec, seed=i))
    return folder


def _board_args(spec: BoardSpec) -> list[str]:
    args = ["--board", spec.type, "--columns", str(spec.columns), "--rows", str(spec.rows)]
    args += ["--square", str(spec.square_size_m)]
    if spec.type == "charuco":
        args += ["--marker", str(spec.marker_size_m), "--dictionary", spec.dictionary]
    return args


def _distorted_px(dist: np.ndarray) -> np.ndarray:
    """Where distortion ``dist`` moves a grid of rays over the image (its outer tenth, which the views
    barely reach, left out), in pixels of the true camera: the lens alone, apart from K."""
    xs, ys = np.meshgrid(np.linspace(0.1, 0.9, 9) * SIZE[0], np.linspace(0.1, 0.9, 7) * SIZE[1])
    ideal = np.stack([xs.ravel(), ys.ravel()], 1).reshape(-1, 1, 2)
    rays = cv2.undistortPoints(ideal, K, np.zeros(5)).reshape(-1, 2)
    points = np.concatenate([rays, np.ones((len(rays), 1))], 1)
    projected, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, dist)
    return projected.reshape(-1, 2)


@pytest.mark.parametrize("spec", [CHECKER, CHARUCO], ids=["checkerboard", "charuco"])
def test_known_intrinsics_and_distortion_are_recovered(camera, spec, tmp_path, capsys):
    views = _photograph(camera, spec, tmp_path / "views")
    out = tmp_path / "intrinsics.yaml"
    assert main(["--images", str(views), *_board_args(spec), "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    intr = load_intrinsics(out)
    k = np.array(intr.camera_matrix)
    assert abs(k[0, 0] / K[0, 0] - 1) < 0.01 and abs(k[1, 1] / K[1, 1] - 1) < 0.01
    assert abs(k[0, 2] / K[0, 2] - 1) < 0.01 and abs(k[1, 2] / K[1, 2] - 1) < 0.01
    assert abs(intr.distortion[0] - DIST[0]) < 0.02  # k1 carries the barrel distortion
    # the distortion model as a whole: every ray lands within a fraction of a pixel of the true lens
    shift = np.linalg.norm(_distorted_px(np.array(intr.distortion)) - _distorted_px(DIST), axis=1)
    assert shift.max() < 0.5
    assert intr.reprojection_error_px < 0.5 and intr.views_used >= 10
    assert (intr.image_width, intr.image_height) == SIZE and intr.board == spec
    assert intr.id.startswith("intrinsics-") and intr.created


def test_too_few_views_are_refused_and_nothing_is_written(camera, tmp_path, capsys):
    views = _photograph(camera, CHECKER, tmp_path / "views", POSES[:3])
    blank = np.full((SIZE[1], SIZE[0]), 120, np.uint8)
    cv2.imwrite(str(views / "wall.png"), blank)
    out = tmp_path / "intrinsics.yaml"
    assert main(["--images", str(views), *_board_args(CHECKER), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "only 3 views show the checkerboard 9x6" in err and "8 are needed" in err and "wall.png" in err
    assert not out.exists()


def test_a_wrong_board_size_finds_nothing_and_says_what_to_check(camera, tmp_path, capsys):
    views = _photograph(camera, CHECKER, tmp_path / "views", POSES[:2])
    args = [
        "--images",
        str(views),
        "--board",
        "checkerboard",
        "--columns",
        "8",
        "--rows",
        "6",
        "--square",
        "0.03",
    ]
    assert main(args) == 2
    assert (
        "only 0 views" in capsys.readouterr().err
        and "squares, not inner corners" in "squares, not inner corners"
    )


def test_a_high_reprojection_error_is_refused(camera, tmp_path, capsys):
    views = _photograph(camera, CHECKER, tmp_path / "views", POSES[:8])
    out = tmp_path / "intrinsics.yaml"
    assert (
        main(["--images", str(views), *_board_args(CHECKER), "--max-error", "0.001", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "exceeds --max-error 0.001 px; worst views: view_" in err
    assert not out.exists()


def test_images_of_different_sizes_are_refused(tmp_path, capsys):
    (tmp_path / "views").mkdir()
    cv2.imwrite(str(tmp_path / "views" / "a.png"), np.zeros((240, 320), np.uint8))
    cv2.imwrite(str(tmp_path / "views" / "b.png"), np.zeros((480, 640), np.uint8))
    assert main(["--images", str(tmp_path / "views")]) == 2
    assert "b.png is 640x480 but a.png is 320x240" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [CHECKER, CHARUCO], ids=["checkerboard", "charuco"])
def test_the_printable_board_is_detected_whole(spec, tmp_path):
    path = tmp_path / "board.png"
    assert main(["--make-board", str(path), *_board_args(spec)]) == 0
    detection = Board(spec).detect(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    assert detection is not None and len(detection.image_points) == Board(spec).corner_count


def test_unknown_dictionaries_and_boards_too_big_for_them_are_refused():
    with pytest.raises(BoardError, match="unknown ArUco dictionary 'DICT_9X9'"):
        Board(BoardSpec(dictionary="DICT_9X9"))
    with pytest.raises(BoardError, match="needs 60 markers but DICT_4X4_50 has 50"):
        Board(BoardSpec(columns=12, rows=10, dictionary="DICT_4X4_50"))


def _valid_file() -> dict:
    return {
        "kind": "camera_intrinsics",
        "id": "intrinsics-x",
        "image_width": 320,
        "image_height": 240,
        "camera_matrix": K.tolist(),
        "distortion": DIST.tolist(),
        "reprojection_error_px": 0.1,
        "views_used": 10,
        "board": CHECKER.model_dump(),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"camera_matrix": [[300, 0, 160], [0, 300, 120]]}, r"camera_matrix must be \[\[fx, 0, cx\]"),
        ({"distortion": [0.1, 0.2, 0.3]}, "distortion needs 4, 5, 8, 12 or 14"),
        ({"image_width": 0}, r"image_width: Input should be greater than 0 \(given 0\)"),
        ({"kind": "hand_eye"}, "holds kind 'hand_eye', expected 'camera_intrinsics'"),
        ({"fx": 300}, r"fx: unknown field"),
        ({"views_used": None}, r"views_used: Input should be a valid integer"),
    ],
)
def test_intrinsics_files_are_validated_when_loaded(tmp_path, change, message):
    path = tmp_path / "intrinsics.yaml"
    path.write_text(yaml.safe_dump({**_valid_file(), **change}))
    with pytest.raises(CalibrationFileError, match=message) as info:
        load_intrinsics(path)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files_are_explained(tmp_path):
    with pytest.raises(CalibrationFileError, match="does not exist; `calibrate-camera` writes one"):
        load_intrinsics(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(CalibrationFileError, match="is not valid YAML"):
        load_intrinsics(tmp_path / "bad.yaml")
