"""Typed, validated configuration: one pydantic model per component, gathered in :class:`Config`.

Every model forbids unknown fields, so a typo in a YAML file is refused instead of silently ignored.
Units are SI throughout: metres, radians, seconds. Gripper commands live in [-1, 1], -1 fully open
and +1 fully closed.

Components add their fields to their own class here; defaults carry a comment saying why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class Range(_Strict):
    """A closed interval [low, high]."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class WorkspaceBounds(_Strict):
    """The box the end effector may occupy, in the robot base frame (metres, radians)."""

    x: Range = Range(low=-0.30, high=0.30)
    y: Range = Range(low=-0.30, high=0.30)
    z: Range = Range(low=0.02, high=0.30)  # above the table top: the fingers never dig into it
    yaw: Range = Range(low=-1.57, high=1.57)
    gripper: Range = Range(low=-1.0, high=1.0)


class StepLimits(_Strict):
    """Largest commanded change per control step, as a real arm's controller would allow."""

    dx: float = Field(0.05, gt=0)  # 5 cm per 0.2 s step = 0.25 m/s
    dy: float = Field(0.05, gt=0)
    dz: float = Field(0.05, gt=0)
    dyaw: float = Field(0.3, gt=0)  # rad per step


class SimConfig(_Strict):
    """The MuJoCo tabletop."""

    image_size: int = Field(64, ge=16, le=256)  # square RGB frames, the model's resolution
    control_period_s: float = Field(0.2, gt=0, le=2.0)  # 5 Hz, like the paper's robot
    substeps: int = Field(100, ge=1, le=10_000)  # physics steps per control step (2 ms each)
    render_backend: Literal["auto", "egl", "osmesa"] = "auto"  # auto: EGL, then OSMesa
    shadows: bool = False  # shadows double software-render time and carry no task information
    num_objects: int = Field(3, ge=3, le=6)


class SafetyConfig(_Strict):
    """Limits the arm server enforces for every backend, whatever the client sends."""

    workspace: WorkspaceBounds = WorkspaceBounds()
    step_limits: StepLimits = StepLimits()
    watchdog_timeout_s: float = Field(0.5, gt=0)  # no command or heartbeat for this long: stop
    max_message_bytes: int = Field(65_536, ge=256)


class BridgeConfig(_Strict):
    """Where the arm server and the camera stream listen, and how patient clients are."""

    host: str = "127.0.0.1"  # loopback by default; a network address needs CurveZMQ keys
    command_port: int = Field(5555, ge=0, le=65535)  # 0: pick a free port
    camera_port: int = Field(5556, ge=0, le=65535)
    request_timeout_s: float = Field(1.0, gt=0)
    retries: int = Field(2, ge=0)
    heartbeat_period_s: float = Field(0.1, gt=0)
    curve_keys_dir: str | None = None  # folder with server.key_secret / client.key_secret etc.


class TaskConfig(_Strict):
    """Which simulated task to draw from a seed, and when it counts as solved."""

    name: Literal["reach", "push"] = "push"
    success_threshold_m: float = Field(0.03, gt=0)  # object (push) or gripper (reach) centre
    push_object: str | None = None  # None: drawn from the seed


# --- planning (mpc/) ---------------------------------------------------------------------------


class PlannerConfig(_Strict):
    """The sampling-based optimiser (CEM or MPPI) over 5-D action sequences."""


class CostConfig(_Strict):
    """How predicted frames are scored against the goal image."""


class MPCConfig(_Strict):
    """The receding-horizon loop."""


# --- data collection and loading (robot/collect, models/data) ------------------------------------


class CollectConfig(_Strict):
    """collect-finetune-data: exploration policy, episode length, storage, fault handling."""


class DataConfig(_Strict):
    """Training clips read from recorded episode folders."""


# --- models (models/) ---------------------------------------------------------------------------


class TokenizerConfig(_Strict):
    """The per-frame VQ-GAN: architecture, quantizer, losses and its training run."""


class MaskViTConfig(_Strict):
    """The MaskViT transformer, its masked-visual-modeling objective and its training run."""


class Config(_Strict):
    """The whole stack's configuration. Each command reads the sections it needs."""

    sim: SimConfig = SimConfig()
    safety: SafetyConfig = SafetyConfig()
    bridge: BridgeConfig = BridgeConfig()
    task: TaskConfig = TaskConfig()
    planner: PlannerConfig = PlannerConfig()
    cost: CostConfig = CostConfig()
    mpc: MPCConfig = MPCConfig()
    collect: CollectConfig = CollectConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    maskvit: MaskViTConfig = MaskViTConfig()
