"""Reading and writing calibration files (YAML): camera intrinsics, hand-eye and workspace bounds.

The ``calibrate-*`` commands write them; the cameras' preprocessing (undistortion) and ``arm-server
--workspace-file`` read them. Every file is validated as a whole when loaded, with the same kind of
message as a bad config: the file, the dotted field, what was given and what is allowed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError

from ..configs import ConfigError
from ..configs.schema import CameraIntrinsics, HandEyeCalibration, WorkspaceCalibration

CalibrationModel = TypeVar("CalibrationModel", CameraIntrinsics, HandEyeCalibration, WorkspaceCalibration)

_WRITERS = {
    "camera_intrinsics": "calibrate-camera",
    "hand_eye": "calibrate-handeye",
    "workspace_bounds": "calibrate-workspace",
}


class CalibrationFileError(ConfigError):
    """A calibration file that is missing, not YAML, of another kind, or with invalid fields."""


def _format(exc: ValidationError, path: Path) -> str:
    lines = [f"invalid calibration file {path}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown field (given {err.get('input')!r})")
        elif err["type"] == "missing":
            lines.append(f"  {where}: missing")
        else:
            lines.append(f"  {where}: {err['msg']} (given {err.get('input')!r})")
    return "\n".join(lines)


def load_calibration(path: str | os.PathLike, model: type[CalibrationModel]) -> CalibrationModel:
    """Read and validate one calibration file of the kind ``model`` describes."""
    path = Path(path).expanduser()
    kind = model.model_fields["kind"].default
    if not path.is_file():
        raise CalibrationFileError(f"calibration file {path} does not exist; `{_WRITERS[kind]}` writes one")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CalibrationFileError(f"calibration file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CalibrationFileError(f"calibration file {path} must hold a mapping, got {type(data).__name__}")
    if data.get("kind") != kind:
        raise CalibrationFileError(
            f"{path} holds kind {data.get('kind')!r}, expected {kind!r} (written by `{_WRITERS[kind]}`)"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CalibrationFileError(_format(exc, path)) from None


def load_intrinsics(path: str | os.PathLike) -> CameraIntrinsics:
    return load_calibration(path, CameraIntrinsics)


def load_hand_eye(path: str | os.PathLike) -> HandEyeCalibration:
    return load_calibration(path, HandEyeCalibration)


def load_workspace(path: str | os.PathLike) -> WorkspaceCalibration:
    return load_calibration(path, WorkspaceCalibration)


def save_calibration(path: str | os.PathLike, calibration: BaseModel, comment: str = "") -> Path:
    """Write ``calibration`` as YAML (atomically: readers see the old file or the new one)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.strip().splitlines()) if comment else ""
    text = header + yaml.safe_dump(calibration.model_dump(mode="json"), sort_keys=False, width=110)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def make_id(prefix: str, *content: object) -> str:
    """A short, readable id: prefix, date and a hash of what the calibration found."""
    digest = hashlib.sha1(repr(content).encode()).hexdigest()[:8]
    return f"{prefix}-{_dt.date.today():%Y%m%d}-{digest}"


def camera_matrix(intrinsics: CameraIntrinsics) -> np.ndarray:
    """(3, 3) float64 K."""
    return np.asarray(intrinsics.camera_matrix, dtype=np.float64)


def distortion(intrinsics: CameraIntrinsics) -> np.ndarray:
    """(N,) float64 OpenCV distortion coefficients."""
    return np.asarray(intrinsics.distortion, dtype=np.float64)
