"""Calibration boards: where their corners are (board frame, metres), finding them in an image, printing.

Board frame: origin at the top-left outer corner of the printed board, x along the columns, y along
the rows (down the printed page), z into the board; so the camera sees the board's front at z < 0 in
board coordinates, and OpenCV's solvePnP gives the board's pose in the camera frame.
Sizes in :class:`~maskvit_mpc.configs.schema.BoardSpec` count squares; a checkerboard of 9 x 6 squares
has 8 x 5 inner corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..configs.errors import UserError
from ..configs.schema import BoardSpec

MIN_CHARUCO_CORNERS = 6  # fewer corners cannot constrain a homography well


class BoardError(UserError):
    """A board that cannot be built (unknown ArUco dictionary, too many markers for it)."""


@dataclass(frozen=True)
class Detection:
    """The board corners found in one image: matching 3-D board points and 2-D pixels."""

    object_points: np.ndarray  # (N, 3) float32, metres, board frame
    image_points: np.ndarray  # (N, 2) float32, pixels


class Board:
    """One :class:`BoardSpec` made usable: detection, object points and a printable image."""

    def __init__(self, spec: BoardSpec) -> None:
        self.spec = spec
        if spec.type == "charuco":
            name = spec.dictionary
            if not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
                known = ", ".join(n for n in dir(cv2.aruco) if n.startswith("DICT_") and "APRILTAG" not in n)
                raise BoardError(f"unknown ArUco dictionary {name!r}; choose one of {known}")
            dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
            markers_needed = spec.columns * spec.rows // 2
            if markers_needed > len(dictionary.bytesList):
                raise BoardError(
                    f"a {spec.columns}x{spec.rows} ChArUco board needs {markers_needed} markers but {name} has "
                    f"{len(dictionary.bytesList)}; choose a larger dictionary (e.g. DICT_5X5_250)"
                )
            marker = spec.marker_size_m or 0.75 * spec.square_size_m
            self._charuco = cv2.aruco.CharucoBoard(
                (spec.columns, spec.rows), spec.square_size_m, marker, dictionary
            )
            self._detector = cv2.aruco.CharucoDetector(self._charuco)
        else:
            self._pattern = (spec.columns - 1, spec.rows - 1)
            xs, ys = np.meshgrid(np.arange(1, spec.columns), np.arange(1, spec.rows))
            grid = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
            self._grid = (grid * spec.square_size_m).astype(np.float32)

    @property
    def corner_count(self) -> int:
        """Inner corners on the whole board."""
        return (self.spec.columns - 1) * (self.spec.rows - 1)

    def describe(self) -> str:
        s = self.spec
        extra = f", markers {s.dictionary}" if s.type == "charuco" else ""
        return f"{s.type} {s.columns}x{s.rows} squares of {1000 * s.square_size_m:g} mm{extra}"

    def detect(self, image: np.ndarray) -> Detection | None:
        """The corners in an RGB or grey image, or None when the board is not (usably) visible."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if self.spec.type == "charuco":
            corners, ids, _, _ = self._detector.detectBoard(gray)
            if ids is None or len(ids) < MIN_CHARUCO_CORNERS:
                return None
            obj, img = self._charuco.matchImagePoints(corners, ids)
            obj = obj.reshape(-1, 3).astype(np.float32)
            spread = obj[:, :2] - obj[:, :2].mean(axis=0)
            if np.linalg.matrix_rank(spread, tol=1e-6) < 2:  # all on one line: no plane pose from that
                return None
            return Detection(obj, img.reshape(-1, 2).astype(np.float32))
        # The classic detector with sub-pixel refinement is fast and precise on sharp views; the
        # sector-based one copes better with blur and uneven light, so it is the fallback.
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(gray, self._pattern, flags=flags)
        if found:
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-3)
            corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)
        else:
            found, corners = cv2.findChessboardCornersSB(
                gray, self._pattern, flags=cv2.CALIB_CB_NORMALIZE_IMAGE
            )
        if not found:
            return None
        return Detection(self._grid.copy(), corners.reshape(-1, 2).astype(np.float32))

    def image(self, pixels_per_square: int = 100, margin_squares: float = 0.5) -> np.ndarray:
        """A printable grey image of the board with a white margin."""
        s = self.spec
        margin = int(round(margin_squares * pixels_per_square))
        size = (s.columns * pixels_per_square + 2 * margin, s.rows * pixels_per_square + 2 * margin)
        if s.type == "charuco":
            return self._charuco.generateImage(size, marginSize=margin, borderBits=1)
        board = np.full((size[1], size[0]), 255, np.uint8)
        for r in range(s.rows):
            for c in range(s.columns):
                if (r + c) % 2 == 0:
                    y, x = margin + r * pixels_per_square, margin + c * pixels_per_square
                    board[y : y + pixels_per_square, x : x + pixels_per_square] = 0
        return board


def add_board_arguments(parser, required: bool = True) -> None:
    """--board / --columns / --rows / --square / --marker / --dictionary, shared by the calibrate commands."""
    group = parser.add_argument_group("board (sizes count squares as printed; measure the print)")
    group.add_argument(
        "--board", choices=["checkerboard", "charuco"], default=None if not required else "charuco"
    )
    group.add_argument("--columns", type=int, help="squares across (default 9)")
    group.add_argument("--rows", type=int, help="squares down (default 6)")
    group.add_argument("--square", type=float, metavar="METRES", help="square side in metres (default 0.03)")
    group.add_argument(
        "--marker", type=float, metavar="METRES", help="charuco marker side (default 0.75 x square)"
    )
    group.add_argument("--dictionary", help="charuco ArUco dictionary (default DICT_5X5_100)")


def board_spec_from_args(args, base: BoardSpec | None = None) -> BoardSpec:
    """The board the arguments describe, starting from ``base`` (e.g. the intrinsics' board)."""
    from pydantic import ValidationError

    fields = dict(base.model_dump()) if base is not None else {}
    given = {
        "type": args.board,
        "columns": args.columns,
        "rows": args.rows,
        "square_size_m": args.square,
        "marker_size_m": args.marker,
        "dictionary": args.dictionary,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        return BoardSpec(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'board'}: {e['msg']}" for e in exc.errors())
        raise BoardError(f"invalid board: {problems}") from None
