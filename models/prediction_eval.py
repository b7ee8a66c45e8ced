"""How good MaskViT's predictions are, measured the way the planner needs them.

Given clips of true frames, their tokens and actions, the model sees the context frames' tokens and the
actions, decodes the future iteratively (the same decoding the planner uses), and the tokenizer turns the
codes back into frames. Reported, over the predicted frames only:

- PSNR / SSIM against the true frames, for the prediction and for the copy-last-frame baseline (the last
  context frame repeated), and the tokenizer's own reconstruction of the truth (the ceiling the
  prediction cannot beat);
- in simulation (episodes with segmentation), the error of each object's predicted position: the
  centroid of the pixels of the object's colour near where it last was, against the centroid of its true
  pixels; separately over the objects that moved, since a still object is easy to get right. Pixel
  metrics say little about control; object motion says more.

    metrics = evaluate_predictions(model, tokenizer, batch, context_frames=2, steps=5)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from .decoding import iterative_decode
from .maskvit import MaskViT
from .metrics import psnr, ssim
from .tokenizer import VQModel

__all__ = [
    "ClipBatch",
    "ObjectErrors",
    "clip_batch",
    "clip_segmentation",
    "decode_future",
    "evaluate_predictions",
    "object_position_errors",
]

_FIRST_OBJECT = 2  # segmentation labels: 0 table, 1 gripper, 2 + i objects
_COLOUR_TOLERANCE = 0.2  # RGB distance (0-1 scale) within which a predicted pixel counts as the object's
_SEARCH_RADIUS_PX = 12  # objects are searched this close to where they were in the last context frame
_MOVED_PX = 1.0  # an object counts as moved when its true centroid shifts more than this in the clip


@torch.no_grad()
def decode_future(
    model: MaskViT,
    tokens: Tensor,
    actions: Tensor | None,
    context_frames: int,
    steps: int = 5,
    schedule: str = "cosine",
    temperature: float = 0.0,
    confidence_noise: float = 0.0,
    generator: torch.Generator | None = None,
    start_pose: Tensor | None = None,
) -> Tensor:
    """tokens (B, T, h, w): the first ``context_frames`` are given, the rest are decoded -> (B, T, h, w).
    ``start_pose`` (B, 3): the arm's position at the first frame, for a pose-conditioned model."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, context_frames:] = True
    result = iterative_decode(
        lambda t: model(t, actions, start_pose),
        tokens,
        mask,
        model.mask_token,
        steps=steps,
        schedule=schedule,
        temperature=temperature,
        confidence_noise=confidence_noise,
        generator=generator,
    )
    return result.tokens


def _centroids(mask: Tensor) -> Tensor:
    """(..., H, W) bool -> (..., 2) float (row, col) centroid, NaN where the mask is empty."""
    H, W = mask.shape[-2:]
    m = mask.float()
    count = m.sum((-2, -1))
    rows = torch.arange(H, dtype=torch.float32, device=mask.device)
    cols = torch.arange(W, dtype=torch.float32, device=mask.device)
    r = (m.sum(-1) * rows).sum(-1) / count
    c = (m.sum(-2) * cols).sum(-1) / count
    out = torch.stack([r, c], dim=-1)
    return torch.where(count[..., None] > 0, out, torch.full_like(out, math.nan))


@dataclass
class ObjectErrors:
    """Per object and future frame, pixels: (B, T_future, n_objects), NaN where an object is absent."""

    predicted: Tensor  # predicted centroid vs true centroid (NaN also where the prediction lost it)
    copy_last: Tensor  # the last context frame's centroid vs the true one
    moved: Tensor  # bool: the object moved more than _MOVED_PX within the clip
    found: Tensor  # bool: the object is in the truth and its colour was found in the prediction


