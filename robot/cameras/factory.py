"""Choosing a camera from the config (``camera`` section) and ``list-cameras``."""

from __future__ import annotations

import glob
import sys
from typing import Any

from ...configs import Config
from ...configs.cli import cli_entry, make_parser, setup_logging
from ...configs.errors import UserError
from ...configs.schema import BridgeConfig
from ..camera import Camera, CameraError

SPEC_HELP = (
    "camera to use: realsense[:SERIAL], opencv:INDEX_OR_PATH, replay:PATH (episode .h5, video, image "
    "folder) or zmq (the arm server's stream); sets the camera section"
)


def camera_overrides(spec: str) -> list[str]:
    """``--camera`` shorthand -> config overrides, e.g. ``realsense:123`` -> driver + serial."""
    driver, _, arg = spec.partition(":")
    driver = driver.strip().lower()
    if driver == "realsense":
        return ["camera.driver=realsense"] + ([f"camera.serial='{arg}'"] if arg else [])
    if driver == "opencv" and arg:
        return ["camera.driver=opencv", f"camera.device='{arg}'"]
    if driver == "replay" and arg:
        return ["camera.driver=replay", f"camera.replay_path='{arg}'"]
    if driver == "zmq" and not arg:
        return ["camera.driver=zmq"]
    raise UserError(
        f"camera {spec!r} not understood; use realsense, realsense:SERIAL, opencv:0, opencv:/dev/video2, "
        "replay:episode_000000.h5 or zmq"
    )


def make_camera(
    cfg: Config,
    bridge: BridgeConfig | None = None,
    *,
    preprocess: bool = True,
    device_factory: Any = None,
) -> Camera:
    """The camera ``cfg.camera`` names (not yet connected).

    With ``preprocess`` its frames come out in the model's view (crop, undistort, area resize to
    ``camera.view.image_size`` or ``data.image_size``): what collection records and planning sees.
    ``bridge`` locates the zmq stream (default ``cfg.bridge``).
    """
    c = cfg.camera
    camera: Camera
    if c.driver == "zmq":
        from ..zmq_camera import ZmqCamera

        camera = ZmqCamera(bridge or cfg.bridge)
    elif c.driver == "realsense":
        from .realsense import RealSenseCamera

        camera = RealSenseCamera(c, device_factory=device_factory)
    elif c.driver == "opencv":
        from .opencv import OpenCVCamera

        camera = OpenCVCamera(c)
    else:
        from .replay import ReplayCamera

        camera = ReplayCamera(c)
    if not preprocess:
        return camera
    from ..preprocess import PreprocessedCamera, Preprocessor

    return PreprocessedCamera(camera, Preprocessor.from_config(c, cfg.data.image_size))


# --- list-cameras ---------------------------------------------------------------------------------


def realsense_rows() -> tuple[list[dict[str, Any]], str]:
    """Connected RealSense devices, and a note when the SDK is missing."""
    try:
        from .realsense import connected_devices, describe_device

        return [describe_device(d) for d in connected_devices()], ""
    except CameraError as exc:
        return [], str(exc)


def opencv_rows(probe: bool) -> list[dict[str, Any]]:
    """/dev/video* nodes; with ``probe``, opened to read one frame and its size."""
    rows = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p)):
        row: dict[str, Any] = {"device": path}
        if probe:
            import cv2

            capture = cv2.VideoCapture(path)
            ok, image = capture.read() if capture.isOpened() else (False, None)
            capture.release()
            row["status"] = (
                f"{image.shape[1]}x{image.shape[0]}" if ok else "no frames (metadata node or busy)"
            )
        rows.append(row)
    return rows


def format_listing(realsense: list[dict[str, Any]], note: str, opencv: list[dict[str, Any]]) -> str:
    lines = ["RealSense (camera.driver=realsense, camera.serial=SERIAL):"]
    if note:
        lines.append(f"  unavailable: {note}")
    elif not realsense:
        lines.append("  none connected")
    for d in realsense:
        modes = ", ".join(f"{w}x{h}@{f}" for w, h, f in d["color_modes"][:8]) or "no RGB8 colour modes"
        usb = f", USB {d['usb']}" if d["usb"] else ""
        fw = f", firmware {d['firmware']}" if d["firmware"] else ""
        lines.append(f"  {d['serial']}  {d['name']}{fw}{usb}")
        lines.append(f"      colour: {modes}")
    lines.append("OpenCV / V4L2 (camera.driver=opencv, camera.device=INDEX_OR_PATH):")
    if not opencv:
        lines.append(
            "  none found" + ("" if sys.platform.startswith("linux") else " (device listing needs Linux)")
        )
    for d in opencv:
        lines.append(f"  {d['device']}" + (f"  {d['status']}" if "status" in d else ""))
    return "\n".join(lines)


_EXAMPLES = """
  list-cameras                 # RealSense serials and modes, /dev/video* nodes
  list-cameras --probe         # also open each /dev/video* and read one frame
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "list-cameras",
        "Show the cameras this machine can use: RealSense devices (serial, firmware, colour modes) and "
        "OpenCV/V4L2 devices. Select one with --set camera.driver=... / camera.serial=... or --camera.",
        _EXAMPLES,
    )
    parser.add_argument("--probe", action="store_true", help="open each /dev/video* node and read a frame")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    realsense, note = realsense_rows()
    print(format_listing(realsense, note, opencv_rows(args.probe)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
