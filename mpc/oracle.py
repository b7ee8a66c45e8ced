"""The simulator oracle: a perfect predictor, available in simulation only.

It holds a PRIVATE :class:`TabletopSim` built from the same :class:`SimConfig` as the simulated arm.
Before each planning step the control loop hands it the arm simulator's full state
(:meth:`OraclePredictor.set_sim_state`); ``predict`` then restores that state once per action sequence,
steps the sequence and renders the frames asked for. It ignores the context frames: the state already
holds everything they show. Its success rate is the upper bound a learned predictor is measured against.

Physics dominates its cost (a few ms per control step), so it can split a batch over worker processes,
each with its own simulator (``workers``); the calling process rolls out one share itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..configs.schema import SafetyConfig, SimConfig
from ..robot.sim import TabletopSim
from .predictors import Predictor, PredictorError, check_predict_inputs


def _rollout(sim: TabletopSim, state: bytes, actions: np.ndarray, indices: list[int]) -> np.ndarray:
    """(B, K, S, S, 3) uint8 frames after actions ``indices`` of each (horizon, 5) sequence."""
    size = sim.image_size
    out = np.empty((actions.shape[0], len(indices), size, size, 3), dtype=np.uint8)
    slots: dict[int, list[int]] = {}
    for k, i in enumerate(indices):
        slots.setdefault(i, []).append(k)
    last = max(indices, default=-1)
    for b in range(actions.shape[0]):
        sim.set_state(state)
        for t in range(last + 1):  # steps after the last requested frame change nothing returned
            sim.step(actions[b, t])
            if t in slots:
                frame = sim.render()
                for k in slots[t]:
                    out[b, k] = frame
    return out


def _worker_main(conn: Connection, sim_cfg: dict[str, Any], safety_cfg: dict[str, Any]) -> None:
    sim = TabletopSim(SimConfig.model_validate(sim_cfg), SafetyConfig.model_validate(safety_cfg))
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            state, actions, indices = message
            try:
                conn.send(("ok", _rollout(sim, state, actions, indices)))
            except Exception as exc:  # report to the parent instead of dying silently
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except (EOFError, KeyboardInterrupt):
        return  # the parent went away or the user pressed Ctrl-C: just stop
    finally:
        sim.close()


class OraclePredictor(Predictor):
    """Rolls each action sequence out in a private copy of the simulator (see the module docstring)."""

    name = "oracle"
    needs_sim_state = True

    def __init__(self, sim_config: SimConfig, safety_config: SafetyConfig, workers: int = 1) -> None:
        if workers < 1:
            raise PredictorError(f"the oracle needs at least 1 worker, got {workers}")
        self.sim = TabletopSim(sim_config, safety_config)
        self._state: bytes | None = None
        self._workers: list[tuple[Any, Connection]] = []
        # spawn, not fork: a forked child would share this process's OpenGL context.
        ctx = mp.get_context("spawn")
        for _ in range(workers - 1):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, sim_config.model_dump(), safety_config.model_dump()),
                daemon=True,
            )
            proc.start()
            child.close()
            self._workers.append((proc, parent))

    def set_sim_state(self, state: bytes) -> None:
        self.sim.set_state(state)  # validates the state now rather than at the first rollout
        self._state = bytes(state)

    def predict(
        self,
        context_frames: np.ndarray,
        actions: np.ndarray,
        frame_indices: Sequence[int] | None = None,
        context_actions: np.ndarray | None = None,  # the simulator state already holds the past
    ) -> np.ndarray:
        context_frames, actions, indices = check_predict_inputs(
            context_frames, actions, frame_indices, context_actions
        )
        if self._state is None:
            raise PredictorError(
                "the oracle has no simulator state yet: call set_sim_state(state) with the arm "
                "simulator's current state before predicting"
            )
        size = self.sim.image_size
        if context_frames.shape[2:4] != (size, size):
            raise PredictorError(
                f"context frames are {context_frames.shape[3]}x{context_frames.shape[2]} but the oracle "
                f"renders {size}x{size} (sim.image_size); use the same SimConfig as the camera"
            )
        chunks = np.array_split(actions, len(self._workers) + 1)
        busy = []
        for (_, conn), chunk in zip(self._workers, chunks[1:], strict=True):
            if len(chunk):
                conn.send((self._state, chunk, indices))
                busy.append(conn)
        parts = [_rollout(self.sim, self._state, chunks[0], indices)]
        for conn in busy:
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise PredictorError(
                    "an oracle worker process died; run with mpc.oracle_workers=1 to see its error here"
                ) from None
            if status != "ok":
                raise PredictorError(f"an oracle worker failed: {payload}")
            parts.append(payload)
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        for proc, conn in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):  # the worker may already be gone
                conn.send(None)
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._workers = []
        self.sim.close()
