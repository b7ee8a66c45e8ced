"""The exported predictor: tokenizer + MaskViT + iterative decoding as one TorchScript module.

``export-predictor`` turns a tokenizer checkpoint and a MaskViT checkpoint into one file the planner
loads with ``--predictor PATH``. The module (:class:`PredictorModule`) holds both networks in eval mode
and exposes, all compiled with ``torch.jit.script``:

* ``encode_context(frames uint8 (..., S, S, 3)) -> codes (..., h, w) int64`` (nearest code, fp32);
* ``predict_tokens(context_tokens (C, h, w) | (N, C, h, w), actions (N, C-1+H, 5), steps, temperature,
  generator, bf16) -> (N, H, h, w)``: the H future frames decoded iteratively, conditioned on the clip's
  actions (action t leads from frame t to frame t+1, so ``actions[:, C-1]`` is the first planned one);
* ``decode_frames(codes (..., h, w)) -> uint8 (..., S, S, 3)``;
* ``forward(context_frames (C, S, S, 3) uint8, actions) -> (N, H, S, S, 3) uint8``: the three chained.

The decoding settings of the MaskViT checkpoint (steps, schedule, temperature, confidence noise) are the
defaults; ``steps`` / ``temperature`` / ``bf16`` passed to a call override them (``None``: the
default); ``bf16`` runs a bf16 copy of the MaskViT weights kept in the module (faster in TorchScript
than its autocast). The mask schedule is computed inside the module from its name with the same formulas as
:func:`~.decoding.remask_ratios`, so any step count gives exactly the tokens the eager
:func:`~.prediction_eval.decode_future` gives. A seeded ``torch.Generator`` makes sampling reproducible;
temperature 0 is argmax and, without confidence noise, fully deterministic.

Metadata (resolution, token grid, context length, horizon, action bounds, decoding defaults, the
checkpoints' sha256 and steps, versions, a digest of the weights) is stored as the JSON extra file
``maskvit_mpc.json`` of the archive; :func:`load_exported_predictor` reads it, checks the weights
against their digest and refuses files that are not such a predictor, naming what it expected.

``--format export`` additionally writes a ``torch.export`` program (``.pt2``) of the whole prediction
with the decoding settings fixed at export time: the decoding loop is unrolled (its early exit is a
no-op here, every step reveals at least one token), so the program has no call-time overrides and
samples from torch's global generator; confidence noise does not trace for a variable number of
samples, so such an export needs ``confidence_noise`` 0. The planner loads the TorchScript file.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import Config, SafetyConfig
from .decoding import MASK_SCHEDULES, iterative_decode_step
from .maskvit import MaskViT, maskvit_from_checkpoint
from .tokenizer import VQModel, tokenizer_from_checkpoint
from .training import file_digest, weights_digest

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "DecodeOverrides",
    "ExportError",
    "LoadedPredictor",
    "PredictorMetadata",
    "PredictorModule",
    "build_predictor_module",
    "export_predictor",
    "UnpackedPredictor",
    "load_exported_predictor",
    "main",
    "unpack_predictor",
    "scripted_remask_ratios",
]

log = logging.getLogger(__name__)

FORMAT = "maskvit_mpc.predictor"
FORMAT_VERSION = 1
METADATA_FILE = "maskvit_mpc.json"  # the archive's extra file: extra/maskvit_mpc.json


class ExportError(UserError):
    """A predictor that cannot be exported, or a file that is not a usable exported predictor."""


# --- the mask schedule, scriptable -----------------------------------------------------------------


def scripted_remask_ratios(schedule: str, steps: int) -> list[float]:
    """gamma(s / S) for s = 1..S, the same floats as ``decoding.remask_ratios``; compiles with TorchScript."""
    if steps < 1:
        raise ValueError("decoding needs at least 1 step")
    ratios: list[float] = []
    for s in range(steps):
        r = (s + 1) / steps
        if r >= 1.0:  # cos(pi/2) is 6e-17, not 0: the last step leaves nothing masked
            ratios.append(0.0)
            continue
        if schedule == "cosine":
            g = math.cos(0.5 * math.pi * r)
        elif schedule == "linear":
            g = 1.0 - r
        elif schedule == "square":
            g = 1.0 - r * r
        elif schedule == "cubic":
            g = 1.0 - r**3
        elif schedule == "sqrt":
            g = 1.0 - math.sqrt(r)
        elif schedule == "exponential":
            rate = 5.0  # decoding._EXP_RATE (TorchScript cannot read module globals)
            g = (math.exp(-rate * r) - math.exp(-rate)) / (1.0 - math.exp(-rate))
        else:
            raise ValueError("unknown mask schedule " + schedule)
        ratios.append(min(1.0, max(0.0, g)))
    return ratios


# --- the module ------------------------------------------------------------------------------------


class PredictorModule(nn.Module):
    """Tokenizer + MaskViT + iterative decoding; see the module docstring for the methods and shapes.

    ``forward_passes`` counts the MaskViT forward passes of the last ``predict_tokens`` call.
    """

    def __init__(
        self,
        tokenizer: VQModel,
        maskvit: MaskViT,
        context_frames: int,
        decode_steps: int,
        schedule: str,
        temperature: float,
        confidence_noise: float,
        bf16: bool,
        metadata_json: str = "{}",
    ) -> None:
        super().__init__()
        if schedule not in MASK_SCHEDULES:
            raise ExportError(
                f"unknown mask schedule {schedule!r}; choose one of {', '.join(MASK_SCHEDULES)}"
            )
        if decode_steps < 1 or temperature < 0 or confidence_noise < 0:
            raise ExportError("decode_steps must be >= 1, temperature and confidence_noise >= 0")
        if not 1 <= context_frames < maskvit.num_frames:
            raise ExportError(
                f"context_frames ({context_frames}) must leave at least one of the model's "
                f"{maskvit.num_frames} frames to predict"
            )
        if (maskvit.grid_h, maskvit.grid_w) != (tokenizer.grid_size, tokenizer.grid_size):
            raise ExportError(
                f"MaskViT works on {maskvit.grid_h}x{maskvit.grid_w} tokens but the tokenizer gives "
                f"{tokenizer.grid_size}x{tokenizer.grid_size}: export with the tokenizer it was trained on"
            )
        if maskvit.codebook_size != tokenizer.num_codes:
            raise ExportError(
                f"MaskViT predicts {maskvit.codebook_size} codes but the tokenizer has {tokenizer.num_codes}: "
                "export with the tokenizer it was trained on"
            )
        self.tokenizer = tokenizer.eval()
        self.maskvit = maskvit.eval()
        # bf16 runs a bf16 copy of the weights: TorchScript's autocast rewrite ran the MaskViT at 1.1x the
        # speed of fp32 on a CPU with AMX, plain bf16 weights at 2.1x (eager autocast: 1.7x)
        self.maskvit_bf16 = copy.deepcopy(maskvit).to(torch.bfloat16).eval()
        self.image_size = tokenizer.image_size
        self.grid_h = maskvit.grid_h
        self.grid_w = maskvit.grid_w
        self.mask_token = maskvit.mask_token
        self.action_dim = maskvit.action_dim
        self.pose_conditioning = maskvit.pose_conditioning
        self.context_frames = context_frames
        self.future_frames = maskvit.num_frames - context_frames
        self.decode_steps = decode_steps
        self.schedule = schedule
        self.temperature = temperature
        self.confidence_noise = confidence_noise
        self.bf16 = bf16
        self.metadata_json = metadata_json
        self.forward_passes = 0

    def _logits(self, tokens: Tensor, actions: Tensor, bf16: bool, start_pose: Tensor | None) -> Tensor:
        if bf16:
            return self.maskvit_bf16(tokens, actions, start_pose)
        return self.maskvit(tokens, actions, start_pose)

    def _start_pose(self, start_pose: Tensor | None, n: int) -> Tensor | None:
        """(N, 3) float positions for a pose-conditioned model (given as (3,), (1, 3) or (N, 3)); None
        for a model without pose conditioning, which ignores them."""
        if not self.pose_conditioning:
            return None
        if start_pose is None:
            raise ValueError(
                "this predictor conditions on the arm's position (x, y, z, metres) at the first context "
                "frame: pass start_pose"
            )
        pose = start_pose.float().reshape(-1, 3)
        if pose.shape[0] != 1 and pose.shape[0] != n:
            raise ValueError("start_pose must be (3,), (1, 3) or (N, 3), got " + str(list(start_pose.shape)))
        return pose.expand(n, 3)

    @torch.jit.export
    def encode_context(self, frames: Tensor) -> Tensor:
        """uint8 frames (..., S, S, 3) -> codes (..., h, w) int64, in fp32 (exact nearest codes)."""
        if frames.dtype != torch.uint8 or frames.dim() < 4 or frames.shape[-1] != 3:
            raise ValueError("frames must be uint8 (..., S, S, 3)")
        if frames.shape[-3] != self.image_size or frames.shape[-2] != self.image_size:
            raise ValueError(
                "frames are "
                + str(frames.shape[-3])
                + "x"
                + str(frames.shape[-2])
                + " but this predictor takes "
                + str(self.image_size)
                + "x"
                + str(self.image_size)
            )
        lead: list[int] = list(frames.shape[:-3])
        with torch.no_grad():
            x = frames.reshape(-1, self.image_size, self.image_size, 3).permute(0, 3, 1, 2).float() / 255.0
            codes = self.tokenizer.encode(x)
        return codes.reshape(lead + [self.grid_h, self.grid_w])

    @torch.jit.export
    def predict_tokens(
        self,
        context_tokens: Tensor,
        actions: Tensor,
        steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        bf16: bool | None = None,
        start_pose: Tensor | None = None,
    ) -> Tensor:
        """Decode the future: context codes (C, h, w) shared by all, or (N, C, h, w); actions (N, C-1+H, 5)
        float (metres, radians, gripper in [-1, 1]) -> (N, H, h, w) int64, 1 <= H <= future_frames.
        ``start_pose`` (3,) or (N, 3): the end effector's x, y, z (metres) at the first context frame;
        required when the model was trained with pose conditioning (metadata ``pose_conditioning``)."""
        n_steps = self.decode_steps if steps is None else steps
        temp = self.temperature if temperature is None else temperature
        use_bf16 = self.bf16 if bf16 is None else bf16
        if n_steps < 1 or temp < 0.0:
            raise ValueError("steps must be >= 1 and temperature >= 0")
        C = self.context_frames
        if context_tokens.dim() == 3:
            context_tokens = context_tokens.unsqueeze(0)
        if actions.dim() != 3 or actions.shape[2] != self.action_dim:
            raise ValueError(
                "actions must be (N, context_frames - 1 + horizon, " + str(self.action_dim) + ")"
            )
        N = actions.shape[0]
        H = actions.shape[1] - (C - 1)
        if not 1 <= H <= self.future_frames:
            raise ValueError(
                "actions must hold context_frames - 1 = "
                + str(C - 1)
                + " context actions and 1 to "
                + str(self.future_frames)
                + " planned ones, got "
                + str(actions.shape[1])
            )
        if (
            context_tokens.dim() != 4
            or context_tokens.shape[1] != C
            or context_tokens.shape[2] != self.grid_h
            or context_tokens.shape[3] != self.grid_w
            or (context_tokens.shape[0] != 1 and context_tokens.shape[0] != N)
        ):
            raise ValueError(
                "context_tokens must be (C, h, w) or (N, C, h, w) with C = "
                + str(C)
                + " and a "
                + str(self.grid_h)
                + "x"
                + str(self.grid_w)
                + " grid"
            )
        ratios = scripted_remask_ratios(self.schedule, n_steps)
        noise: list[float] = []
        for s in range(n_steps):
            noise.append(self.confidence_noise * (1.0 - (s + 1) / n_steps))
        pose = self._start_pose(start_pose, N)
        with torch.no_grad():
            actions = actions.float()
            future = torch.full(
                [N, H, self.grid_h, self.grid_w], self.mask_token, dtype=torch.long, device=actions.device
            )
            tokens = torch.cat([context_tokens.expand(N, -1, -1, -1), future], dim=1)  # (N, C+H, h, w)
            mask = torch.zeros_like(tokens, dtype=torch.bool)
            mask[:, C:] = True
            n_initial = mask.flatten(1).sum(dim=1)
            self.forward_passes = 0
            for s in range(n_steps):
                if not bool(mask.any()):
                    break
                logits = self._logits(tokens, actions, use_bf16, pose)
                self.forward_passes += 1
                tokens, mask = iterative_decode_step(
                    logits, tokens, mask, n_initial, ratios[s], temp, noise[s], generator
                )
        return tokens[:, C:]

    @torch.jit.export
    def decode_frames(self, tokens: Tensor) -> Tensor:
        """Codes (..., h, w) -> uint8 frames (..., S, S, 3), in fp32: TorchScript's autocast does not cover
        the decoder's convolutions, and the cost reads few frames per rollout."""
        lead: list[int] = list(tokens.shape[:-2])
        flat = tokens.reshape(-1, self.grid_h, self.grid_w)
        with torch.no_grad():
            frames = self.tokenizer.decode(flat)
            out = (frames * 255.0).round().clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        return out.reshape(lead + [self.image_size, self.image_size, 3])

    def forward(
        self,
        context_frames: Tensor,
        actions: Tensor,
        steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        bf16: bool | None = None,
        start_pose: Tensor | None = None,
    ) -> Tensor:
        """context_frames (C, S, S, 3) uint8, actions (N, C-1+H, 5) -> predicted (N, H, S, S, 3) uint8;
        ``start_pose`` as in :meth:`predict_tokens`."""
        context = self.encode_context(context_frames)
        future = self.predict_tokens(context, actions, steps, temperature, generator, bf16, start_pose)
        return self.decode_frames(future)

    @torch.jit.export
    def metadata(self) -> str:
        """The export's metadata as JSON (the same as the archive's maskvit_mpc.json)."""
        return self.metadata_json


