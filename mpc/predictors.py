"""Predictors as the planner sees them: context frames + action sequences -> predicted frames.

Every implementation is batched and shares one contract:

* ``context_frames``: (B, Tc, H, W, 3) uint8, oldest first, the last one is "now";
* ``actions``: (B, horizon, 5) float32: dx, dy, dz (m), dyaw (rad), gripper command in [-1, 1];
* ``context_actions``: (B, Tc - 1, 5) float32 or None: the actions the arm really applied between the
  context frames (None: unknown, taken as "hold": no motion, as at the start of an episode);
* ``pose``: (B, 5) or (5,) float64, the arm's pose now (x, y, z m, yaw rad, gripper), passed only to
  predictors whose ``needs_pose`` is True (a model trained with pose conditioning);
* returns (B, K, H, W, 3) uint8 where frame k shows the scene after action ``frame_indices[k]``
  (default: all of them, K = horizon).

``frame_indices`` lets a cost ask for only the frames it scores; predictors that cannot skip frames
simply select them from their full output.

:func:`load_predictor` resolves a command-line name (``maskvit``: the model shipped with the package;
``oracle``; ``copy-last``) or the path of a file written by ``export-predictor``
(:class:`TorchScriptPredictor`).
"""

from __future__ import annotations

import abc
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import Config
from ..models.shipped import DEFAULT_PREDICTOR_NAME, default_model_path
from ..robot.types import ACTION_DIM

log = logging.getLogger(__name__)

_MAX_CACHED_ROLLOUTS = 4096  # rollouts kept per context: 16 MB at 8 frames of 8x8 tokens


class PredictorError(UserError):
    """A predictor that cannot be built or loaded, or inputs it cannot use."""


