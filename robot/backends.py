"""Arm backends the server ships with: ``dry`` (no hardware, integrates poses) and ``sim`` (MuJoCo).

A backend receives only actions the server has already clipped. Besides :class:`~.arm.ArmBackend`, a
backend may offer :class:`FrameSource` (the server then publishes camera frames after every step and
reset) and :class:`SimulatorAccess` (sim-only requests: full state, segmentation). ``apply`` may return
the action it really executed when that differs from what it was given (the sim clips again against its
servo target); the server then reports that one.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import Config, SafetyConfig, SimConfig, TaskConfig
from .arm import ArmBackend
from .protocol import to_wire_value
from .safety import ActionLimiter

log = logging.getLogger(__name__)

BackendName = Literal["dry", "sim"]


class BackendOptionError(UserError):
    """Reset options the backend cannot use (answered as BAD_OPTIONS)."""


class UnsupportedRequest(UserError):
    """A request the backend does not offer (answered as UNSUPPORTED)."""


@runtime_checkable
class FrameSource(Protocol):
    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 image of the scene now."""


@runtime_checkable
class SimulatorAccess(Protocol):
    def sim_state(self) -> bytes: ...

    def segmentation(self) -> np.ndarray:
        """(H, W) int32 labels: 0 background, 1 gripper, 2 + i the i-th object."""


def _seed_option(options: dict[str, Any]) -> int | None:
    seed = options.get("seed")
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BackendOptionError(f"option 'seed' must be an integer in [0, 2**63), got {seed!r}")
    return seed


