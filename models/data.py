"""Training clips from recorded episodes: frames and the actions between them.

A clip is ``clip_length`` frames taken every ``frame_skip`` frames from one episode, and the
``clip_length - 1`` actions between consecutive clip frames::

    frames  (T, H, W, 3) uint8, or float32 in [0, 1]      (T = clip_length)
    actions (T-1, 5) float32: dx, dy, dz (m), dyaw (rad), gripper in [-1, 1]
    poses   (T, 5) float64: arm pose at each frame

With ``frame_skip = k`` the action between two clip frames is the sum of the k recorded deltas
(dx, dy, dz, dyaw) and the last gripper command, i.e. the net motion between the two frames.

Sources: folders written by ``collect-finetune-data`` (:mod:`maskvit_mpc.robot.episodes`) and
RoboNet's HDF5 layout with JPEG-encoded frames (:func:`robonet_episodes`). Train and validation
are split by episode, never by clip, with a hash of the episode's name, so the split is
deterministic and an episode keeps its side when more episodes are collected. Several folders are
mixed with weights through :func:`make_datasets` (a ``WeightedRandomSampler`` over the union).

Nothing heavy happens at import; h5py files are opened lazily, per worker process.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, WeightedRandomSampler

from ..configs.errors import UserError
from ..configs.schema import DataConfig
from ..robot import episodes as ep_io
from ..robot.types import ACTION_DIM

Split = Literal["train", "val", "all"]
log = logging.getLogger(__name__)


class DataError(UserError):
    """Episode data that cannot be used for training; the message says why and what to do."""


# --- episode sources ---------------------------------------------------------------------------


_MAX_OPEN_FILES = 64  # per process: thousands of episodes must not exhaust file descriptors
_open_files: OrderedDict[Path, h5py.File] = OrderedDict()
_open_pid = -1


def _open_h5(path: Path) -> h5py.File:
    """A read handle from a small per-process LRU cache (DataLoader workers fork: never share handles)."""
    global _open_pid
    if _open_pid != os.getpid():
        _open_files.clear()  # handles inherited from the parent process are not ours to use
        _open_pid = os.getpid()
    f = _open_files.get(path)
    if f is None:
        while _open_files and len(_open_files) >= _MAX_OPEN_FILES:
            _open_files.popitem(last=False)[1].close()
        f = _open_files[path] = h5py.File(path, "r")
    _open_files.move_to_end(path)
    return f


class _H5Source:
    """Lazy access to one HDF5 file through the per-process handle cache."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _h5(self) -> h5py.File:
        return _open_h5(self.path)

    @property
    def name(self) -> str:
        return self.path.name


class RecordedEpisode(_H5Source):
    """An episode file written by :mod:`maskvit_mpc.robot.episodes`."""

    def __init__(self, path: Path, num_frames: int) -> None:
        super().__init__(path)
        self.num_frames = int(num_frames)

    def frames(self, start: int, stop: int, step: int) -> np.ndarray:
        return self._h5()["frames"][start:stop:step]

    def actions(self, start: int, stop: int, source: str) -> np.ndarray:
        return self._h5()["actions"][source][start:stop].astype(np.float32)

    def poses(self, start: int, stop: int, step: int) -> np.ndarray:
        return self._h5()["state/pose"][start:stop:step]

    def object_positions(self) -> np.ndarray | None:
        """(num_frames, K, 3) object centres in metres (recorded in simulation), None without them."""
        f = self._h5()
        if "objects/positions" not in f:
            return None
        return np.asarray(f["objects/positions"][:], dtype=np.float64)


