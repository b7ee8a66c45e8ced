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

    optimizer: Literal["cem", "mppi"] = "cem"  # CEM is VP2's default; MPPI as the alternative
    horizon: int = Field(10, ge=1, le=64)  # steps planned ahead; pushes need >= 8 (trial), VP2 uses 10
    samples: int = Field(100, ge=2, le=100_000)  # sequences per iteration; 100 keeps the oracle ~2 s/step
    iterations: int = Field(3, ge=1, le=100)  # VP2: 3
    elite_fraction: float = Field(0.1, gt=0, le=1)  # CEM refits on the best 10% (VP2: 10 of 200 = 5%)
    # Initial sampling std per dimension (dx, dy, dz m; dyaw rad; gripper), before clipping to the step
    # limits. About half a step limit explores widely without piling samples on the bounds; 0 freezes a
    # dimension at its initial mean.
    init_std: list[float] = [0.03, 0.03, 0.015, 0.15, 1.0]
    min_std_fraction: float = Field(0.02, ge=0, le=1)  # floor on CEM std, share of init_std: no early collapse
    noise_beta: float = Field(0.5, ge=0, lt=1)  # time correlation of sampling noise (VP2: 0.5); 0 = white
    gripper: Literal["continuous", "discrete"] = "discrete"  # discrete snaps commands to open/closed (+-1)
    init_gripper: float = Field(-1.0, ge=-1, le=1)  # mean gripper command of a cold start (-1 open)
    warm_start: bool = True  # start from the previous plan shifted by one step (std reset to init_std)
    include_mean: bool = True  # always score the current mean too, so a good warm start is never lost
    momentum: float = Field(0.0, ge=0, lt=1)  # new mean = m * old + (1 - m) * elite mean
    mppi_temperature: float = Field(0.3, gt=0)  # MPPI weights exp(-dcost / (T * cost std over samples))
    seed: int | None = None  # None: derived from the episode seed, so runs are reproducible

    @model_validator(mode="after")
    def _five_stds(self) -> PlannerConfig:
        if len(self.init_std) != 5 or any(s < 0 for s in self.init_std):
            raise ValueError(
                f"init_std needs 5 non-negative values (dx, dy, dz, dyaw, gripper), got {self.init_std}"
            )
        return self


class CostConfig(_Strict):
    """How predicted frames are scored against the goal image."""

    # Which predicted frames are scored: "all" sums the squared error over the clip (VP2), "last" only
    # scores the final frame (the oracle then renders one frame per rollout: several times faster).
    frames: Literal["all", "last"] = "last"
    # Optional weight per predicted frame (length = planner.horizon); overrides `frames`; zero weights
    # are not rendered by predictors that can skip frames.
    frame_weights: list[float] | None = None
    # Gaussian blur of prediction and goal before the pixel error: the plain error is flat until the
    # object overlaps its goal (trial: 4/10 pushes plain, 9/10 with sigma ~3 px at 64x64). 0 disables.
    blur_sigma_px: float = Field(3.0, ge=0, le=32)

    @model_validator(mode="after")
    def _weights(self) -> CostConfig:
        if self.frame_weights is not None and (
            not self.frame_weights or any(w < 0 for w in self.frame_weights) or sum(self.frame_weights) <= 0
        ):
            raise ValueError(f"frame_weights must be non-negative with a positive sum, got {self.frame_weights}")
        return self


class MPCConfig(_Strict):
    """The receding-horizon loop."""

    context_frames: int = Field(2, ge=1, le=16)  # frames handed to the predictor (VP2: 2)
    max_steps: int = Field(15, ge=1, le=10_000)  # control steps per episode (VP2: 15)
    frame_timeout_s: float = Field(3.0, gt=0)  # wait for the frame that follows a command, then give up
    stop_on_success: bool = True  # sim only: end the episode as soon as the task reports success
    save_gif: bool = True  # episode summary: current frame | goal | best predicted rollout, per step
    gif_frame_ms: int = Field(400, ge=20)  # summary playback speed


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