# --- metadata --------------------------------------------------------------------------------------


@dataclass
class PredictorMetadata:
    """What the planner needs to know about an exported predictor before using it."""

    image_size: int  # square frames in and out, pixels
    grid_h: int  # tokens per frame
    grid_w: int
    codebook_size: int
    context_frames: int  # frames the model conditions on
    future_frames: int  # the longest horizon it predicts
    action_dim: int
    decode_steps: int  # defaults of predict_tokens
    mask_schedule: str
    temperature: float
    confidence_noise: float
    bf16: bool
    # per-step action box of the config the export was made with: [low(5), high(5)]
    action_bounds: list[list[float]] | None = None
    frame_skip: int = 1  # control steps per model frame in training (data.frame_skip)
    action_source: str = "applied"
    action_conditioning: str = "input"
    # the model also takes the arm's x, y, z at the first context frame (predict_tokens' start_pose)
    pose_conditioning: bool = False
    checkpoints: dict[str, Any] = field(default_factory=dict)  # {tokenizer|maskvit: {path, sha256, step}}
    # what unpack_predictor needs to turn the file back into training checkpoints: per network its
    # model_config and config sections ({tokenizer: {...}, maskvit: {..., background}}); {} in files
    # exported before it was recorded
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    weights_sha256: str = ""  # digest of the scripted module's state_dict, checked at load
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> PredictorMetadata:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ExportError(
                f"{where}: its {METADATA_FILE} is not valid JSON ({exc}); re-export it"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ExportError(
                f"{where}: its {METADATA_FILE} does not describe a {FORMAT} file; re-export it with export-predictor"
            )
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ExportError(
                f"{where} is format version {data['format_version']}, this version reads up to "
                f"{FORMAT_VERSION}: upgrade maskvit-mpc or export with this version"
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ExportError(f"{where}: incomplete {METADATA_FILE} ({exc}); re-export it") from None

    def check(
        self,
        *,
        image_size: int | None = None,
        action_dim: int | None = None,
        context_frames: int | None = None,
        horizon: int | None = None,
        where: str = "the predictor",
    ) -> None:
        """Refuse a predictor that does not fit the run; each message names the setting to change."""
        if image_size is not None and image_size != self.image_size:
            raise ExportError(
                f"{where} takes {self.image_size}x{self.image_size} frames but the config gives "
                f"{image_size}x{image_size}: set sim.image_size={self.image_size} (and the camera view's "
                "size), or export a model trained at this resolution"
            )
        if action_dim is not None and action_dim != self.action_dim:
            raise ExportError(
                f"{where} takes {self.action_dim}-D actions but the planner sends {action_dim}-D ones"
            )
        if context_frames is not None and context_frames != self.context_frames:
            raise ExportError(
                f"{where} conditions on {self.context_frames} context frames but mpc.context_frames is "
                f"{context_frames}: set mpc.context_frames={self.context_frames}"
            )
        if horizon is not None and not 1 <= horizon <= self.future_frames:
            raise ExportError(
                f"{where} predicts at most {self.future_frames} frames but planner.horizon is {horizon}: "
                f"set planner.horizon to {self.future_frames} or less, or train with more future_frames"
            )
        if self.frame_skip != 1:
            raise ExportError(
                f"{where} was trained on every {self.frame_skip}th frame (data.frame_skip), the planner "
                "predicts one frame per control step: train with data.frame_skip=1"
            )


def _versions() -> dict[str, str]:
    try:
        package = importlib_metadata.version("maskvit-mpc")
    except importlib_metadata.PackageNotFoundError:
        package = "unknown"
    return {"maskvit_mpc": package, "torch": torch.__version__, "python": platform.python_version()}


def _action_bounds(safety: SafetyConfig) -> list[list[float]]:
    lim, grip = safety.step_limits, safety.workspace.gripper
    return [[-lim.dx, -lim.dy, -lim.dz, -lim.dyaw, grip.low], [lim.dx, lim.dy, lim.dz, lim.dyaw, grip.high]]


# --- building from checkpoints ----------------------------------------------------------------------


@dataclass
class DecodeOverrides:
    """Export-time replacements for the MaskViT checkpoint's decoding settings (None: keep)."""

    steps: int | None = None
    temperature: float | None = None
    schedule: str | None = None
    confidence_noise: float | None = None
    precision: str | None = None  # "fp32" | "bf16"


def build_predictor_module(
    tokenizer_ckpt: str | Path,
    maskvit_ckpt: str | Path,
    safety: SafetyConfig | None = None,
    overrides: DecodeOverrides | None = None,
) -> PredictorModule:
    """The eager :class:`PredictorModule` for two checkpoints, with its metadata filled in (not scripted)."""
    from .training import load_checkpoint

    overrides = overrides or DecodeOverrides()
    tok_path, mv_path = Path(tokenizer_ckpt), Path(maskvit_ckpt)
    tok_data = load_checkpoint(tok_path)
    mv_data = load_checkpoint(mv_path)
    tokenizer = tokenizer_from_checkpoint(tok_data, str(tok_path))
    maskvit = maskvit_from_checkpoint(mv_data, str(mv_path))
    tok_sha = file_digest(tok_path)
    trained_on = mv_data.get("extra", {}).get("tokenizer_sha256")
    if trained_on and trained_on != tok_sha:
        raise ExportError(
            f"{mv_path} was trained on the tokenizer with sha256 {trained_on[:12]}... "
            f"({mv_data['extra'].get('tokenizer_checkpoint', 'path unknown')}), but {tok_path} is "
            f"{tok_sha[:12]}...: pass the tokenizer it was trained on (or leave --tokenizer out)"
        )
    mcfg = mv_data.get("config", {}).get("maskvit", {})
    data_cfg = mv_data.get("config", {}).get("data", {})
    context_frames = int(mcfg.get("context_frames", 0))
    if context_frames < 1:
        raise ExportError(
            f"{mv_path} has no maskvit.context_frames in its config: not a train-maskvit checkpoint?"
        )
    steps = overrides.steps if overrides.steps is not None else int(mcfg.get("decode_steps", 5))
    temperature = (
        overrides.temperature if overrides.temperature is not None else float(mcfg.get("temperature", 1.0))
    )
    schedule = overrides.schedule or str(mcfg.get("mask_schedule", "cosine"))
    noise = (
        overrides.confidence_noise
        if overrides.confidence_noise is not None
        else float(mcfg.get("confidence_noise", 0.0))
    )
    bf16 = (overrides.precision or mcfg.get("precision", "fp32")) == "bf16"
    module = PredictorModule(tokenizer, maskvit, context_frames, steps, schedule, temperature, noise, bf16)
    meta = PredictorMetadata(
        image_size=tokenizer.image_size,
        grid_h=maskvit.grid_h,
        grid_w=maskvit.grid_w,
        codebook_size=maskvit.codebook_size,
        context_frames=context_frames,
        future_frames=module.future_frames,
        action_dim=maskvit.action_dim,
        decode_steps=steps,
        mask_schedule=schedule,
        temperature=temperature,
        confidence_noise=noise,
        bf16=bf16,
        action_bounds=_action_bounds(safety) if safety is not None else None,
        frame_skip=int(data_cfg.get("frame_skip", 1)),
        action_source=str(data_cfg.get("action_source", "applied")),
        action_conditioning=maskvit.config.action_conditioning,
        pose_conditioning=maskvit.config.pose_conditioning,
        checkpoints={
            # file names, not paths: an export is shared, the directory it was made in is not (the
            # digests identify the files)
            "tokenizer": {
                "path": Path(tok_path).name,
                "sha256": tok_sha,
                "step": int(tok_data.get("step", 0)),
            },
            "maskvit": {
                "path": Path(mv_path).name,
                "sha256": file_digest(mv_path),
                "step": int(mv_data.get("step", 0)),
            },
        },
        versions=_versions(),
        training={
            "tokenizer": {
                "model_config": tok_data["extra"]["model_config"],
                "config": _without_local_paths(tok_data.get("config", {})),
                "step": int(tok_data.get("step", 0)),
            },
            "maskvit": {
                "model_config": mv_data["extra"]["model_config"],
                "config": _without_local_paths(mv_data.get("config", {})),
                "step": int(mv_data.get("step", 0)),
                "background": mv_data["extra"].get("background"),
            },
        },
    )
    module.metadata_json = meta.to_json()
    return module


def _without_local_paths(config: dict) -> dict:
    """A training config to embed in an export, with its file and folder paths cut to their names."""
    out = copy.deepcopy(config)
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("folders"), list):
        data["folders"] = [Path(str(f)).name for f in data["folders"]]
    for section in out.values():
        if isinstance(section, dict) and isinstance(section.get("tokenizer_checkpoint"), str):
            section["tokenizer_checkpoint"] = Path(section["tokenizer_checkpoint"]).name
    return out


def script_predictor(module: PredictorModule) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of the module (TorchScript's deprecation warning silenced: it is the format),
    with the digest of its weights added to its metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module.eval())
    data = json.loads(module.metadata_json)
    if data.get("format") == FORMAT:
        # of the scripted module: its state_dict also holds buffers the eager one leaves out (FSQ's levels)
        data["weights_sha256"] = weights_digest(scripted)
        module.metadata_json = scripted.metadata_json = json.dumps(data, indent=1, sort_keys=True)
    return scripted


def export_predictor(
    tokenizer_ckpt: str | Path | None,
    maskvit_ckpt: str | Path,
    out: str | Path,
    safety: SafetyConfig | None = None,
    overrides: DecodeOverrides | None = None,
    fmt: str = "torchscript",
) -> list[Path]:
    """Write the predictor; returns the written paths. ``fmt``: "torchscript" (``out``), "export" (a
    torch.export program at ``out`` with the suffix .pt2) or "both" (the two).
    ``tokenizer_ckpt`` None: the tokenizer checkpoint the MaskViT checkpoint names."""
    from .training import load_checkpoint

    if fmt not in ("torchscript", "export", "both"):
        raise ExportError(f"format must be torchscript, export or both, got {fmt!r}")
    maskvit_ckpt, out = Path(maskvit_ckpt), Path(out)
    if fmt == "both" and out.suffix == ".pt2":
        raise ExportError(
            f"--out {out} names the TorchScript file and the program goes beside it as .pt2: "
            "give --out another suffix, e.g. predictor.ts"
        )
    if tokenizer_ckpt is None:
        named = load_checkpoint(maskvit_ckpt).get("extra", {}).get("tokenizer_checkpoint")
        if not named:
            raise ExportError(f"{maskvit_ckpt} does not name its tokenizer checkpoint: pass --tokenizer")
        tokenizer_ckpt = Path(named)
        if not tokenizer_ckpt.is_file():
            raise ExportError(
                f"{maskvit_ckpt} was trained on tokenizer {tokenizer_ckpt}, which does not exist here: "
                "pass --tokenizer with that checkpoint"
            )
    module = build_predictor_module(tokenizer_ckpt, maskvit_ckpt, safety, overrides)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if fmt in ("torchscript", "both"):
        scripted = script_predictor(module)
        tmp = out.with_name(out.name + ".tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: module.metadata_json})
        tmp.replace(out)
        written.append(out)
    if fmt in ("export", "both"):
        try:
            written.append(export_program(module, out.with_suffix(".pt2")))
        except ExportError as exc:
            if not written:
                raise
            raise ExportError(f"{exc} (the TorchScript predictor {out} was written)") from None
    return written


# --- torch.export ----------------------------------------------------------------------------------


class _UnrolledPrediction(nn.Module):
    """The whole prediction with fixed settings and the decoding loop unrolled, for ``torch.export``."""

    def __init__(self, module: PredictorModule) -> None:
        super().__init__()
        self.module = module
        self.ratios = scripted_remask_ratios(module.schedule, module.decode_steps)
        steps = module.decode_steps
        self.noise = [module.confidence_noise * (1.0 - (s + 1) / steps) for s in range(steps)]

    def forward(self, context_frames: Tensor, actions: Tensor, start_pose: Tensor | None = None) -> Tensor:
        m = self.module
        C = m.context_frames
        context = m.encode_context(context_frames)  # (C, h, w)
        N, H = actions.shape[0], actions.shape[1] - (C - 1)
        future = torch.full((N, H, m.grid_h, m.grid_w), m.mask_token, dtype=torch.long)
        tokens = torch.cat([context.unsqueeze(0).expand(N, -1, -1, -1), future], dim=1)
        mask = torch.cat(
            [
                torch.zeros_like(context.unsqueeze(0).expand(N, -1, -1, -1), dtype=torch.bool),
                torch.ones_like(future, dtype=torch.bool),
            ],
            dim=1,
        )
        n_initial = mask.flatten(1).sum(dim=1)
        pose = m._start_pose(start_pose, N)
        for ratio, noise in zip(self.ratios, self.noise, strict=True):
            # no early exit: once nothing is masked a step changes nothing
            logits = m._logits(tokens, actions.float(), m.bf16, pose)
            tokens, mask = iterative_decode_step(logits, tokens, mask, n_initial, ratio, m.temperature, noise)
        return m.decode_frames(tokens[:, C:])


def export_program(module: PredictorModule, path: Path) -> Path:
    """``torch.export`` the unrolled prediction (N dynamic, H fixed to the model's future_frames)."""
    steps = module.decode_steps
    if any(module.confidence_noise * (1.0 - (s + 1) / steps) > 0 for s in range(steps)):
        # torch.rand over a shape with a symbolic sample count does not trace (torch 2.13)
        raise ExportError(
            f"torch.export cannot capture the confidence noise ({module.confidence_noise:g}) for a variable "
            "number of samples: export with --confidence-noise 0 (argmax or temperature sampling both work), "
            "or use the TorchScript format"
        )
    C, F_ = module.context_frames, module.future_frames
    S = module.image_size
    example: tuple[Tensor, ...] = (
        torch.zeros(C, S, S, 3, dtype=torch.uint8),
        torch.zeros(2, C - 1 + F_, module.action_dim),
    )
    n = torch.export.Dim("samples", min=1, max=65536)
    dynamic: tuple[dict, ...] = ({}, {0: n})
    if module.pose_conditioning:  # a third input: the arm's position, (1, 3) for all samples
        example, dynamic = (*example, torch.zeros(1, 3)), (*dynamic, {})
    try:
        program = torch.export.export(_UnrolledPrediction(module).eval(), example, dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export raises many kinds for graphs it cannot capture
        raise ExportError(
            f"torch.export could not capture the predictor ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); use --format torchscript"
        ) from None
    tmp = path.with_name(path.stem + ".partial.pt2")  # torch.export wants the suffix
    torch.export.save(program, str(tmp), extra_files={METADATA_FILE: module.metadata_json})
    tmp.replace(path)
    return path


# --- loading ---------------------------------------------------------------------------------------


@dataclass
class LoadedPredictor:
    module: torch.jit.ScriptModule
    metadata: PredictorMetadata
    path: Path


def _archive_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def load_exported_predictor(path: str | Path, map_location: str = "cpu") -> LoadedPredictor:
    """Load a file written by ``export-predictor``; refuses anything else with what was expected."""
    path = Path(path)
    expected = "a TorchScript predictor written by export-predictor"
    if not path.is_file():
        raise ExportError(f"predictor file {str(path)!r} does not exist; expected {expected}")
    if not zipfile.is_zipfile(path):
        raise ExportError(
            f"{str(path)!r} is not {expected} (not a zip archive): export one with export-predictor"
        )
    try:
        names = _archive_names(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{str(path)!r} is a damaged archive ({exc}); expected {expected}") from None
    if any(n.endswith("/models/model.json") or n.endswith("archive_format") for n in names) and not any(
        n.endswith("/constants.pkl") for n in names
    ):
        raise ExportError(
            f"{str(path)!r} is a torch.export program (.pt2); the planner loads the TorchScript file "
            "export-predictor writes to --out"
        )
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:  # torch raises several unrelated types for unreadable archives
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise ExportError(
            f"cannot load {str(path)!r} as a TorchScript module ({type(exc).__name__}: {detail}): the file is "
            f"damaged or not TorchScript; expected {expected}"
        ) from None
    if not extra[METADATA_FILE]:
        raise ExportError(
            f"{str(path)!r} is a TorchScript module without {METADATA_FILE}: not {expected}; export one with "
            "export-predictor"
        )
    text = extra[METADATA_FILE]
    meta = PredictorMetadata.from_json(text.decode() if isinstance(text, bytes) else text, str(path))
    missing = [m for m in ("encode_context", "predict_tokens", "decode_frames") if not hasattr(module, m)]
    if missing:
        raise ExportError(f"{str(path)!r} lacks {', '.join(missing)}: not {expected}; re-export it")
    if meta.weights_sha256 and weights_digest(module) != meta.weights_sha256:
        raise ExportError(
            f"{str(path)!r} is damaged: its weights do not match the digest recorded at export; re-export it"
        )
    return LoadedPredictor(module=module, metadata=meta, path=path)


# --- back to training checkpoints -------------------------------------------------------------------


@dataclass
class UnpackedPredictor:
    tokenizer: Path  # train-tokenizer checkpoint
    maskvit: Path  # train-maskvit checkpoint that names the tokenizer above


def _load_submodule(net: nn.Module, state: dict[str, Tensor], prefix: str) -> None:
    """Load ``net`` from a scripted module's state under ``prefix``. TorchScript's state_dict also holds
    non-persistent buffers (FSQ's levels): those are not loaded but must equal the rebuilt network's."""
    found = {k[len(prefix) :]: v.detach().clone() for k, v in state.items() if k.startswith(prefix)}
    own = net.state_dict()
    buffers = dict(net.named_buffers())
    for key in [k for k in found if k not in own and k in buffers]:
        value = found.pop(key)
        if value.shape != buffers[key].shape or not torch.equal(value, buffers[key].to(value.dtype)):
            raise RuntimeError(f"buffer {key} is {value.tolist()} in the file, {buffers[key].tolist()} here")
    net.load_state_dict(found)


def unpack_predictor(
    path: str | Path,
    out_dir: str | Path,
    tokenizer_config: Config | None = None,
    maskvit_config: Config | None = None,
) -> UnpackedPredictor:
    """Write an export's two networks back as training checkpoints, ``out_dir/tokenizer.pt`` and
    ``out_dir/maskvit.pt``, so that ``train-maskvit --init-from`` can fine-tune it (on your own robot's
    episodes, say) and ``export-predictor`` can export the result.

    The network shapes come from the file's metadata. Files exported before the metadata recorded them
    need the configs the networks were trained with: ``tokenizer_config`` for its ``tokenizer`` section,
    ``maskvit_config`` for its ``maskvit`` and ``data`` sections (e.g. the tokenizer_cpu and maskvit_cpu
    presets). The weights are loaded strictly, so a config that does not fit is refused.
    """
    from .maskvit import MaskViTModelConfig
    from .tokenizer import TokenizerModelConfig
    from .training import save_checkpoint

    loaded = load_exported_predictor(path)
    meta, state = loaded.metadata, loaded.module.state_dict()
    training = dict(meta.training)
    if not training:
        if tokenizer_config is None or maskvit_config is None:
            raise ExportError(
                f"{path} was exported before the network configs were stored in it: pass the configs the "
                "networks were trained with to maskvit_mpc.models.export.unpack_predictor (for the "
                "presets: load_config('tokenizer_cpu'), load_config('maskvit_cpu'))"
            )
        tok_model = TokenizerModelConfig.from_config(tokenizer_config.tokenizer)
        grid = (meta.grid_h, meta.grid_w)
        mv_model = MaskViTModelConfig.from_config(maskvit_config.maskvit, meta.codebook_size, grid)
        steps = {k: int(v.get("step", 0)) for k, v in meta.checkpoints.items()}
        training = {
            "tokenizer": {
                "model_config": tok_model.to_dict(),
                "config": {"tokenizer": tokenizer_config.tokenizer.model_dump()},
                "step": steps.get("tokenizer", 0),
            },
            "maskvit": {
                "model_config": mv_model.to_dict(),
                "config": {
                    "maskvit": maskvit_config.maskvit.model_dump(),
                    "data": maskvit_config.data.model_dump(),
                },
                "step": steps.get("maskvit", 0),
                "background": None,
            },
        }
    tokenizer = VQModel(TokenizerModelConfig.from_dict(training["tokenizer"]["model_config"]))
    maskvit = MaskViT(MaskViTModelConfig.from_dict(training["maskvit"]["model_config"]))
    for name, net in (("tokenizer", tokenizer), ("maskvit", maskvit)):
        try:
            _load_submodule(net, state, name + ".")
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ExportError(
                f"{path}: its {name} weights do not fit the {name} config ({first}); pass the config the "
                "model was trained with"
            ) from None
    out_dir = Path(out_dir)
    tok_path = save_checkpoint(
        out_dir / "tokenizer.pt",
        models={"tokenizer": tokenizer},
        step=training["tokenizer"]["step"],
        config=training["tokenizer"]["config"],
        extra={"model_config": training["tokenizer"]["model_config"], "unpacked_from": str(path)},
    )
    mv_path = save_checkpoint(
        out_dir / "maskvit.pt",
        models={"maskvit": maskvit},
        step=training["maskvit"]["step"],
        config=training["maskvit"]["config"],
        extra={
            "model_config": training["maskvit"]["model_config"],
            "tokenizer_checkpoint": str(tok_path),
            "tokenizer_sha256": file_digest(tok_path),
            "background": training["maskvit"].get("background"),
            "unpacked_from": str(path),
        },
    )
    return UnpackedPredictor(tokenizer=tok_path, maskvit=mv_path)


# --- the command -----------------------------------------------------------------------------------

EXAMPLES = """
  export-predictor --maskvit runs/maskvit/step_0020000.pt --out predictor.ts
  export-predictor --tokenizer runs/tok/step_0010000.pt --maskvit runs/maskvit/step_0020000.pt --out predictor.ts
  export-predictor --maskvit runs/maskvit/step_0020000.pt --out predictor.ts --steps 2 --temperature 0 --precision bf16
  export-predictor --maskvit runs/maskvit/step_0020000.pt --out predictor.ts --format both   # + predictor.pt2
  mpc-run --task push --sim --predictor predictor.ts
  mpc-run --task push --sim --predictor predictor.ts --set planner.predictor_decode_steps=1

The file holds the tokenizer, MaskViT and the iterative decoding as one TorchScript module: context
frames are tokenized, the future is decoded conditioned on the actions, and the codes are decoded to
frames. Decoding defaults come from the MaskViT checkpoint's config (maskvit.decode_steps, temperature,
mask_schedule, confidence_noise, precision); --steps etc. replace them; a call can still override steps,
temperature and bf16 (the planner's planner.predictor_decode_steps, predictor_temperature and
predictor_precision do). Metadata (resolution, context length, horizon, action bounds of the config's
safety section, checkpoints' sha256, versions) is stored inside the file as maskvit_mpc.json.

--format export writes a torch.export program (.pt2) of the whole prediction instead (both: the two),
with the decoding settings fixed and the decoding loop unrolled: no per-call overrides, a fixed number
of predicted frames (future_frames), sampling from torch's global generator, and no confidence noise
(export with --confidence-noise 0). Load it with
torch.export.load(path).module()(context_frames, actions). The planner (--predictor PATH) loads the
TorchScript file.
"""


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("export-predictor", "Export tokenizer + MaskViT as one predictor file.", EXAMPLES)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="train-tokenizer checkpoint; none: the one the MaskViT checkpoint was trained on",
    )
    parser.add_argument("--maskvit", type=Path, required=True, help="train-maskvit checkpoint (step_N.pt)")
    parser.add_argument(
        "--out", type=Path, required=True, help="TorchScript file to write (e.g. predictor.ts)"
    )
    parser.add_argument(
        "--format",
        choices=["torchscript", "export", "both"],
        default="torchscript",
        help="export: a torch.export program instead, at --out with the suffix .pt2; both: the two",
    )
    parser.add_argument(
        "--steps", type=int, help="default decoding steps; none: the checkpoint's maskvit.decode_steps"
    )
    parser.add_argument("--temperature", type=float, help="default sampling temperature, 0: argmax")
    parser.add_argument("--schedule", choices=list(MASK_SCHEDULES), help="mask schedule")
    parser.add_argument(
        "--confidence-noise", type=float, help="Gumbel noise on the confidence, annealed to 0"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="default precision of the MaskViT passes (bf16: its bf16 copy of the weights)",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = config_from_args(args)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    for name in ("temperature", "confidence_noise"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    overrides = DecodeOverrides(
        args.steps, args.temperature, args.schedule, args.confidence_noise, args.precision
    )
    written = export_predictor(args.tokenizer, args.maskvit, args.out, cfg.safety, overrides, args.format)
    for path in written:
        if path.suffix == ".pt2" or args.format == "export":
            print(f"wrote {path} (torch.export program, decoding settings fixed)")
            continue
        meta = load_exported_predictor(path).metadata  # what the planner will load: check that it loads
        print(
            f"wrote {path}: {meta.image_size}x{meta.image_size} frames, {meta.grid_h}x{meta.grid_w} tokens, "
            f"{meta.context_frames} context + up to {meta.future_frames} predicted frames, "
            f"{meta.decode_steps} decoding steps ({meta.mask_schedule}, temperature {meta.temperature:g}"
            f"{', bf16' if meta.bf16 else ''})"
        )
    return 0
