"""Recorded episodes on disk: one crash-safe HDF5 file per episode plus a small JSON manifest.

File layout (``episode_000042.h5``; T actions, T + 1 frames):

========================  ===================  ==============================================
dataset                   shape, dtype         meaning
========================  ===================  ==============================================
``frames``                (T+1, H, W, 3) u1    RGB, chunked one frame per chunk, gzip
``actions/commanded``     (T, 5) f8            what the policy sent (dx, dy, dz m; dyaw rad;
                                               gripper in [-1, 1])
``actions/applied``       (T, 5) f8            what the controller applied after clipping
                                               (float64: replaying it in the sim is bit-exact)
``actions/clipped``       (T,) bool            whether the controller changed the command
``state/pose``            (T+1, 5) f8          arm pose (x, y, z m; yaw rad; gripper) at each frame
``time/frame``            (T+1,) f8            capture time of each frame (wall clock, s)
``time/action``           (T,) f8              time the controller applied each action
``objects/positions``     (T+1, K, 3) f4       sim only: object centres (m), names in attrs
``segmentation``          (T+1, H, W) u1       sim only: per-pixel object id, gzip
``sim/initial_state``     (n,) u1              sim only: full simulator state before action 0
========================  ===================  ==============================================

Frame ``t + 1`` was captured after action ``t`` was applied. Root attributes hold the metadata
(robot, camera, resolution, control period, calibration id, software version, seed, ...).

Crash safety: a file is written whole under a hidden temporary name (``.episode_000042.h5.tmp``),
flushed and fsync'ed, then renamed with :func:`os.replace`; the manifest is replaced the same way.
A process killed at any moment (SIGKILL included) therefore leaves only complete ``*.h5`` files
visible; stale temporary files are removed by :func:`clean_stale_temp_files`, and the manifest can
always be rebuilt from the episode files (:func:`rebuild_manifest`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..configs.errors import UserError
from .types import ACTION_DIM, ACTION_NAMES, POSE_NAMES

log = logging.getLogger(__name__)

FORMAT_NAME = "maskvit-mpc-episode"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_EPISODE_RE = re.compile(r"^episode_(\d{6,})\.h5$")
_TEMP_SUFFIX = ".tmp"


class EpisodeError(UserError):
    """An episode file or folder that cannot be read or does not hold a valid episode."""


def episode_filename(index: int) -> str:
    return f"episode_{index:06d}.h5"


def _temp_path(final: Path) -> Path:
    # Hidden and without the .h5 suffix, so no glob for episodes ever sees a half-written file.
    return final.with_name(f".{final.name}{_TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old content or the new, never a mix."""
    path = Path(path)
    tmp = _temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class EpisodeMetadata:
    """Who recorded an episode and how; stored as HDF5 root attributes."""

    robot: str  # e.g. "sim-tabletop" or the arm's model name
    camera: str  # e.g. "sim-zmq", "realsense-d435:<serial>"
    image_height: int
    image_width: int
    control_period_s: float
    seed: int = -1  # scene / policy seed; -1: none
    calibration_id: str = ""  # which camera calibration was active ("" for the sim)
    software_version: str = ""
    task: str = ""
    policy: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able free-form extras


@dataclass
class Episode:
    """One episode in memory. ``T`` actions, ``T + 1`` frames; frame ``t + 1`` follows action ``t``."""

    frames: np.ndarray  # (T+1, H, W, 3) uint8
    commanded: np.ndarray  # (T, 5) float64
    applied: np.ndarray  # (T, 5) float64
    clipped: np.ndarray  # (T,) bool
    poses: np.ndarray  # (T+1, 5) float64
    t_frame: np.ndarray  # (T+1,) float64, seconds
    t_action: np.ndarray  # (T,) float64, seconds
    meta: EpisodeMetadata
    object_names: tuple[str, ...] = ()
    object_positions: np.ndarray | None = None  # (T+1, K, 3) float32, metres
    segmentation: np.ndarray | None = None  # (T+1, H, W) uint8
    initial_sim_state: bytes | None = None

    @property
    def num_steps(self) -> int:
        return int(self.commanded.shape[0])

    def max_object_displacement(self) -> float:
        """Largest distance (m) any object moved from its first-frame position; nan without objects."""
        return _max_displacement(self.object_positions)


def _max_displacement(positions: np.ndarray | None) -> float:
    if positions is None or positions.size == 0:
        return float("nan")
    moved = np.linalg.norm(positions - positions[:1], axis=-1)
    return float(moved.max())