class DryBackend(ArmBackend):
    """No hardware: logs every action and integrates it into a pose, so states and frames are plausible.

    Frames (:meth:`render`) are a synthetic top view: a square at the gripper's x, y whose brightness
    follows its height; enough to exercise the camera path and the control loop without MuJoCo.
    Reset options: ``seed`` (accepted, no effect), ``pose`` (5 numbers, clamped into the workspace).
    """

    name = "dry"

    def __init__(self, safety: SafetyConfig | None = None, image_size: int = 64) -> None:
        self.safety = safety if safety is not None else SafetyConfig()
        self._limits = ActionLimiter(self.safety)
        self.image_size = image_size
        self.home = self._limits.clamp_pose(
            np.array([0.0, 0.0, (self._limits.low[2] + self._limits.high[2]) / 2, 0.0, -1.0])
        )
        self._pose = self.home.copy()
        self.steps = 0
        self.stops = 0

    def pose(self) -> np.ndarray:
        return self._pose.copy()

    def apply(self, action: np.ndarray) -> None:
        self._pose[:4] += action[:4]
        self._pose[4] = action[4]
        self.steps += 1
        log.debug(
            "dry step %d: applied %s -> pose %s", self.steps, np.round(action, 4), np.round(self._pose, 4)
        )

    def stop(self) -> None:
        self.stops += 1
        log.info("dry stop (%d)", self.stops)

    def reset(self, options: dict[str, Any]) -> None:
        unknown = set(options) - {"seed", "pose"}
        if unknown:
            raise BackendOptionError(
                f"the dry backend takes reset options 'seed' and 'pose', not {sorted(unknown)}"
            )
        _seed_option(options)
        pose = options.get("pose")
        if pose is None:
            self._pose = self.home.copy()
        else:
            p = np.asarray(pose, dtype=np.float64) if isinstance(pose, (list, tuple)) else None
            if p is None or p.shape != (5,) or not np.all(np.isfinite(p)):
                raise BackendOptionError(
                    f"option 'pose' must be 5 finite numbers (x, y, z, yaw, gripper), got {pose!r}"
                )
            self._pose = self._limits.clamp_pose(p)
        self.steps = 0
        log.info("dry reset to %s", np.round(self._pose, 4))

    def info(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def render(self) -> np.ndarray:
        s = self.image_size
        img = np.full((s, s, 3), 96, dtype=np.uint8)
        span = self._limits.high - self._limits.low
        u = (self._pose[:2] - self._limits.low[:2]) / np.where(span[:2] > 0, span[:2], 1.0)
        col, row = (np.clip(u, 0.0, 1.0) * (s - 1)).astype(int)
        half = max(1, s // 16)
        height = float(np.clip((self._pose[2] - self._limits.low[2]) / max(span[2], 1e-9), 0.0, 1.0))
        grip = 255 if self._pose[4] > 0 else 0
        img[max(0, row - half) : row + half + 1, max(0, col - half) : col + half + 1] = (
            int(100 + 155 * height),
            grip,
            200,
        )
        return img


class SimBackend(ArmBackend):
    """The MuJoCo tabletop (:mod:`maskvit_mpc.robot.sim`) behind the arm server.

    Reset options, one of:

    * ``{"seed": s, "task": "reach" | "push"}``: the task sampler draws the episode for seed ``s`` and
      its initial state is set (a client running ``make_task(...).sample`` with the same seed in its
      own simulator gets the same episode, goal image included);
    * ``{"state": bytes}``: an exact simulator state (from ``TabletopSim.get_state``);
    * ``{"seed": s}``: a plain random scene, ``TabletopSim.reset(s)``.

    ``stop`` has nothing to do: simulated time only advances inside a step, so the gripper already
    holds its pose between commands.
    """

    name = "sim"

    def __init__(self, sim_cfg: SimConfig, safety: SafetyConfig, task_cfg: TaskConfig | None = None) -> None:
        from .sim import TabletopSim  # MuJoCo is imported only when a sim backend is built

        self.sim = TabletopSim(sim_cfg, safety)
        self.task_cfg = task_cfg if task_cfg is not None else TaskConfig()
        self._task_info: dict[str, Any] = {}

    def pose(self) -> np.ndarray:
        return self.sim.ee_pose()

    def apply(self, action: np.ndarray) -> np.ndarray:
        return self.sim.step(action)

    def stop(self) -> None:
        log.debug("sim stop: nothing to do between steps")

    def reset(self, options: dict[str, Any]) -> None:
        unknown = set(options) - {"seed", "task", "state"}
        if unknown:
            raise BackendOptionError(
                f"sim reset options are 'seed', 'task', 'state'; unknown: {sorted(unknown)}"
            )
        seed = _seed_option(options)
        task = options.get("task")
        state = options.get("state")
        if state is not None:
            if seed is not None or task is not None:
                raise BackendOptionError("give either 'state' or 'seed' (with an optional 'task'), not both")
            if not isinstance(state, (bytes, bytearray)):
                raise BackendOptionError("option 'state' must be bytes from TabletopSim.get_state()")
            self.sim.set_state(bytes(state))
            self._task_info = {}
            return
        if seed is None:
            raise BackendOptionError("sim reset needs 'seed' (and optionally 'task') or 'state'")
        if task is None:
            self.sim.reset(seed)
            self._task_info = {}
            return
        if task not in ("reach", "push"):
            raise BackendOptionError(f"option 'task' must be 'reach' or 'push', got {task!r}")
        from .sim import make_task

        episode = make_task(self.task_cfg.model_copy(update={"name": task})).sample(self.sim, seed)
        self.sim.set_state(episode.initial_state)
        self._task_info = {"name": task, "seed": seed, **to_wire_value(episode.info)}

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "objects": {name: [float(v) for v in p] for name, p in self.sim.object_positions().items()},
            "sim_time": self.sim.time,
        }
        if self._task_info:
            info["task"] = self._task_info
        return info

    def render(self) -> np.ndarray:
        return self.sim.render()

    def sim_state(self) -> bytes:
        return self.sim.get_state()

    def segmentation(self) -> np.ndarray:
        return self.sim.render_segmentation().astype(np.int32)

    def close(self) -> None:
        self.sim.close()


def make_backend(name: BackendName, config: Config) -> ArmBackend:
    """The backend called ``name`` ("dry" or "sim"), built from the whole config."""
    if name == "dry":
        return DryBackend(config.safety, image_size=config.sim.image_size)
    if name == "sim":
        return SimBackend(config.sim, config.safety, config.task)
    raise UserError(f"unknown arm backend {name!r}; choose 'sim' or 'dry'")
