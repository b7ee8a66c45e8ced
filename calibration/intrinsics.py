"""``calibrate-camera``: camera matrix and lens distortion from views of a board, written to YAML.

Views come from a folder of images or from a live camera (``--live``, the ``camera`` config section).
The result is refused, and nothing written, when too few views show the board or the RMS reprojection
error is above ``--max-error``: a bad calibration silently ruins undistortion and hand-eye later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import BoardSpec, CameraIntrinsics
from ..robot.calibration_files import make_id, now_iso, save_calibration
from .boards import Board, Detection, add_board_arguments, board_spec_from_args

log = logging.getLogger(__name__)

# k1k2: k3 fixed at 0, the robust choice for ordinary lenses (k3 trades off against k1, k2 with few
# views); k1k2k3: the full 5-coefficient model; rational: 8 coefficients for wide-angle lenses.
DISTORTION_MODELS = {"k1k2": cv2.CALIB_FIX_K3, "k1k2k3": 0, "rational": cv2.CALIB_RATIONAL_MODEL}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class CalibrationError(UserError):
    """Calibration inputs that cannot give a trustworthy result."""


@dataclass(frozen=True)
class View:
    name: str
    detection: Detection


@dataclass(frozen=True)
class IntrinsicsResult:
    intrinsics: CameraIntrinsics
    view_errors_px: dict[str, float]  # RMS reprojection error per view
    skipped: list[str]  # images in which the board was not found


def read_images(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """The images of ``folder`` in name order, as (name, RGB)."""
    from ..robot.cameras.replay import read_image_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(p.name, read_image_rgb(p)) for p in paths]


def find_views(
    images: Iterable[tuple[str, np.ndarray]], board: Board
) -> tuple[list[View], tuple[int, int], list[str]]:
    """The views that show the board, the common image size (width, height), and the names without it."""
    views, skipped, size, first = [], [], None, ""
    for name, image in images:
        this = (image.shape[1], image.shape[0])
        if size is None:
            size, first = this, name
        elif this != size:
            raise CalibrationError(
                f"{name} is {this[0]}x{this[1]} but {first} is {size[0]}x{size[1]}: calibrate one resolution at a time"
            )
        detection = board.detect(image)
        if detection is None:
            skipped.append(name)
            log.info("%s: board not found", name)
        else:
            views.append(View(name, detection))
    if size is None:
        raise CalibrationError("no images to calibrate from")
    return views, size, skipped


def calibrate_intrinsics(
    views: Sequence[View],
    image_size: tuple[int, int],
    board: BoardSpec,
    *,
    min_views: int = 8,
    max_error_px: float = 1.0,
    distortion_model: str = "k1k2",
    camera: str = "",
    skipped: Sequence[str] = (),
) -> IntrinsicsResult:
    """Calibrate from detected views; raises :class:`CalibrationError` on too few views or a high error."""
    if len(views) < min_views:
        missed = f" (no board found in {len(skipped)}: {', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''})"
        raise CalibrationError(
            f"only {len(views)} views show the {Board(board).describe()} but {min_views} are needed"
            f"{missed if skipped else ''}; check --board/--columns/--rows (squares, not inner corners), light "
            "and focus, and take views that tilt the board and cover the image corners"
        )
    obj = [v.detection.object_points for v in views]
    img = [v.detection.image_points for v in views]
    flags = DISTORTION_MODELS[distortion_model]
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)
    rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(
        obj, img, image_size, None, None, flags=flags, criteria=criteria
    )
    errors = {}
    for view, o, i, r, t in zip(views, obj, img, rvecs, tvecs, strict=True):
        projected, _ = cv2.projectPoints(o, r, t, k, dist)
        errors[view.name] = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - i) ** 2, axis=1))))
    if not np.isfinite(rms) or rms > max_error_px:
        worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        listing = ", ".join(f"{n} {e:.2f} px" for n, e in worst)
        raise CalibrationError(
            f"RMS reprojection error {rms:.3f} px exceeds --max-error {max_error_px} px; worst views: {listing}. "
            "Remove blurry or misdetected images (or measure --square again) and rerun"
        )
    n_coeffs = 8 if distortion_model == "rational" else 5
    distortion = [float(x) for x in dist.ravel()[:n_coeffs]]
    matrix = [[float(x) for x in row] for row in k]
    matrix[0][1], matrix[1][0], matrix[2] = 0.0, 0.0, [0.0, 0.0, 1.0]
    intrinsics = CameraIntrinsics(
        id=make_id("intrinsics", camera, image_size, matrix, distortion),
        camera=camera,
        image_width=image_size[0],
        image_height=image_size[1],
        camera_matrix=matrix,
        distortion=distortion,
        reprojection_error_px=float(rms),
        views_used=len(views),
        board=board,
        created=now_iso(),
    )
    return IntrinsicsResult(intrinsics, errors, list(skipped))


def capture_views(
    camera, board: Board, count: int, interval_s: float, max_seconds: float, save_dir: Path | None
) -> list[tuple[str, np.ndarray]]:
    """Frames from a live camera that show the board, at least ``interval_s`` apart (move it between)."""
    kept: list[tuple[str, np.ndarray]] = []
    deadline = time.monotonic() + max_seconds
    last = -float("inf")
    with camera:
        while len(kept) < count and time.monotonic() < deadline:
            frame = camera.read(timeout_s=2.0)
            if time.monotonic() - last < interval_s or board.detect(frame.rgb) is None:
                continue
            last = time.monotonic()
            name = f"view_{len(kept):03d}.png"
            kept.append((name, frame.rgb))
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(save_dir / name), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
            print(f"view {len(kept)}/{count} kept; move or tilt the board", flush=True)
    if len(kept) < count:
        log.warning("stopped after %.0f s with %d of %d views", max_seconds, len(kept), count)
    return kept


_EXAMPLES = """
  calibrate-camera --make-board board.png                  # print it; measure a square with a ruler
  calibrate-camera --images views/ --square 0.0298 --out intrinsics.yaml
  calibrate-camera --images views/ --board checkerboard --columns 10 --rows 7 --square 0.025 --out cam.yaml
  calibrate-camera --live --camera realsense:123456789 --views 20 --save-views views/ --out intrinsics.yaml
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from ..robot.cameras import camera_overrides, make_camera

    parser = make_parser(
        "calibrate-camera",
        "Camera intrinsics (camera matrix, distortion) from 10-30 views of a checkerboard or ChArUco board, "
        "from a folder of images or a live camera; written to YAML for camera.intrinsics_file. Refused when "
        "too few views show the board or the reprojection error is too high.",
        _EXAMPLES,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="DIR", help="folder of board images (png, jpg, ...)")
    source.add_argument("--live", action="store_true", help="capture views from the configured camera")
    source.add_argument("--make-board", metavar="PNG", help="write a printable image of the board and exit")
    add_board_arguments(parser)
    parser.add_argument("--out", default="intrinsics.yaml", help="where to write the calibration")
    parser.add_argument("--min-views", type=int, default=8, help="refuse with fewer views showing the board")
    parser.add_argument("--max-error", type=float, default=1.0, help="refuse above this RMS error (pixels)")
    parser.add_argument("--distortion-model", choices=sorted(DISTORTION_MODELS), default="k1k2")
    parser.add_argument(
        "--camera", metavar="SPEC", help="live: realsense[:SERIAL] or opencv:INDEX (else config)"
    )
    parser.add_argument("--views", type=int, default=20, help="live: views to capture")
    parser.add_argument("--interval", type=float, default=1.5, help="live: seconds between kept views")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="live: give up after this long")
    parser.add_argument("--save-views", metavar="DIR", help="live: also save the kept views as PNG")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    spec = board_spec_from_args(args)
    board = Board(spec)
    if args.make_board:
        path = Path(args.make_board)
        if not cv2.imwrite(str(path), board.image()):
            raise UserError(f"cannot write {path}")
        print(f"{board.describe()} written to {path}; print it at 100% and measure a square for --square")
        return 0
    if args.live:
        cfg = config_from_args(args, camera_overrides(args.camera) if args.camera else [])
        camera = make_camera(cfg, preprocess=False)
        images = capture_views(
            camera,
            board,
            args.views,
            args.interval,
            args.max_seconds,
            Path(args.save_views) if args.save_views else None,
        )
        camera_name = getattr(camera, "name", cfg.camera.driver)
    elif args.images:
        images = read_images(args.images)
        camera_name = ""
    else:
        raise UserError("give --images DIR or --live (or --make-board PNG to print a board)")
    views, size, skipped = find_views(images, board)
    result = calibrate_intrinsics(
        views,
        size,
        spec,
        min_views=args.min_views,
        max_error_px=args.max_error,
        distortion_model=args.distortion_model,
        camera=camera_name,
        skipped=skipped,
    )
    intr = result.intrinsics
    save_calibration(args.out, intr, f"camera intrinsics from calibrate-camera, {intr.created}")
    k = intr.camera_matrix
    print(
        f"{len(views)} views ({len(skipped)} without the board), {size[0]}x{size[1]}: fx {k[0][0]:.1f} fy {k[1][1]:.1f} "
        f"cx {k[0][2]:.1f} cy {k[1][2]:.1f}, RMS error {intr.reprojection_error_px:.3f} px\nwritten {args.out} (id {intr.id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
