"""Values that cross the boundaries between camera, arm and planner.

Actions are 5-D end-effector deltas in the robot base frame:
``(dx, dy, dz)`` metres, ``dyaw`` radians, ``gripper`` an absolute command in [-1, 1]
(-1 fully open, +1 fully closed). Poses are ``(x, y, z, yaw, gripper)`` in the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTION_DIM = 5
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
POSE_NAMES = ("x", "y", "z", "yaw", "gripper")


@dataclass(frozen=True)
class Frame:
    """One camera image with the timing a controller needs to line it up with commands."""

    rgb: np.ndarray  # (H, W, 3) uint8
    t_capture: float  # seconds, wall clock (time.time()) of the capturing host
    seq: int  # the camera's own frame counter, increasing
    last_command_seq: int = -1  # seq of the last arm command applied before capture; -1: none / unknown


@dataclass(frozen=True)
class ArmState:
    """What the arm controller reports about itself."""

    pose: np.ndarray  # (5,) float64: x, y, z (m), yaw (rad), gripper in [-1, 1]
    t: float  # wall clock of the controller when the state was read
    estopped: bool = False  # latched emergency stop; only an explicit reset clears it
    watchdog_stopped: bool = False  # stopped because no command or heartbeat arrived in time
    last_command_seq: int = -1
    info: dict = field(default_factory=dict)  # backend extras (sim: object positions)


@dataclass(frozen=True)
class AppliedAction:
    """The controller's answer to one command: what it really did after clipping."""

    seq: int
    commanded: np.ndarray  # (5,) as sent
    applied: np.ndarray  # (5,) after workspace and step-limit clipping
    clipped: bool
    t_applied: float
    state: ArmState