class EpisodeRecorder:
    """Collects one episode step by step in memory, then writes it in one go with :meth:`save`.

    Keeping the episode in memory until it is complete (a 30-step 64x64 episode is under 0.5 MB)
    means a broken episode (camera fault, controller fault) is dropped by simply not saving it.
    """

    def __init__(self, meta: EpisodeMetadata, object_names: tuple[str, ...] = ()) -> None:
        self.meta = meta
        self.object_names = tuple(object_names)
        self.initial_sim_state: bytes | None = None
        self._frames: list[np.ndarray] = []
        self._poses: list[np.ndarray] = []
        self._t_frame: list[float] = []
        self._objects: list[np.ndarray] = []
        self._segs: list[np.ndarray] = []
        self._commanded: list[np.ndarray] = []
        self._applied: list[np.ndarray] = []
        self._clipped: list[bool] = []
        self._t_action: list[float] = []

    @property
    def num_steps(self) -> int:
        return len(self._commanded)

    def add_observation(
        self,
        rgb: np.ndarray,
        pose: np.ndarray,
        t_capture: float,
        object_positions: np.ndarray | None = None,
        segmentation: np.ndarray | None = None,
    ) -> None:
        """Record one frame and the state at its capture; the first call is the initial observation."""
        if len(self._frames) != len(self._commanded):
            raise EpisodeError("add_observation called twice without an action in between")
        rgb = np.asarray(rgb)
        expected = (self.meta.image_height, self.meta.image_width, 3)
        if rgb.shape != expected or rgb.dtype != np.uint8:
            raise EpisodeError(
                f"frame has shape {rgb.shape} {rgb.dtype}, expected {expected} uint8; "
                "set the episode metadata to the camera's resolution"
            )
        if self.object_names and object_positions is None:
            raise EpisodeError("this episode records objects: pass object_positions with every frame")
        self._frames.append(rgb.copy())
        self._poses.append(np.asarray(pose, dtype=np.float64).reshape(len(POSE_NAMES)))
        self._t_frame.append(float(t_capture))
        if object_positions is not None:
            self._objects.append(np.asarray(object_positions, dtype=np.float32).reshape(-1, 3))
        if segmentation is not None:
            self._segs.append(np.asarray(segmentation, dtype=np.uint8))

    def add_action(self, commanded: np.ndarray, applied: np.ndarray, clipped: bool, t_applied: float) -> None:
        """Record the action sent after the latest frame; the next frame must show its result."""
        if len(self._frames) != len(self._commanded) + 1:
            raise EpisodeError("add_action must follow add_observation (an action between two frames)")
        self._commanded.append(np.asarray(commanded, dtype=np.float64).reshape(ACTION_DIM))
        self._applied.append(np.asarray(applied, dtype=np.float64).reshape(ACTION_DIM))
        self._clipped.append(bool(clipped))
        self._t_action.append(float(t_applied))

    def to_episode(self) -> Episode:
        if len(self._frames) != len(self._commanded) + 1 or not self._commanded:
            raise EpisodeError(
                f"an episode needs T >= 1 actions and T + 1 frames; have {len(self._commanded)} actions "
                f"and {len(self._frames)} frames"
            )
        segs = None
        if self._segs:
            if len(self._segs) != len(self._frames):
                raise EpisodeError("segmentation must be given with every frame or with none")
            segs = np.stack(self._segs)
        return Episode(
            frames=np.stack(self._frames),
            commanded=np.stack(self._commanded),
            applied=np.stack(self._applied),
            clipped=np.asarray(self._clipped, dtype=bool),
            poses=np.stack(self._poses),
            t_frame=np.asarray(self._t_frame, dtype=np.float64),
            t_action=np.asarray(self._t_action, dtype=np.float64),
            meta=self.meta,
            object_names=self.object_names,
            object_positions=np.stack(self._objects) if self._objects else None,
            segmentation=segs,
            initial_sim_state=self.initial_sim_state,
        )


