"""Single frames of recorded episodes, with a mask of the pixels that matter, for the tokenizer.

The tokenizer sees frames one at a time, so its dataset indexes (episode, frame) pairs rather than clips
(:mod:`maskvit_mpc.models.data` serves clips to MaskViT). It reuses that module's episode listing and
episode-level train/validation split, so both models hold out the same episodes.

The mask marks gripper and object pixels: ``segmentation > 0`` where the episode has a segmentation
(simulation); otherwise the pixels that change within the episode (:func:`metrics.changing_pixel_mask`),
which on a real robot's fixed camera are where the arm and the objects moved.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..configs.schema import DataConfig
from .data import DataError, RecordedEpisode, Split, recorded_episodes, resize_frames, split_by_episode
from .metrics import changing_pixel_mask

__all__ = ["EpisodeFrames", "frame_datasets"]

_MAX_OPEN_FILES = 256  # HDF5 files kept open per process


class EpisodeFrames(Dataset):
    """Every frame of every episode. Item: ``frame`` (3, S, S) float32 in [0, 1], ``mask`` (S, S) bool,
    ``has_segmentation`` bool, ``episode`` index into ``episodes``, ``t`` frame index in the episode."""

    def __init__(
        self, episodes: Sequence[RecordedEpisode], image_size: int, change_threshold: int = 10
    ) -> None:
        self.episodes = list(episodes)
        self.image_size = image_size
        self.change_threshold = change_threshold
        self._index = np.array(
            [(i, t) for i, e in enumerate(self.episodes) for t in range(e.num_frames)], dtype=np.int64
        ).reshape(-1, 2)
        self._files: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = -1
        self._change_masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = OrderedDict(), -1  # h5py handles do not cross process boundaries
        return state

    def _h5(self, i: int) -> h5py.File:
        if self._pid != os.getpid():
            self._files, self._pid = OrderedDict(), os.getpid()
        if i in self._files:
            self._files.move_to_end(i)
            return self._files[i]
        # a bounded set of open files: thousands of episodes would exhaust the descriptor limit
        while len(self._files) >= _MAX_OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        self._files[i] = h5py.File(self.episodes[i].path, "r")
        return self._files[i]

    def _resize_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape[-1] == self.image_size and mask.shape[-2] == self.image_size:
            return mask
        # nearest: a mask pixel stays a mask pixel, no blending of ids
        m = F.interpolate(mask[None, None].float(), size=(self.image_size, self.image_size), mode="nearest")
        return m[0, 0] > 0.5

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int | bool]:
        i, t = (int(v) for v in self._index[item])
        f = self._h5(i)
        frame = torch.from_numpy(np.asarray(f["frames"][t]))  # (H, W, 3) uint8
        has_seg = "segmentation" in f
        if has_seg:
            mask = torch.from_numpy(np.asarray(f["segmentation"][t]) > 0)
        else:
            if i not in self._change_masks:
                self._change_masks[i] = changing_pixel_mask(
                    torch.from_numpy(np.asarray(f["frames"][:])), self.change_threshold
                )
            mask = self._change_masks[i]
        if frame.shape[0] != self.image_size or frame.shape[1] != self.image_size:
            frame = resize_frames(frame[None], self.image_size)[0]
        return {
            "frame": frame.permute(2, 0, 1).float() / 255.0,
            "mask": self._resize_mask(mask),
            "has_segmentation": has_seg,
            "episode": i,
            "t": t,
        }


def frame_datasets(
    folders: Sequence[str | Path], data: DataConfig, image_size: int, split: Split = "all"
) -> EpisodeFrames:
    """Frames of the ``split`` episodes of each folder (the same episode split as the clip datasets)."""
    if not folders:
        raise DataError(
            "no episode folders given: pass --data DIR (folders written by collect-finetune-data)"
        )
    episodes: list[RecordedEpisode] = []
    for folder in folders:
        found = recorded_episodes(folder)
        if split != "all":
            train, val = split_by_episode([e.name for e in found], data.val_fraction, data.split_seed)
            found = [found[k] for k in (train if split == "train" else val)]
        episodes += found
    dataset = EpisodeFrames(episodes, image_size)
    if len(dataset) == 0:
        raise DataError(f"no {split} frames in {', '.join(map(str, folders))}: record episodes there first")
    return dataset