class RoboNetEpisode(_H5Source):
    """One RoboNet HDF5 file: ``env/cam{i}_video/frame{t}`` JPEG bytes, ``policy/actions``, ``env/state``.

    RoboNet's 4-D actions (dx, dy, dz, gripper) gain a zero dyaw; 5-D ones are taken as they are.
    Only the per-frame JPEG encoding is read; files with ``cam_encoding = mp4`` are refused.
    """

    def __init__(self, path: Path, camera: int = 0) -> None:
        super().__init__(path)
        self.camera = camera
        try:
            with h5py.File(self.path, "r") as f:
                env = f["env"]
                encoding = env.attrs.get("cam_encoding", "jpg")
                if isinstance(encoding, bytes):
                    encoding = encoding.decode()
                if encoding != "jpg":
                    raise DataError(
                        f"{path}: RoboNet frames are {encoding}-encoded; only the jpg layout is supported "
                        "(re-export the file with per-frame JPEGs)"
                    )
                group = env[f"cam{camera}_video"]
                self.num_frames = sum(1 for k in group if k.startswith("frame"))
                adim = f["policy/actions"].shape[1]
                self._bgr = str(group["frame0"].attrs.get("image_format", "RGB")).upper() == "BGR"
        except (OSError, KeyError) as exc:
            raise DataError(f"{path}: not a RoboNet HDF5 episode with camera {camera} ({exc})") from None
        if adim not in (4, 5):
            raise DataError(f"{path}: RoboNet actions have {adim} dimensions; expected 4 or 5")

    def frames(self, start: int, stop: int, step: int) -> np.ndarray:
        from PIL import Image

        group = self._h5()["env"][f"cam{self.camera}_video"]
        out = []
        for t in range(start, stop, step):
            img = np.asarray(Image.open(io.BytesIO(group[f"frame{t}"][()].tobytes())).convert("RGB"))
            out.append(img[..., ::-1] if self._bgr else img)
        return np.stack(out)

    def actions(self, start: int, stop: int, source: str) -> np.ndarray:
        a = self._h5()["policy/actions"][start:stop].astype(np.float32)
        if a.shape[1] == 4:
            a = np.concatenate([a[:, :3], np.zeros((len(a), 1), np.float32), a[:, 3:]], axis=1)
        return a

    def poses(self, start: int, stop: int, step: int) -> np.ndarray:
        s = self._h5()["env/state"][start:stop:step].astype(np.float64)
        out = np.zeros((len(s), ACTION_DIM))
        out[:, : min(ACTION_DIM, s.shape[1])] = s[:, :ACTION_DIM]
        return out


def recorded_episodes(folder: str | Path) -> list[RecordedEpisode]:
    """The completed episodes of a ``collect-finetune-data`` folder (lengths from its manifest)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"episode folder {folder} does not exist; record one with collect-finetune-data")
    manifest = ep_io.load_or_rebuild_manifest(folder)
    return [RecordedEpisode(folder / e["file"], e["frames"]) for e in manifest.episodes]


def robonet_episodes(folder: str | Path, camera: int = 0) -> list[RoboNetEpisode]:
    """Every ``*.hdf5`` / ``*.h5`` file of a RoboNet folder, read with camera ``camera``."""
    folder = Path(folder)
    files = sorted([*folder.glob("*.hdf5"), *folder.glob("*.h5")])
    if not files:
        raise DataError(f"no RoboNet .hdf5 files in {folder}")
    return [RoboNetEpisode(p, camera) for p in files]


# --- split --------------------------------------------------------------------------------------


def _episode_hash(name: str, seed: int) -> float:
    return zlib.crc32(f"{seed}:{name}".encode()) / 2**32


def split_by_episode(names: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of train and validation episodes, decided by a hash of each name (deterministic).

    An episode is in validation when its hash falls below ``val_fraction``, so adding episodes never
    moves an existing one across the split. With at least two episodes and ``val_fraction > 0`` the
    validation side is never empty (the lowest hash goes there).
    """
    hashes = [_episode_hash(n, seed) for n in names]
    val = [i for i, h in enumerate(hashes) if h < val_fraction]
    if not val and val_fraction > 0 and len(names) >= 2:
        val = [int(np.argmin(hashes))]
    val_set = set(val)
    return [i for i in range(len(names)) if i not in val_set], sorted(val)


# --- the dataset --------------------------------------------------------------------------------


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) float32 in [0, 255], area interpolation."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(size, size), mode="area")
    return x.permute(0, 2, 3, 1)