def write_episode(path: Path, episode: Episode, compression_level: int = 4) -> int:
    """Write ``episode`` atomically to ``path`` (temp file, flush, fsync, rename); returns its size in bytes."""
    path = Path(path)
    tmp = _temp_path(path)
    ep = episode
    num_frames, height, width, _ = ep.frames.shape
    gz = {"compression": "gzip", "compression_opts": int(compression_level), "shuffle": False}
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.create_dataset("frames", data=ep.frames, chunks=(1, height, width, 3), **gz)
            act = f.create_group("actions")
            act.create_dataset("commanded", data=ep.commanded.astype(np.float64))
            act.create_dataset("applied", data=ep.applied.astype(np.float64))
            act.create_dataset("clipped", data=ep.clipped.astype(bool))
            act.attrs["names"] = list(ACTION_NAMES)
            st = f.create_group("state")
            st.create_dataset("pose", data=ep.poses.astype(np.float64))
            st.attrs["names"] = list(POSE_NAMES)
            tg = f.create_group("time")
            tg.create_dataset("frame", data=ep.t_frame)
            tg.create_dataset("action", data=ep.t_action)
            if ep.object_positions is not None:
                og = f.create_group("objects")
                og.create_dataset("positions", data=ep.object_positions.astype(np.float32))
                og.attrs["names"] = list(ep.object_names)
            if ep.segmentation is not None:
                f.create_dataset("segmentation", data=ep.segmentation, chunks=(1, height, width), **gz)
            if ep.initial_sim_state is not None:
                sim = f.create_group("sim")
                sim.create_dataset("initial_state", data=np.frombuffer(ep.initial_sim_state, dtype=np.uint8))
            meta = ep.meta
            f.attrs.update(
                {
                    "format": FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "num_steps": ep.num_steps,
                    "num_frames": num_frames,
                    "robot": meta.robot,
                    "camera": meta.camera,
                    "image_height": meta.image_height,
                    "image_width": meta.image_width,
                    "control_period_s": meta.control_period_s,
                    "control_rate_hz": 1.0 / meta.control_period_s,
                    "seed": meta.seed,
                    "calibration_id": meta.calibration_id,
                    "software_version": meta.software_version,
                    "task": meta.task,
                    "policy": meta.policy,
                    "extra_json": json.dumps(meta.extra, sort_keys=True),
                    "max_object_displacement_m": ep.max_object_displacement(),
                    "created_unix": time.time(),
                    # Written last: a reader can tell a file that was finished from one that was not.
                    "complete": True,
                }
            )
            f.flush()
        # h5py closes the file before we fsync it through a fresh descriptor.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path.stat().st_size


def _check(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise EpisodeError(f"{path}: {what}; the file is not a valid episode (delete it or re-record)")


def validate_episode(path: Path) -> dict[str, Any]:
    """Open ``path`` and check shapes and metadata; returns the manifest entry. Raises EpisodeError."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            _check(f.attrs.get("format") == FORMAT_NAME, path, "missing format marker")
            _check(bool(f.attrs.get("complete", False)), path, "not marked complete")
            n = int(f.attrs["num_steps"])
            h, w = int(f.attrs["image_height"]), int(f.attrs["image_width"])
            _check(n >= 1, path, "no actions")
            _check(f["frames"].shape == (n + 1, h, w, 3), path, f"frames have shape {f['frames'].shape}")
            _check(f["frames"].dtype == np.uint8, path, "frames are not uint8")
            for name in ("commanded", "applied"):
                _check(f["actions"][name].shape == (n, ACTION_DIM), path, f"actions/{name} has a bad shape")
            _check(f["actions/clipped"].shape == (n,), path, "actions/clipped has a bad shape")
            _check(f["state/pose"].shape == (n + 1, len(POSE_NAMES)), path, "state/pose has a bad shape")
            _check(f["time/frame"].shape == (n + 1,), path, "time/frame has a bad shape")
            _check(f["time/action"].shape == (n,), path, "time/action has a bad shape")
            if "objects" in f:
                _check(
                    f["objects/positions"].shape[:1] == (n + 1,), path, "objects/positions has a bad shape"
                )
            if "segmentation" in f:
                _check(f["segmentation"].shape == (n + 1, h, w), path, "segmentation has a bad shape")
            # Touch the last chunk: a truncated file fails here rather than in the middle of training.
            f["frames"][n]
            return {
                "file": path.name,
                "steps": n,
                "frames": n + 1,
                "seed": int(f.attrs.get("seed", -1)),
                "bytes": path.stat().st_size,
                "robot_time_s": n * float(f.attrs["control_period_s"]),
                "max_object_displacement_m": _json_float(f.attrs.get("max_object_displacement_m", np.nan)),
            }
    except EpisodeError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise EpisodeError(f"{path}: cannot be read as an episode ({exc}); delete it or re-record") from None


def _json_float(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def read_episode(path: Path, with_frames: bool = True) -> Episode:
    """Load a whole episode into memory (``with_frames=False`` skips frames and segmentation)."""
    path = Path(path)
    validate_episode(path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        meta = EpisodeMetadata(
            robot=str(a["robot"]),
            camera=str(a["camera"]),
            image_height=int(a["image_height"]),
            image_width=int(a["image_width"]),
            control_period_s=float(a["control_period_s"]),
            seed=int(a["seed"]),
            calibration_id=str(a["calibration_id"]),
            software_version=str(a["software_version"]),
            task=str(a["task"]),
            policy=str(a["policy"]),
            extra=json.loads(str(a["extra_json"])),
        )
        h, w = meta.image_height, meta.image_width
        objects = f["objects/positions"][()] if "objects" in f else None
        names = tuple(str(s) for s in f["objects"].attrs["names"]) if "objects" in f else ()
        seg = f["segmentation"][()] if (with_frames and "segmentation" in f) else None
        state = f["sim/initial_state"][()].tobytes() if "sim" in f else None
        return Episode(
            frames=f["frames"][()] if with_frames else np.zeros((0, h, w, 3), np.uint8),
            commanded=f["actions/commanded"][()],
            applied=f["actions/applied"][()],
            clipped=f["actions/clipped"][()],
            poses=f["state/pose"][()],
            t_frame=f["time/frame"][()],
            t_action=f["time/action"][()],
            meta=meta,
            object_names=names,
            object_positions=objects,
            segmentation=seg,
            initial_sim_state=state,
        )


# --- the folder and its manifest ---------------------------------------------------------------


def episode_files(folder: Path) -> list[Path]:
    """Completed episode files in ``folder``, in index order (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPISODE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def episode_index(path: Path) -> int:
    m = _EPISODE_RE.match(Path(path).name)
    if not m:
        raise EpisodeError(f"{path}: not an episode file name (expected episode_NNNNNN.h5)")
    return int(m.group(1))


def clean_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files left by a killed writer; returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".*{_TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


@dataclass
class Manifest:
    """The folder's summary: one entry per completed episode, plus free-form collection info."""

    episodes: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(int(e["steps"]) for e in self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(int(e["frames"]) for e in self.episodes)

    @property
    def robot_time_s(self) -> float:
        return sum(float(e["robot_time_s"]) for e in self.episodes)

    @property
    def bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.episodes)

    def moved_share(self, threshold_m: float = 0.02) -> float | None:
        """Share of episodes (with object records) in which some object moved more than ``threshold_m``."""
        known = [
            e["max_object_displacement_m"]
            for e in self.episodes
            if e.get("max_object_displacement_m") is not None
        ]
        if not known:
            return None
        return sum(d > threshold_m for d in known) / len(known)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_NAME + "-manifest",
                "format_version": FORMAT_VERSION,
                "num_episodes": self.num_episodes,
                "num_steps": self.num_steps,
                "num_frames": self.num_frames,
                "robot_time_s": self.robot_time_s,
                "bytes": self.bytes,
                "info": self.info,
                "episodes": self.episodes,
            },
            indent=1,
        )


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Replace the folder's manifest atomically (temp file, fsync, rename)."""
    atomic_write_bytes(Path(folder) / MANIFEST_NAME, manifest.to_json().encode())


