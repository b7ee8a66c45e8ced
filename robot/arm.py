"""The arm boundaries.

* :class:`Arm` is what a control loop holds (``mpc-run``, ``collect-finetune-data``); the one
  implementation talks ZeroMQ to the arm server (``robot/client.py``).
* :class:`ArmBackend` is what a real arm's adapter implements inside the arm server
  (``robot/server.py``). The server around it owns the protocol, watchdog and safety limits, so
  every backend gets them; a backend only ever receives actions that are already clipped.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..configs.errors import UserError
from .types import AppliedAction, ArmState


class ArmError(UserError):
    """The controller refused a command or reported a fault."""


class ArmTimeout(ArmError):
    """The controller did not answer in time (dead, overloaded or unreachable)."""


class EStopActive(ArmError):
    """The controller's latched e-stop is set; motion is refused until an explicit reset."""


class Arm(abc.ABC):
    """Client side of the arm. Every call returns or raises within a bounded time."""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> AppliedAction:
        """Send one 5-D action (dx, dy, dz m; dyaw rad; gripper in [-1, 1]); returns what was applied."""

    @abc.abstractmethod
    def read_state(self) -> ArmState: ...

    @abc.abstractmethod
    def stop(self) -> ArmState:
        """Hold the current pose (a normal, unlatched stop)."""

    @abc.abstractmethod
    def estop(self) -> ArmState:
        """Latched emergency stop."""

    @abc.abstractmethod
    def reset_estop(self) -> ArmState: ...

    @abc.abstractmethod
    def reset_episode(self, options: dict[str, Any] | None = None) -> ArmState:
        """Start a new episode: the sim resets its scene (options: seed, task, state); a real arm goes home."""

    def __enter__(self) -> Arm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


class ArmBackend(abc.ABC):
    """Controller side: the adapter to one kind of arm (MuJoCo sim, dry run, a real arm's SDK)."""

    name: str = "backend"

    @abc.abstractmethod
    def pose(self) -> np.ndarray:
        """Current (x, y, z, yaw, gripper) in the base frame."""

    @abc.abstractmethod
    def apply(self, action: np.ndarray) -> None:
        """Execute one control step of an action the server has already clipped to the safety limits."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Hold position now."""

    @abc.abstractmethod
    def reset(self, options: dict[str, Any]) -> None:
        """Episode reset (sim: new scene from options; real arm: return to home and run the reset routine)."""

    def info(self) -> dict[str, Any]:
        """Backend extras reported with the state (sim: object positions); must be msgpack-able."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the hardware or simulator."""