class EpisodeClips(Dataset):
    """Clips of ``clip_length`` frames (every ``frame_skip``-th) and the actions between them.

    Each item is a dict: ``frames`` (T, H, W, 3) uint8 (or float32 in [0, 1] with ``float_frames``),
    ``actions`` (T-1, 5) float32, ``poses`` (T, 5) float64, ``episode`` (index into ``episodes``)
    and ``start`` (first frame index in the episode).
    """

    def __init__(
        self,
        episodes: Sequence[RecordedEpisode | RoboNetEpisode],
        clip_length: int = 12,
        frame_skip: int = 1,
        image_size: int | None = None,
        split: Split = "all",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        action_source: Literal["applied", "commanded"] = "applied",
        float_frames: bool = False,
        clip_stride: int = 1,
    ) -> None:
        if clip_length < 2:
            raise DataError(f"clip_length must be >= 2 (context + future frames), got {clip_length}")
        if frame_skip < 1 or clip_stride < 1:
            raise DataError("frame_skip and clip_stride must be >= 1")
        if split not in ("train", "val", "all"):
            raise DataError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if split != "all":
            train, val = split_by_episode([e.name for e in episodes], val_fraction, split_seed)
            episodes = [episodes[i] for i in (train if split == "train" else val)]
        self.episodes = list(episodes)
        self.clip_length = clip_length
        self.frame_skip = frame_skip
        self.image_size = image_size
        self.action_source = action_source
        self.float_frames = float_frames
        self.span = (clip_length - 1) * frame_skip + 1  # recorded frames one clip covers
        self._index = np.array(
            [
                (i, s)
                for i, e in enumerate(self.episodes)
                for s in range(0, e.num_frames - self.span + 1, clip_stride)
            ],
            dtype=np.int64,
        ).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._index)

    def clip_location(self, item: int) -> tuple[int, int]:
        """(episode index, first frame) of clip ``item``."""
        i, start = self._index[item]
        return int(i), int(start)

    def clip_actions(self, episode: int, start: int) -> np.ndarray:
        """(T-1, 5) float32 actions between the frames of the clip starting at ``start``."""
        raw = self.episodes[episode].actions(start, start + self.span - 1, self.action_source)  # (span-1, 5)
        return sum_actions(raw, self.clip_length, self.frame_skip)

    def clip_object_motion(self) -> np.ndarray | None:
        """(len(self),) largest horizontal distance (m) an object travels between a clip's first and last
        frame; None when an episode has no recorded object positions (real robots record none)."""
        motion = np.zeros(len(self), dtype=np.float64)
        # the index lists each episode's clips together, in episode order
        bounds = np.searchsorted(self._index[:, 0], np.arange(len(self.episodes) + 1))
        for i, episode in enumerate(self.episodes):
            positions = episode.object_positions() if isinstance(episode, RecordedEpisode) else None
            if positions is None:
                return None
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi or positions.shape[1] == 0:
                continue
            starts = self._index[lo:hi, 1]
            moved = positions[starts + self.span - 1, :, :2] - positions[starts, :, :2]
            motion[lo:hi] = np.linalg.norm(moved, axis=-1).max(axis=-1)
        return motion

    def clip_segmentation(self, item: int) -> torch.Tensor | None:
        """(T, H, W) uint8 labels of clip ``item`` (0 table, 1 gripper, 2+ objects), None without them."""
        i, start = (int(v) for v in self._index[item])
        episode = self.episodes[i]
        if not isinstance(episode, RecordedEpisode):
            return None
        f = episode._h5()
        if "segmentation" not in f:
            return None
        return torch.from_numpy(f["segmentation"][start : start + self.span : self.frame_skip])

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        i, start = (int(v) for v in self._index[item])
        episode = self.episodes[i]
        stop = start + self.span
        frames = torch.from_numpy(np.ascontiguousarray(episode.frames(start, stop, self.frame_skip)))
        actions = self.clip_actions(i, start)
        if self.image_size is not None and frames.shape[1:3] != (self.image_size, self.image_size):
            frames = resize_frames(frames, self.image_size)
            frames = frames / 255.0 if self.float_frames else frames.round().clamp(0, 255).to(torch.uint8)
        elif self.float_frames:
            frames = frames.float() / 255.0
        return {
            "frames": frames,
            "actions": torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)),
            "poses": torch.from_numpy(np.ascontiguousarray(episode.poses(start, stop, self.frame_skip))),
            "episode": i,
            "start": start,
        }


