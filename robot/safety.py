"""The arm server's safety rules, free of sockets so they can be tested and reasoned about alone.

* :class:`ActionLimiter`: per-step delta caps, then the workspace box (x, y, z, yaw) and the gripper range.
* :class:`Watchdog`: fires once when neither a command nor a heartbeat arrived within the timeout.
* :class:`SequenceGuard`: accepts only sequence numbers above the last accepted one.

The e-stop latch is a single flag the server keeps next to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..configs.schema import SafetyConfig
from .protocol import ErrorCode, ProtocolError
from .types import ACTION_DIM

CLIP_TOL = 1e-9  # metres / radians: below any real clipping, above float rounding


def was_clipped(commanded: np.ndarray, applied: np.ndarray) -> bool:
    """Whether the arm changed the command. A tolerance, not equality: a backend that re-derives the
    delta from its own target (the sim) differs from the command by rounding alone when nothing was
    clipped."""
    return not np.allclose(applied, commanded, rtol=0.0, atol=CLIP_TOL)


@dataclass(frozen=True)
class LimitedAction:
    applied: np.ndarray  # (5,) float64: dx, dy, dz (m), dyaw (rad), gripper in [-1, 1]
    clipped: bool  # applied differs from the commanded action


class ActionLimiter:
    """Clips a commanded 5-D action so the arm stays inside the workspace and within the step limits.

    The box applies to the pose the action would reach from the current pose. A pose already outside
    the box (a sim task may park the gripper out of view) may move back toward it, never further out.
    """

    def __init__(self, safety: SafetyConfig) -> None:
        ws, lim = safety.workspace, safety.step_limits
        self.low = np.array([ws.x.low, ws.y.low, ws.z.low, ws.yaw.low])
        self.high = np.array([ws.x.high, ws.y.high, ws.z.high, ws.yaw.high])
        self.step = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw])
        self.gripper_low = max(ws.gripper.low, -1.0)
        self.gripper_high = min(ws.gripper.high, 1.0)

    def _delta(self, at: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """(..., 4) the x, y, z, yaw motion applied of ``wanted`` from poses ``at``: step caps, then the box."""
        delta = np.clip(wanted, -self.step, self.step)
        target = at + delta
        bounded = np.clip(target, np.minimum(self.low, at), np.maximum(self.high, at))
        # Only recompute the delta where the box cut it, so an unclipped action comes back bit-identical.
        return np.where(bounded != target, bounded - at, delta)

    def limit(self, pose: np.ndarray, action: np.ndarray) -> LimitedAction:
        """``pose``: (5,) current x, y, z, yaw, gripper; ``action``: (5,) finite commanded action."""
        action = np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)
        pose = np.asarray(pose, dtype=np.float64).reshape(ACTION_DIM)
        delta = self._delta(pose[:4], action[:4])
        gripper = float(np.clip(action[4], self.gripper_low, self.gripper_high))
        applied = np.concatenate([delta, [gripper]])
        return LimitedAction(applied=applied, clipped=not np.array_equal(applied, action))

    def limit_plans(self, pose: np.ndarray, plans: np.ndarray) -> np.ndarray:
        """What the arm would apply of each step of (..., horizon, 5) action sequences started at ``pose``.

        The same rules as :meth:`limit`, rolled forward through each sequence (the pose after a step is
        the pose before it plus the applied delta), for a whole batch at once. A planner uses it so that
        the sequences it scores are the ones the arm will really execute.
        """
        plans = np.asarray(plans, dtype=np.float64)
        pose = np.asarray(pose, dtype=np.float64).reshape(ACTION_DIM)
        if plans.ndim < 2 or plans.shape[-1] != ACTION_DIM:
            raise ValueError(f"plans must have shape (..., horizon, {ACTION_DIM}), got {plans.shape}")
        out = plans.copy()
        at = np.broadcast_to(pose[:4], (*plans.shape[:-2], 4)).copy()
        for t in range(plans.shape[-2]):
            out[..., t, :4] = delta = self._delta(at, plans[..., t, :4])
            at = at + delta
        out[..., 4] = np.clip(plans[..., 4], self.gripper_low, self.gripper_high)
        return out

    def contains(self, pose: np.ndarray, tol: float = 1e-9) -> bool:
        """Whether a (5,) pose lies inside the workspace box and gripper range."""
        p = np.asarray(pose, dtype=np.float64)
        inside = np.all(p[:4] >= self.low - tol) and np.all(p[:4] <= self.high + tol)
        return bool(inside and self.gripper_low - tol <= p[4] <= self.gripper_high + tol)

    def clamp_pose(self, pose: np.ndarray) -> np.ndarray:
        """The nearest pose inside the box (used for start poses the operator asks for)."""
        p = np.asarray(pose, dtype=np.float64).copy()
        p[:4] = np.clip(p[:4], self.low, self.high)
        p[4] = np.clip(p[4], self.gripper_low, self.gripper_high)
        return p


class Watchdog:
    """Fires once when it is armed and ``timeout_s`` passed without :meth:`feed`.

    Armed by motion (a command or an episode reset); disarmed when it fires, so a stopped arm is not
    stopped again and again; the next motion arms it again.
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._last_feed = clock()
        self.armed = False

    def feed(self) -> None:
        self._last_feed = self._clock()

    def arm(self) -> None:
        self.feed()
        self.armed = True

    def time_left(self) -> float:
        """Seconds until it would fire (inf when disarmed)."""
        if not self.armed:
            return float("inf")
        return self.timeout_s - (self._clock() - self._last_feed)

    def check(self) -> bool:
        """True exactly once when the timeout passed while armed."""
        if self.armed and self.time_left() <= 0:
            self.armed = False
            return True
        return False


class SequenceGuard:
    """Accepts a sequence number only when it is above the last accepted one."""

    def __init__(self) -> None:
        self.last = -1

    def check(self, seq: int) -> None:
        if seq == self.last:
            raise ProtocolError(ErrorCode.DUPLICATE_SEQ, f"seq {seq} was already applied")
        if seq < self.last:
            raise ProtocolError(
                ErrorCode.STALE_SEQ,
                f"seq {seq} is older than the last applied seq {self.last}; use {self.last + 1}+",
            )

    def accept(self, seq: int) -> None:
        self.last = seq
