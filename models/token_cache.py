"""Codes of every recorded frame, computed once per tokenizer, and the token clips MaskViT trains on.

MaskViT's tokenizer is frozen, so encoding the same frames again at every step wastes most of a CPU's
training time (encoding a batch of 32 clips of 12 frames costs more than the transformer's step). The
cache maps each episode file to its codes ``(num_frames, h, w)`` and its actions, is written beside the
run's checkpoints, and is keyed by a hash of the tokenizer's weights: a different tokenizer never reuses
stale codes, and episodes recorded after the cache was made are encoded on the next start.

    cache = TokenCache.load_or_build(out / "token_cache.pt", tokenizer, weights_digest(tokenizer), episodes)
    train = TokenClips(episode_clips, cache)   # items: tokens (T, h, w) long, actions (T-1, 5) float32
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from .data import EpisodeClips, RecordedEpisode, RoboNetEpisode, resize_frames, sum_actions
from .tokenizer import VQModel
from .training import file_digest, weights_digest

__all__ = ["TokenCache", "TokenClips", "file_digest", "token_datasets", "weights_digest"]

log = logging.getLogger(__name__)

_FORMAT = "maskvit_mpc.token_cache/1"
Episode = RecordedEpisode | RoboNetEpisode


def _key(episode: Episode) -> str:
    return str(Path(episode.path).resolve())


class TokenCache:
    """Per-episode codes (int16, or int32 beyond 32767 codes) and actions, for one tokenizer."""

    def __init__(self, tokenizer_id: str, image_size: int) -> None:
        self.tokenizer_id = tokenizer_id
        self.image_size = image_size
        self.codes: dict[str, Tensor] = {}
        self.actions: dict[str, dict[str, np.ndarray]] = {}
        self.poses: dict[str, np.ndarray] = {}  # (num_frames, 3) float32 end-effector x, y, z
        # (num_frames, h, w) bool: the token cells that hold an object's pixels (segmentation label 2+);
        # only for episodes recorded with segmentation (the simulator's)
        self.objects: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self.codes)

    def has(self, episode: Episode) -> bool:
        return _key(episode) in self.codes

    def episode_codes(self, episode: Episode) -> Tensor:
        return self.codes[_key(episode)]

    def episode_actions(self, episode: Episode, source: str) -> np.ndarray:
        return self.actions[_key(episode)][source]

    def episode_positions(self, episode: Episode) -> np.ndarray:
        """(num_frames, 3) float32: the end effector's x, y, z (metres) at each frame."""
        return self.poses[_key(episode)]

    def episode_objects(self, episode: Episode) -> Tensor | None:
        """(num_frames, h, w) bool: token cells showing an object, None without segmentation."""
        return self.objects.get(_key(episode))

    @torch.no_grad()
    def add(
        self,
        episodes: Sequence[Episode],
        tokenizer: VQModel,
        batch_frames: int = 256,
        progress: bool = True,
    ) -> int:
        """Encode the episodes not cached yet; returns how many were added (or given their positions and
        object cells: caches written before those were kept get them from the episode files, without
        encoding)."""
        for episode in episodes:
            if self.has(episode) and _key(episode) not in self.poses:
                self.poses[_key(episode)] = _positions(episode)
            if self.has(episode) and _key(episode) not in self.objects:
                self._add_objects(episode)
        todo = [e for e in episodes if not self.has(e)]
        if not todo:
            return 0
        device = next(tokenizer.parameters()).device
        dtype = torch.int16 if tokenizer.num_codes <= 32767 else torch.int32
        tokenizer.eval()
        for episode in tqdm(todo, desc="tokenizing episodes", disable=not progress, dynamic_ncols=True):
            frames = torch.from_numpy(np.ascontiguousarray(episode.frames(0, episode.num_frames, 1)))
            if frames.shape[1:3] != (self.image_size, self.image_size):
                frames = resize_frames(frames, self.image_size).round().clamp(0, 255).to(torch.uint8)
            codes = []
            for chunk in frames.split(batch_frames):
                x = chunk.to(device).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
                codes.append(tokenizer.encode(x).to("cpu", dtype))
            key = _key(episode)
            self.codes[key] = torch.cat(codes)  # (num_frames, h, w)
            n_actions = episode.num_frames - 1
            self.actions[key] = {
                source: episode.actions(0, n_actions, source).astype(np.float32)
                for source in _action_sources(episode)
            }
            self.poses[key] = _positions(episode)
            self._add_objects(episode)
        return len(todo)

    def _add_objects(self, episode: Episode) -> None:
        grid = tuple(self.episode_codes(episode).shape[-2:])
        cells = _object_cells(episode, self.image_size, grid)  # type: ignore[arg-type]
        if cells is not None:
            self.objects[_key(episode)] = cells

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "tokenizer_id": self.tokenizer_id,
            "image_size": self.image_size,
            "codes": self.codes,
            "actions": {k: {s: torch.from_numpy(a) for s, a in v.items()} for k, v in self.actions.items()},
            "poses": {k: torch.from_numpy(p) for k, p in self.poses.items()},
            "objects": self.objects,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, tokenizer_id: str, image_size: int) -> TokenCache | None:
        """The cache at ``path`` if it was made by this tokenizer at this size; None otherwise."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: rebuild rather than fail the run
            log.warning("ignoring unreadable token cache %s (%s); encoding again", path, exc)
            return None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or data.get("tokenizer_id") != tokenizer_id
            or data.get("image_size") != image_size
        ):
            log.info("token cache %s belongs to another tokenizer or size; encoding again", path)
            return None
        cache = cls(tokenizer_id, image_size)
        cache.codes = data["codes"]
        cache.actions = {k: {s: a.numpy() for s, a in v.items()} for k, v in data["actions"].items()}
        cache.poses = {k: p.numpy() for k, p in data.get("poses", {}).items()}
        cache.objects = dict(data.get("objects", {}))
        return cache

    @classmethod
    def load_or_build(
        cls,
        path: str | Path,
        tokenizer: VQModel,
        tokenizer_id: str,
        episodes: Sequence[Episode],
        progress: bool = True,
    ) -> TokenCache:
        """Load the cache, encode whatever episodes it lacks, and save it if anything was added."""
        cache = cls.load(path, tokenizer_id, tokenizer.image_size) or cls(tokenizer_id, tokenizer.image_size)
        had_positions, had_objects = len(cache.poses), len(cache.objects)
        added = cache.add(episodes, tokenizer, progress=progress)
        positioned = len(cache.poses) - had_positions - added
        if added or positioned or len(cache.objects) != had_objects:
            cache.save(path)
            objects = len(cache.objects) - had_objects - added
            log.info("encoded %d episodes into %s (%d cached in all%s%s)", added, path, len(cache),
                     f"; arm positions added for {positioned} cached before" if positioned else "",
                     f"; object cells added for {objects} cached before" if objects > 0 else "")  # fmt: skip
        return cache


def _positions(episode: Episode) -> np.ndarray:
    return np.ascontiguousarray(episode.poses(0, episode.num_frames, 1)[:, :3], dtype=np.float32)


def _object_cells(episode: Episode, image_size: int, grid: tuple[int, int]) -> Tensor | None:
    """(num_frames, h, w) bool: the token cells with any object pixel (label 2+ of the recorded
    segmentation, brought to the tokenizer's image size); None when the episode has no segmentation."""
    if not isinstance(episode, RecordedEpisode):
        return None
    f = episode._h5()
    if "segmentation" not in f:
        return None
    labels = torch.from_numpy(f["segmentation"][:])  # (T, H, W) uint8: 0 table, 1 gripper, 2+ objects
    objects = (labels >= 2).float()[:, None]
    if objects.shape[-2:] != (image_size, image_size):
        objects = torch.nn.functional.interpolate(objects, size=(image_size, image_size), mode="nearest")
    return torch.nn.functional.adaptive_max_pool2d(objects, grid)[:, 0] > 0


def _action_sources(episode: Episode) -> tuple[str, ...]:
    return ("applied", "commanded") if isinstance(episode, RecordedEpisode) else ("applied",)


class TokenClips(Dataset):
    """The clips of an :class:`EpisodeClips`, served from the cache: ``tokens`` (T, h, w) long, ``actions``
    (T-1, 5) float32, ``start_pose`` (3,) float32 (the end effector's x, y, z at the clip's first frame),
    ``objects`` (T, h, w) bool (the token cells showing an object; all False for episodes recorded
    without segmentation), ``episode`` and ``start`` as there. Item ``i`` is the same clip as
    ``clips[i]``."""

    def __init__(self, clips: EpisodeClips, cache: TokenCache) -> None:
        missing = [e.name for e in clips.episodes if not cache.has(e)]
        if missing:
            raise KeyError(f"{len(missing)} episodes are not in the token cache, e.g. {missing[0]}")
        self.clips = clips
        self.cache = cache

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item: int) -> dict[str, Tensor | int]:
        i, start = self.clips.clip_location(item)
        episode = self.clips.episodes[i]
        stop = start + self.clips.span
        tokens = self.cache.episode_codes(episode)[start : stop : self.clips.frame_skip].long()
        source = self.clips.action_source
        if source not in self.cache.actions[_key(episode)]:
            source = "applied"
        raw = self.cache.episode_actions(episode, source)[start : stop - 1]
        actions = sum_actions(raw, self.clips.clip_length, self.clips.frame_skip)
        start_pose = torch.from_numpy(self.cache.episode_positions(episode)[start].copy())
        cells = self.cache.episode_objects(episode)
        if cells is None:
            objects = torch.zeros(tokens.shape, dtype=torch.bool)
        else:
            objects = cells[start : stop : self.clips.frame_skip]
        return {
            "tokens": tokens,
            "objects": objects,
            "actions": torch.from_numpy(actions),
            "start_pose": start_pose,
            "episode": i,
            "start": start,
        }


def token_datasets(clips: ConcatDataset, cache: TokenCache) -> ConcatDataset:
    """The same concatenation of episode clips (same item order, so samplers carry over), as tokens."""
    return ConcatDataset([TokenClips(part, cache) for part in clips.datasets])  # type: ignore[arg-type]