class Predictor(abc.ABC):
    """The one interface the planner uses. See the module docstring for shapes and units."""

    name: str = "predictor"
    #: True for predictors that simulate from the true scene state (sim only): the control loop then
    #: hands them the state with :meth:`set_sim_state` before every planning step.
    needs_sim_state: bool = False
    #: True for predictors that condition on the arm's pose: the planner then passes ``pose=``.
    needs_pose: bool = False
    #: True for trained models, whose errors the planner guards against (``planner.cem_return=auto``).
    learned: bool = False

    @abc.abstractmethod
    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
        context_actions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predict the frames that follow each action sequence (see the module docstring; predictors
        with ``needs_pose`` also take ``pose``)."""

    def set_sim_state(self, state: bytes) -> None:
        """Load the simulator's current state; only predictors with ``needs_sim_state`` use it."""
        raise PredictorError(f"the {self.name} predictor does not take a simulator state")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the predictor holds (a simulator, a model)."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_predict_inputs(
    context_frames: np.ndarray,
    actions: np.ndarray,
    frame_indices: Sequence[int] | None,
    context_actions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Validate shapes and dtypes; returns the arrays and the frame indices as a list."""
    context_frames = np.asarray(context_frames)
    actions = np.asarray(actions, dtype=np.float32)
    if context_frames.dtype != np.uint8 or context_frames.ndim != 5 or context_frames.shape[-1] != 3:
        raise PredictorError(
            "context_frames must be (B, Tc, H, W, 3) uint8, got "
            f"dtype {context_frames.dtype} shape {context_frames.shape}"
        )
    if context_frames.shape[1] < 1:
        raise PredictorError("context_frames must hold at least one frame per batch entry")
    if actions.ndim != 3 or actions.shape[-1] != ACTION_DIM or actions.shape[0] != context_frames.shape[0]:
        raise PredictorError(
            f"actions must be (B, horizon, {ACTION_DIM}) with the same B as context_frames "
            f"({context_frames.shape[0]}), got shape {actions.shape}"
        )
    horizon = actions.shape[1]
    indices = list(range(horizon)) if frame_indices is None else [int(i) for i in frame_indices]
    if any(not 0 <= i < horizon for i in indices):
        raise PredictorError(f"frame_indices {indices} must lie in [0, {horizon})")
    if context_actions is not None:
        expected = (context_frames.shape[0], context_frames.shape[1] - 1, ACTION_DIM)
        if np.shape(context_actions) != expected:
            raise PredictorError(
                f"context_actions must be (B, Tc - 1, {ACTION_DIM}) = {expected}, got {np.shape(context_actions)}"
            )
    return context_frames, actions, indices


class CopyLastPredictor(Predictor):
    """Baseline: the future looks exactly like the last context frame, whatever the actions."""

    name = "copy-last"

    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
        context_actions: np.ndarray | None = None,
    ) -> np.ndarray:
        context_frames, _, indices = check_predict_inputs(
            context_frames, actions, frame_indices, context_actions
        )
        last = context_frames[:, -1:]  # (B, 1, H, W, 3)
        return np.repeat(last, len(indices), axis=1)


PREDICTOR_NAMES = ("maskvit", "oracle", "copy-last", "oracle-tokenized")
DEFAULT_PREDICTOR = DEFAULT_PREDICTOR_NAME


def load_predictor(spec: str, config: Config) -> Predictor:
    """Resolve ``--predictor``: ``maskvit`` (the shipped model), ``oracle`` (simulation only),
    ``copy-last``, or an export-predictor file."""
    if spec == DEFAULT_PREDICTOR:
        path = default_model_path()
        if not path.is_file():
            raise PredictorError(
                f"the shipped MaskViT model is missing ({path}): reinstall the package, or pass an exported "
                "model with --predictor PATH (recipes/train_default_model.sh trains one)"
            )
        return TorchScriptPredictor(path, config)
    if spec == "copy-last":
        return CopyLastPredictor()
    if spec == "oracle-tokenized" or spec.startswith("oracle-tokenized:"):
        model = spec.partition(":")[2] or DEFAULT_PREDICTOR
        tokenizer = load_predictor(model, config)
        if not isinstance(tokenizer, TorchScriptPredictor):
            raise PredictorError(f"oracle-tokenized:PATH needs an export-predictor file, got {model!r}")
        try:
            return TokenizedPredictor(load_predictor("oracle", config), tokenizer)
        except BaseException:
            tokenizer.close()
            raise
    if spec == "oracle":
        from .oracle import OraclePredictor  # imports MuJoCo: only when asked for

        return OraclePredictor(config.sim, config.safety, workers=config.mpc.oracle_workers)
    return _load_learned(Path(spec), config)


def _load_learned(path: Path, config: Config) -> Predictor:
    names = ", ".join(PREDICTOR_NAMES)
    if not path.exists():
        raise PredictorError(
            f"predictor {str(path)!r} is neither a built-in predictor ({names}) nor an existing file; "
            "give one of those names or the path of a file written by export-predictor"
        )
    if not path.is_file():
        raise PredictorError(f"predictor path {str(path)!r} is a directory; give the exported predictor file")
    if not zipfile.is_zipfile(path):  # TorchScript files are zip archives: refuse others without torch
        raise PredictorError(
            f"cannot load predictor {str(path)!r}: it is not a TorchScript file (not a zip archive); export "
            f"one with export-predictor, or use one of: {names}"
        )
    return TorchScriptPredictor(path, config)


class TorchScriptPredictor(Predictor):
    """MaskViT exported by ``export-predictor``, behind the planner's interface.

    The model sees a clip of ``C`` context frames and ``F`` future frames (its training length) with the
    ``C - 1 + F`` actions between them: action t leads from frame t to frame t+1. The planner's horizon
    actions follow the last context frame; the actions between the context frames come in as
    ``context_actions`` (what the arm applied: the control loop passes them) or, when unknown, are
    "hold": no motion, the gripper at its first planned command (exact while the context repeats the
    first frame, as it does at the start of an episode). A horizon shorter than ``F`` is padded with the
    same hold after its last action, and only the asked-for frames are decoded to pixels.

    Per planning step the context frames are tokenized once: all the samples of a CEM iteration share
    one context (the planner broadcasts it), and the tokens are kept while the context stays the same,
    so later iterations and the best plan's rollout reuse them; a sequence already scored from the
    same context (the best plan, predicted again for display) is not decoded again. Samples go through
    the network in batches of at most ``planner.predictor_batch``; ``planner.predictor_decode_steps``,
    ``predictor_temperature`` and ``predictor_precision`` override the export's decoding settings.
    """

    learned = True

    def __init__(self, path: Path, config: Config) -> None:
        import torch  # only learned predictors need torch

        from ..models.export import ExportError, load_exported_predictor

        try:
            loaded = load_exported_predictor(path)
            loaded.metadata.check(
                image_size=config.sim.image_size,
                action_dim=ACTION_DIM,
                context_frames=config.mpc.context_frames,
                horizon=config.planner.horizon,
                where=f"predictor {str(path)!r}",
            )
        except ExportError as exc:
            raise PredictorError(str(exc)) from None
        self._torch = torch
        self.module = loaded.module
        self.metadata = loaded.metadata
        self.path = path
        self.name = f"maskvit:{path.name}"
        self.needs_pose = loaded.metadata.pose_conditioning
        planner = config.planner
        self.batch_size = planner.predictor_batch
        self.decode_steps = planner.predictor_decode_steps
        self.temperature = planner.predictor_temperature
        self.bf16 = {"export": None, "fp32": False, "bf16": True}[planner.predictor_precision]
        self.generator = torch.Generator().manual_seed(planner.seed if planner.seed is not None else 0)
        self.context_encodings = 0  # tokenizer encoder runs (once per planning step)
        self.forward_passes = 0  # MaskViT forward passes, over all batches and calls
        self._context: tuple[np.ndarray, object] | None = None  # (frames, their tokens)
        self._context_key = b""  # the past actions the cached rollouts were decoded with
        self._rollouts: dict[bytes, object] = {}  # action sequence -> its decoded tokens, this context
        self._warn_on_wider_bounds(config)

    def _warn_on_wider_bounds(self, config: Config) -> None:
        trained = self.metadata.action_bounds
        if trained is None:
            return
        from .optimizers import ActionBounds

        bounds = ActionBounds.from_safety(config.safety)
        if np.any(bounds.low < np.asarray(trained[0]) - 1e-9) or np.any(
            bounds.high > np.asarray(trained[1]) + 1e-9
        ):
            log.warning(
                "the planner's action bounds %s..%s exceed those the predictor was exported with %s..%s: "
                "it will be asked about larger steps than it may have seen",
                bounds.low.tolist(),
                bounds.high.tolist(),
                trained[0],
                trained[1],
            )

    def _context_tokens(
        self, context_frames: np.ndarray, key: bytes
    ):  # -> (torch.Tensor (1 | B, C, h, w), shared)
        """``key``: what else the rollouts of a shared context depend on (its past actions and start
        position); cached rollouts are dropped when it changes."""
        torch = self._torch
        shared = (
            len(context_frames) == 1
            or context_frames.strides[0] == 0
            or bool((context_frames == context_frames[:1]).all())
        )
        if shared:
            one = context_frames[0]
            if self._context is not None and np.array_equal(self._context[0], one):
                if self._context_key != key:  # same frames, other past actions: other rollouts
                    self._rollouts.clear()
                    self._context_key = key
                return self._context[1], True
            tokens = self.module.encode_context(torch.from_numpy(np.array(one)))[None]  # a writable copy
            self.context_encodings += 1
            self._context = (one.copy(), tokens)
            self._context_key = key
            self._rollouts.clear()  # rollouts from another context
            return tokens, True
        parts = []
        for start in range(0, len(context_frames), self.batch_size):
            chunk = np.array(context_frames[start : start + self.batch_size])  # writable, contiguous
            parts.append(self.module.encode_context(torch.from_numpy(chunk)))
            self.context_encodings += 1
        return torch.cat(parts), False

    def _clip_actions(self, actions: np.ndarray, past: np.ndarray | None) -> np.ndarray:
        """(B, horizon, 5) and past (B | 1, C - 1, 5) -> (B, C - 1 + F, 5): the applied past actions (or
        hold) before the horizon, hold after it."""
        B, horizon, _ = actions.shape
        C, F = self.metadata.context_frames, self.metadata.future_frames
        clip = np.zeros((B, C - 1 + F, ACTION_DIM), np.float32)
        clip[:, C - 1 : C - 1 + horizon] = actions
        if past is not None:
            clip[:, : C - 1] = past  # (B | 1, C - 1, 5)
        else:
            clip[:, : C - 1, -1] = actions[:, :1, -1]  # gripper held at its first planned command
        clip[:, C - 1 + horizon :, -1] = actions[:, -1:, -1]
        return clip

    def _start_pose(self, pose: np.ndarray | None, past: np.ndarray | None, batch: int) -> np.ndarray | None:
        """(B | 1, 3) float32: the end effector's position at the first context frame, from its pose now
        less the moves applied since (hold when unknown, like the past actions); None when not needed."""
        if not self.needs_pose:
            return None
        if pose is None:
            raise PredictorError(
                f"{self.path.name} conditions on the arm's pose: pass pose= (the planner does, from the arm)"
            )
        now = np.asarray(pose, np.float64).reshape(-1, np.shape(pose)[-1])[:, :3]
        if len(now) not in (1, batch):
            raise PredictorError(
                f"pose must be (5,), (1, 5) or (B, 5) with B = {batch}, got {np.shape(pose)}"
            )
        if past is not None:
            now = now - past[:, :, :3].sum(axis=1)
        return now.astype(np.float32)

    def _predict_tokens(
        self, context, actions: np.ndarray, past: np.ndarray | None = None, start: np.ndarray | None = None
    ):  # -> torch.Tensor (B, F, h, w)
        """``start``: (B | 1, 3) positions for a pose-conditioned export (files without pose
        conditioning may predate the argument, so it is passed only when given)."""
        torch = self._torch
        clip_actions = torch.from_numpy(self._clip_actions(actions, past))
        start_pose = None if start is None else torch.from_numpy(np.ascontiguousarray(start))
        parts = []
        for first in range(0, len(actions), self.batch_size):
            stop = min(len(actions), first + self.batch_size)
            args = [
                context if len(context) == 1 else context[first:stop],
                clip_actions[first:stop],
                self.decode_steps,
                self.temperature,
                self.generator,
                self.bf16,
            ]
            if start_pose is not None:
                args.append(start_pose if len(start_pose) == 1 else start_pose[first:stop])
            parts.append(self.module.predict_tokens(*args))
            self.forward_passes += int(self.module.forward_passes)
        return torch.cat(parts)

    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
        context_actions: np.ndarray | None = None,
        pose: np.ndarray | None = None,
    ) -> np.ndarray:
        context_frames, actions, indices = check_predict_inputs(
            context_frames, actions, frame_indices, context_actions
        )
        meta = self.metadata
        B, Tc, height, width, _ = context_frames.shape
        if (height, width) != (meta.image_size, meta.image_size):
            raise PredictorError(
                f"context frames are {width}x{height} but the predictor takes {meta.image_size}x"
                f"{meta.image_size}: set sim.image_size / camera.view.image_size to {meta.image_size}"
            )
        if Tc < meta.context_frames:
            raise PredictorError(
                f"the predictor conditions on {meta.context_frames} context frames, got {Tc}: "
                f"set mpc.context_frames={meta.context_frames}"
            )
        if actions.shape[1] > meta.future_frames:
            raise PredictorError(
                f"the predictor predicts at most {meta.future_frames} frames, asked for {actions.shape[1]}: "
                f"set planner.horizon to {meta.future_frames} or less"
            )
        torch = self._torch
        with torch.inference_mode():
            C = meta.context_frames
            past = None if context_actions is None else np.asarray(context_actions, np.float32)[:, Tc - C :]
            start = self._start_pose(pose, past, B)
            one_past = (past is None or bool((past == past[:1]).all())) and (
                start is None or bool((start == start[:1]).all())
            )
            # the rollouts decoded from one context hold for one past (and start position) only
            key = b"".join(x[0].tobytes() for x in (past, start) if x is not None)
            context, shared = self._context_tokens(context_frames[:, Tc - C :], key)
            if not (shared and one_past):  # samples with their own contexts or pasts: no rollout cache
                tokens = self._predict_tokens(context, actions, past, start)
            else:
                # A sequence already scored from this context (the best plan, whose rollout the planner
                # shows) is not decoded again: its rollout is the one its cost came from.
                keys = [row.tobytes() for row in actions]
                new: dict[bytes, int] = {}  # first sample of each sequence not scored yet
                for i, key in enumerate(keys):
                    if key not in self._rollouts:
                        new.setdefault(key, i)
                found = {}
                if new:
                    found = dict(
                        zip(
                            new,
                            self._predict_tokens(
                                context,
                                actions[list(new.values())],
                                None if past is None else past[:1],
                                None if start is None else start[:1],
                            ),
                            strict=True,
                        )
                    )
                tokens = torch.stack([self._rollouts[k] if k in self._rollouts else found[k] for k in keys])
                for key, rollout in found.items():
                    if len(self._rollouts) >= _MAX_CACHED_ROLLOUTS:
                        break
                    self._rollouts[key] = rollout
            frames = [
                self.module.decode_frames(tokens[start : start + self.batch_size, indices]).numpy()
                for start in range(0, B, self.batch_size)
            ]
        return np.concatenate(frames)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (..., S, S, 3) -> the same frames encoded and decoded by this model's tokenizer."""
        torch = self._torch
        flat = frames.reshape(-1, *frames.shape[-3:])
        out = []
        for start in range(0, len(flat), self.batch_size):
            chunk = np.array(flat[start : start + self.batch_size])  # writable, contiguous
            out.append(self.module.decode_frames(self.module.encode_context(torch.from_numpy(chunk))).numpy())
        return np.concatenate(out).reshape(frames.shape)

    def close(self) -> None:
        self._context = None
        self._rollouts.clear()


class TokenizedPredictor(Predictor):
    """Diagnostic: another predictor's frames passed through an export's tokenizer (encode, then decode).

    ``--predictor oracle-tokenized`` plans with the simulator's true futures as the tokenizer would
    reconstruct them: its success rate against the plain oracle's is what the tokenizer alone costs the
    planner, and against the learned model's is what the prediction of the codes costs.
    """

    def __init__(self, inner: Predictor, tokenizer: TorchScriptPredictor) -> None:
        self.inner = inner
        self.tokenizer = tokenizer
        self.name = f"{inner.name}-tokenized:{tokenizer.path.name}"
        self.needs_sim_state = inner.needs_sim_state

    def set_sim_state(self, state: bytes) -> None:
        self.inner.set_sim_state(state)

    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
        context_actions: np.ndarray | None = None,
    ) -> np.ndarray:
        frames = self.inner.predict(context_frames, actions, frame_indices, context_actions)
        return self.tokenizer.reconstruct(frames)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.tokenizer.close()