def object_position_errors(
    predicted: Tensor, true: Tensor, segmentation: Tensor, context_frames: int, max_objects: int = 6
) -> ObjectErrors:
    """predicted, true: (B, T, 3, H, W) float in [0, 1]; segmentation: (B, T, H, W) labels of ``true``.

    An object's colour is the mean of its true pixels in the last context frame; in each predicted frame
    its pixels are those within ``_COLOUR_TOLERANCE`` of that colour and ``_SEARCH_RADIUS_PX`` of its last
    context position (so another object of a similar colour across the table does not count).
    """
    B, T, _, H, W = true.shape
    last = context_frames - 1
    labels = torch.arange(_FIRST_OBJECT, _FIRST_OBJECT + max_objects, device=true.device)
    true_masks = segmentation[:, :, None] == labels[None, None, :, None, None]  # (B, T, K, H, W)
    true_c = _centroids(true_masks)  # (B, T, K, 2)
    ref_mask = true_masks[:, last]  # (B, K, H, W)
    count = ref_mask.float().sum((-2, -1)).clamp_min(1.0)  # (B, K)
    colour = torch.einsum("bchw,bkhw->bkc", true[:, last], ref_mask.float()) / count[..., None]  # (B, K, 3)
    rows = torch.arange(H, device=true.device).float()[:, None]
    cols = torch.arange(W, device=true.device).float()[None, :]
    ref_c = true_c[:, last]  # (B, K, 2)
    near = (rows - ref_c[..., 0, None, None]) ** 2 + (cols - ref_c[..., 1, None, None]) ** 2
    near = near <= _SEARCH_RADIUS_PX**2  # (B, K, H, W), all false for an absent object (NaN centroid)
    future = predicted[:, context_frames:]  # (B, F, 3, H, W)
    distance = (
        (future[:, :, None] - colour[:, None, :, :, None, None]).pow(2).sum(3).sqrt()
    )  # (B, F, K, H, W)
    pred_masks = (distance < _COLOUR_TOLERANCE) & near[:, None]
    pred_c = _centroids(pred_masks)
    truth_future = true_c[:, context_frames:]
    err_pred = (pred_c - truth_future).norm(dim=-1)
    err_copy = (ref_c[:, None] - truth_future).norm(dim=-1)
    moved = ((true_c[:, -1] - ref_c).norm(dim=-1) > _MOVED_PX)[:, None].expand_as(err_copy)
    present = ~torch.isnan(truth_future[..., 0]) & ~torch.isnan(ref_c[:, None, :, 0])
    return ObjectErrors(
        predicted=torch.where(present, err_pred, torch.full_like(err_pred, math.nan)),
        copy_last=torch.where(present, err_copy, torch.full_like(err_copy, math.nan)),
        moved=moved & present,
        found=present & ~torch.isnan(err_pred),
    )


def _nanmean(x: Tensor) -> float:
    return float(torch.nanmean(x.float()))  # NaN when there is nothing to measure