def sum_actions(raw: np.ndarray, clip_length: int, frame_skip: int) -> np.ndarray:
    """Recorded per-step actions ((clip_length - 1) * frame_skip, 5) -> (clip_length - 1, 5) between clip
    frames: deltas summed, the gripper (an absolute command) taken from the last step."""
    steps = np.asarray(raw, dtype=np.float32).reshape(clip_length - 1, frame_skip, ACTION_DIM)
    actions = steps.sum(axis=1)
    actions[:, 4] = steps[:, -1, 4]
    return actions


@dataclass
class ClipData:
    """Train and validation clips over several folders, and a sampler that mixes them by weight."""

    train: ConcatDataset
    val: ConcatDataset
    train_sampler: WeightedRandomSampler


def make_datasets(
    cfg: DataConfig,
    folders: Sequence[str | Path] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> ClipData:
    """Datasets for ``cfg.folders`` (or ``folders``), each split by episode and mixed by ``cfg.weights``.

    The sampler draws ``num_samples`` train clips per epoch (default: all of them) so that folder
    ``k`` supplies a share ``weights[k] / sum(weights)`` whatever its size.
    """
    folders = list(folders if folders is not None else cfg.folders)
    if not folders:
        raise DataError("no episode folders given: set data.folders (e.g. --set data.folders=[runs/sim])")
    weights = list(cfg.weights) if cfg.weights else [1.0] * len(folders)
    if len(weights) != len(folders):
        raise DataError(f"{len(weights)} weights for {len(folders)} folders: give one weight per folder")
    common = {
        "clip_length": cfg.clip_length,
        "frame_skip": cfg.frame_skip,
        "image_size": cfg.image_size,
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
        "action_source": cfg.action_source,
        "float_frames": cfg.float_frames,
    }
    train_sets, val_sets, sample_weights = [], [], []
    for folder, w in zip(folders, weights, strict=True):
        episodes = recorded_episodes(folder)
        train = EpisodeClips(episodes, split="train", **common)
        val = EpisodeClips(episodes, split="val", **common)
        if len(train) == 0:
            raise DataError(
                f"{folder}: no training clips of {cfg.clip_length} frames (skip {cfg.frame_skip}); "
                "record longer episodes or shorten data.clip_length"
            )
        train_sets.append(train)
        val_sets.append(val)
        clip_weights = np.ones(len(train))
        if cfg.motion_oversample != 1.0:
            motion = train.clip_object_motion()
            if motion is None:
                log.warning(
                    "%s: no recorded object positions, so data.motion_oversample has no effect", folder
                )
            else:
                moving = motion >= cfg.motion_threshold_m
                clip_weights[moving] = cfg.motion_oversample
                share = float(clip_weights[moving].sum() / clip_weights.sum())
                log.info(
                    "%s: %.0f%% of training clips move an object >= %.3g m; they make %.0f%% of the draws",
                    folder,
                    100 * moving.mean(),
                    cfg.motion_threshold_m,
                    100 * share,
                )
        if clip_weights.sum() <= 0:
            raise DataError(
                f"{folder}: every clip has weight 0 (data.motion_oversample is 0 and all clips move)"
            )
        sample_weights.append(torch.from_numpy(float(w) * clip_weights / clip_weights.sum()))
    gen = torch.Generator().manual_seed(seed)
    weights_t = torch.cat(sample_weights)
    if float(weights_t.sum()) <= 0:
        raise DataError("all folder weights are zero; give at least one folder a positive weight")
    sampler = WeightedRandomSampler(
        weights_t, num_samples=num_samples or len(weights_t), replacement=True, generator=gen
    )
    return ClipData(train=ConcatDataset(train_sets), val=ConcatDataset(val_sets), train_sampler=sampler)
