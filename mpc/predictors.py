"""Predictors as the planner sees them: context frames + action sequences -> predicted frames.

Every implementation is batched and shares one contract:

* ``context_frames``: (B, Tc, H, W, 3) uint8, oldest first, the last one is "now";
* ``actions``: (B, horizon, 5) float32: dx, dy, dz (m), dyaw (rad), gripper command in [-1, 1];
* returns (B, K, H, W, 3) uint8 where frame k shows the scene after action ``frame_indices[k]``
  (default: all of them, K = horizon).

``frame_indices`` lets a cost ask for only the frames it scores; predictors that cannot skip frames
simply select them from their full output.

:func:`load_predictor` resolves a command-line name (``oracle``, ``copy-last`` or a file path).
"""

from __future__ import annotations

import abc
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import Config
from ..robot.types import ACTION_DIM


class PredictorError(UserError):
    """A predictor that cannot be built or loaded, or inputs it cannot use."""


class Predictor(abc.ABC):
    """The one interface the planner uses. See the module docstring for shapes and units."""

    name: str = "predictor"
    #: True for predictors that simulate from the true scene state (sim only): the control loop then
    #: hands them the state with :meth:`set_sim_state` before every planning step.
    needs_sim_state: bool = False

    @abc.abstractmethod
    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Predict the frames that follow each action sequence (see the module docstring)."""

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
    context_frames: np.ndarray, actions: np.ndarray, frame_indices: Sequence[int] | None
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
    return context_frames, actions, indices


class CopyLastPredictor(Predictor):
    """Baseline: the future looks exactly like the last context frame, whatever the actions."""

    name = "copy-last"

    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
    ) -> np.ndarray:
        context_frames, _, indices = check_predict_inputs(context_frames, actions, frame_indices)
        last = context_frames[:, -1:]  # (B, 1, H, W, 3)
        return np.repeat(last, len(indices), axis=1)


PREDICTOR_NAMES = ("oracle", "copy-last")


def load_predictor(spec: str, config: Config) -> Predictor:
    """Resolve ``--predictor``: ``oracle`` (simulation only), ``copy-last``, or a TorchScript file path."""
    if spec == "copy-last":
        return CopyLastPredictor()
    if spec == "oracle":
        from .oracle import OraclePredictor  # imports MuJoCo: only when asked for

        return OraclePredictor(config.sim, config.safety, workers=config.mpc.oracle_workers)
    return _load_learned(Path(spec))


def _load_learned(path: Path) -> Predictor:
    names = ", ".join(PREDICTOR_NAMES)
    if not path.exists():
        raise PredictorError(
            f"predictor {str(path)!r} is neither a built-in predictor ({names}) nor an existing file; "
            "give one of those names or the path of an exported MaskViT TorchScript file"
        )
    if not path.is_file():
        raise PredictorError(f"predictor path {str(path)!r} is a directory; give the exported .pt file")
    if not zipfile.is_zipfile(path):  # TorchScript files are zip archives: refuse others without torch
        raise PredictorError(
            f"cannot load predictor {str(path)!r}: it is not a TorchScript file (not a zip archive); export "
            f"it with the MaskViT export step, or use one of: {names}"
        )
    import warnings

    import torch  # only learned predictors need torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the exported format is TorchScript
            torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises several unrelated types for unreadable archives
        raise PredictorError(
            f"cannot load predictor {str(path)!r} as a TorchScript module ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); export it with the MaskViT "
            "export step, or use one of: " + names
        ) from None
    raise PredictorError(
        f"{str(path)!r} is a TorchScript module, but learned predictors are not wired into the planner "
        f"in this version; use one of: {names}"
    )