@torch.no_grad()
def evaluate_predictions(
    model: MaskViT,
    tokenizer: VQModel,
    frames: Tensor,
    tokens: Tensor,
    actions: Tensor | None,
    context_frames: int,
    segmentation: Tensor | None = None,
    steps: int = 5,
    schedule: str = "cosine",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    start_pose: Tensor | None = None,
) -> dict[str, float]:
    """Metrics of one batch of clips. frames: (B, T, H, W, 3) uint8 true frames; tokens: their codes
    (B, T, h, w); actions (B, T-1, 5) or None; segmentation (B, T, H, W) or None (real data);
    start_pose (B, 3) the arm's position at the first frame (pose-conditioned models)."""
    model.eval()
    tokenizer.eval()
    B, T = tokens.shape[:2]
    decoded = decode_future(
        model, tokens, actions, context_frames, steps, schedule, temperature, 0.0, generator, start_pose
    )
    # pixels and their metrics in fp32 even under a caller's bf16 autocast: SSIM's local variances
    # cancel catastrophically in bf16, and the planner decodes frames in fp32 too
    with torch.autocast(tokens.device.type, enabled=False):
        size = tokenizer.image_size
        true = frames.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, 3, H, W)
        if true.shape[-1] != size:
            true = F.interpolate(true.flatten(0, 1), size=(size, size), mode="area").unflatten(0, (B, T))
        pred = tokenizer.decode(decoded.flatten(0, 1)).unflatten(0, (B, T)).float()  # (B, T, 3, S, S)
        recon = tokenizer.decode(tokens[:, context_frames:].flatten(0, 1)).float()
        copy = true[:, context_frames - 1 : context_frames].expand(-1, T - context_frames, -1, -1, -1)
        truth = true[:, context_frames:].flatten(0, 1)
        future_pred = pred[:, context_frames:].flatten(0, 1)
        copy_flat = copy.reshape(truth.shape)
        out = {
            "pred_psnr": float(psnr(future_pred, truth).mean()),
            "pred_ssim": float(ssim(future_pred, truth).mean()),
            "copy_last_psnr": float(psnr(copy_flat, truth).mean()),
            "copy_last_ssim": float(ssim(copy_flat, truth).mean()),
            "recon_psnr": float(psnr(recon, truth).mean()),
            "token_accuracy": float(
                (decoded[:, context_frames:] == tokens[:, context_frames:]).float().mean()
            ),
            # on the tokens that differ from the previous true frame's: where motion is (NaN if none)
            "changed_token_accuracy": _nanmean(
                torch.where(
                    tokens[:, context_frames:] != tokens[:, context_frames - 1 : -1],
                    (decoded[:, context_frames:] == tokens[:, context_frames:]).float(),
                    torch.full(tokens[:, context_frames:].shape, math.nan, device=tokens.device),
                )
            ),
        }
        if segmentation is not None:
            if segmentation.shape[-1] != size:
                segmentation = (
                    F.interpolate(
                        segmentation.flatten(0, 1)[:, None].float(), size=(size, size), mode="nearest"
                    )
                    .long()[:, 0]
                    .unflatten(0, (B, T))
                )
            errors = object_position_errors(pred, true, segmentation.to(pred.device), context_frames)
            moved = errors.moved
            present = ~torch.isnan(errors.copy_last)
            out.update(
                object_err_px=_nanmean(errors.predicted),
                copy_last_object_err_px=_nanmean(errors.copy_last),
                moved_object_err_px=_nanmean(errors.predicted[moved]),
                copy_last_moved_object_err_px=_nanmean(errors.copy_last[moved]),
                object_found=float(errors.found.sum()) / max(1, int(present.sum())),
            )
    return out


@dataclass
class ClipBatch:
    frames: Tensor  # (B, T, H, W, 3) uint8
    tokens: Tensor  # (B, T, h, w) long
    actions: Tensor  # (B, T-1, 5) float32
    start_pose: Tensor  # (B, 3) float32, the end effector's x, y, z at the first frame
    segmentation: Tensor | None  # (B, T, H, W) uint8, None unless every clip has one


def clip_batch(clips: Dataset, tokens: Dataset, indices: list[int]) -> ClipBatch:
    """The same clips from an (Concat)EpisodeClips dataset and its token twin, stacked."""
    items = [clips[i] for i in indices]
    token_items = [tokens[i] for i in indices]
    segs = [clip_segmentation(clips, i) for i in indices]
    return ClipBatch(
        frames=torch.stack([torch.as_tensor(it["frames"]) for it in items]),
        tokens=torch.stack([it["tokens"] for it in token_items]),
        actions=torch.stack([it["actions"] for it in token_items]),
        start_pose=torch.stack([it["start_pose"] for it in token_items]),
        segmentation=None if any(s is None for s in segs) else torch.stack(segs),  # type: ignore[misc]
    )


def clip_segmentation(clips: Dataset, index: int) -> Tensor | None:
    """(T, H, W) labels of clip ``index`` of an EpisodeClips or a concatenation of them; None without."""
    if isinstance(clips, ConcatDataset):
        part = bisect.bisect_right(clips.cumulative_sizes, index)
        offset = clips.cumulative_sizes[part - 1] if part > 0 else 0
        return clip_segmentation(clips.datasets[part], index - offset)
    return clips.clip_segmentation(index)  # type: ignore[attr-defined]