def read_manifest(folder: Path) -> Manifest:
    """Parse ``folder/manifest.json``; raises EpisodeError if it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        return Manifest(episodes=list(data["episodes"]), info=dict(data.get("info", {})))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EpisodeError(
            f"{path}: no readable manifest ({exc}); rebuild it with rebuild_manifest"
        ) from None


def rebuild_manifest(
    folder: Path, info: dict[str, Any] | None = None, drop_invalid: bool = False
) -> Manifest:
    """Scan the episode files and write a fresh manifest; invalid files are skipped (or deleted)."""
    folder = Path(folder)
    entries = []
    for p in episode_files(folder):
        try:
            entries.append(validate_episode(p))
        except EpisodeError as exc:
            log.warning("%s", exc)
            if drop_invalid:
                p.unlink()
    manifest = Manifest(episodes=entries, info=dict(info or {}))
    write_manifest(folder, manifest)
    return manifest


def load_or_rebuild_manifest(folder: Path) -> Manifest:
    """The manifest if it matches the episode files on disk; otherwise a rebuilt one."""
    folder = Path(folder)
    names = [p.name for p in episode_files(folder)]
    try:
        manifest = read_manifest(folder)
    except EpisodeError:
        return rebuild_manifest(folder)
    if [e["file"] for e in manifest.episodes] != names:
        log.info("manifest in %s is out of date with the episode files; rebuilding", folder)
        known = {e["file"]: e for e in manifest.episodes}
        entries = []
        for p in episode_files(folder):
            entry = known.get(p.name)
            if entry is None:
                try:
                    entry = validate_episode(p)
                except EpisodeError as exc:
                    log.warning("%s", exc)
                    continue
            entries.append(entry)
        manifest = Manifest(episodes=entries, info=manifest.info)
        write_manifest(folder, manifest)
    return manifest


def iter_episodes(folder: Path, with_frames: bool = True) -> Iterator[Episode]:
    for p in episode_files(folder):
        yield read_episode(p, with_frames=with_frames)
