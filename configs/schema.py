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
    # Physics steps per control step: 20 gives a 10 ms timestep, stable for these contacts (default
    # solref 0.02 s >= 2 timesteps) and under 1 ms of physics per control step for oracle rollouts.
    substeps: int = Field(20, ge=1, le=10_000)
    # auto: a user-set MUJOCO_GL (egl|osmesa) if any, else EGL if it starts, else OSMesa.
    render_backend: Literal["auto", "egl", "osmesa"] = "auto"
    shadows: bool = False  # shadows double software-render time and carry no task information
    # Anti-aliasing samples per pixel: smooth edges, as a camera gives; 0 renders about 3x faster
    # (2.3 vs 0.7 ms at 64x64 in software), e.g. for an oracle whose cost blurs the frames anyway.
    multisamples: int = Field(4, ge=0, le=16)
    num_objects: int = Field(3, ge=3, le=6)  # red_block, green_cylinder, blue_block, then 3 more


class SafetyConfig(_Strict):
    """Limits the arm server enforces for every backend, whatever the client sends."""

    workspace: WorkspaceBounds = WorkspaceBounds()
    step_limits: StepLimits = StepLimits()
    watchdog_timeout_s: float = Field(0.5, gt=0)  # no command or heartbeat for this long: stop
    max_message_bytes: int = Field(65_536, ge=256)  # larger requests are refused (TOO_LARGE); states fit
    # Refuse commands sent longer ago than this (send time vs server clock). 0 disables it: clocks of two
    # hosts differ, so only enable it on one host or with synchronised clocks.
    max_command_age_s: float = Field(0.0, ge=0)


class BridgeConfig(_Strict):
    """Where the arm server and the camera stream listen, and how patient clients are."""

    host: str = "127.0.0.1"  # loopback by default; a network address needs CurveZMQ keys
    command_port: int = Field(5555, ge=0, le=65535)  # 0: pick a free port
    camera_port: int = Field(5556, ge=0, le=65535)
    request_timeout_s: float = Field(1.0, gt=0)
    retries: int = Field(2, ge=0)
    heartbeat_period_s: float = Field(0.1, gt=0)
    curve_keys_dir: str | None = None  # folder with server.key_secret / client.key_secret etc.
    # A client's background heartbeat keeps the watchdog quiet while it plans (planning takes longer than
    # the watchdog timeout); it stops when the client process dies or loses the network.
    client_heartbeat: bool = True
    # The frame publisher re-sends its latest frame this often, so a late subscriber (PUB/SUB drops
    # messages sent before a subscription is set up) gets a frame without waiting for the next step.
    camera_republish_period_s: float = Field(0.1, gt=0)
    # Binding to a non-loopback host without CurveZMQ keys exposes the arm to the whole network: refused
    # unless this is set on purpose (e.g. an isolated lab network).
    allow_insecure_network: bool = False


class TaskConfig(_Strict):
    """Which simulated task to draw from a seed, and when it counts as solved."""

    name: Literal["reach", "push"] = "push"
    success_threshold_m: float = Field(0.03, gt=0)  # object (push) or gripper (reach) centre
    push_object: str | None = None  # None: drawn from the seed
    # Push: how far the object must travel. Moderate, so a horizon-8 planner can finish in ~15 steps.
    push_distance_m: Range = Range(low=0.06, high=0.12)
    # Push: gripper start, centre to object centre, behind it on the push line. Close enough that
    # reaching the object fits in the planning horizon (a trial failed when it started farther away).
    push_start_offset_m: Range = Range(low=0.07, high=0.10)
    # Reach: table-plane distance from the gripper's start to the goal. Within ~12 cm the start and goal
    # grippers still overlap in a blurred 64x64 image, so a pixel cost has a slope to follow.
    reach_distance_m: Range = Range(low=0.05, high=0.12)


# --- planning (mpc/) ---------------------------------------------------------------------------


class PlannerConfig(_Strict):
    """The sampling-based optimiser (CEM or MPPI) over 5-D action sequences."""

    optimizer: Literal["cem", "mppi"] = "cem"  # CEM is VP2's default; MPPI as the alternative
    horizon: int = Field(8, ge=1, le=64)  # steps planned ahead; pushes need >= 8 (trial); VP2 uses 10
    samples: int = Field(60, ge=2, le=100_000)  # sequences per iteration; the oracle's physics sets the pace
    iterations: int = Field(3, ge=1, le=100)  # VP2: 3
    elite_fraction: float = Field(0.1, gt=0, le=1)  # CEM refits on the best 10% (VP2: 10 of 200 = 5%)
    # What CEM executes: "best", the lowest-cost sequence it scored; "mean", the mean of its last elites,
    # scored once more. With a learned predictor the best of 180 scores is the one its errors favour most
    # (the optimizer's curse); the elites' mean averages over several that looked good. "auto": "mean"
    # for a learned predictor (the shipped model: 35/60 pushes against 30/60 on two seed sets, and a third
    # as many objects pushed away), "best" for the simulator itself (BENCHMARKS.md).
    cem_return: Literal["auto", "best", "mean"] = "auto"
    # Initial sampling std per dimension (dx, dy, dz m; dyaw rad; gripper), before clipping to the step
    # limits. 0 freezes a dimension at its initial mean: the sim tasks move in the table plane with a
    # fixed gripper (push at pushing height, reach at the goal's height), and every frozen dimension
    # leaves the samples for the ones that matter. Give dz / gripper a std for tasks that need them.
    init_std: list[float] = [0.03, 0.03, 0.0, 0.05, 0.0]
    min_std_fraction: float = Field(0.05, ge=0, le=1)  # CEM std floor, share of init_std: no collapse
    noise_beta: float = Field(0.5, ge=0, lt=1)  # time correlation of sampling noise (VP2: 0.5); 0 = white
    gripper: Literal["continuous", "discrete"] = "discrete"  # discrete snaps commands to open/closed (+-1)
    init_gripper: float | None = Field(None, ge=-1, le=1)  # cold-start gripper mean; None: keep the arm's
    warm_start: bool = True  # start from the previous plan shifted by one step (std reset to init_std)
    include_mean: bool = True  # always score the current mean too, so a good warm start is never lost
    # Score the sequences the arm will execute: each sample is rolled through the arm's workspace and
    # step limits from the current pose first. A learned predictor never saw actions that push past the
    # workspace (its data holds applied actions); fed those, the shipped model erased the gripper, which
    # a goal image without the gripper rewards (BENCHMARKS.md, "feasible plans").
    feasible_plans: bool = True
    momentum: float = Field(0.0, ge=0, lt=1)  # new mean = m * old + (1 - m) * elite mean
    mppi_temperature: float = Field(0.1, gt=0)  # MPPI weight exp(-dcost / (T * sample cost std)); 0.3 drifted
    seed: int | None = None  # None: derived from the episode seed, so runs are reproducible
    # A learned predictor (--predictor PATH, an export-predictor file). Sequences per forward pass: a
    # batch's activations and logits grow with it (d_model 256, 12 frames of 8x8: ~10 MB a sequence).
    predictor_batch: int = Field(64, ge=1, le=100_000)
    predictor_decode_steps: int | None = Field(None, ge=1, le=64)  # decoding steps; None: the export's
    predictor_temperature: float | None = Field(None, ge=0)  # 0: argmax; None: the export's
    predictor_precision: Literal["export", "fp32", "bf16"] = "export"  # bf16 weights; export: its setting

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
            raise ValueError(
                f"frame_weights must be non-negative with a positive sum, got {self.frame_weights}"
            )
        return self


class MPCConfig(_Strict):
    """The receding-horizon loop."""

    context_frames: int = Field(2, ge=1, le=16)  # frames handed to the predictor (VP2: 2)
    max_steps: int = Field(15, ge=1, le=10_000)  # control steps per episode (VP2: 15)
    frame_timeout_s: float = Field(3.0, gt=0)  # wait for the frame that follows a command, then give up
    stop_on_success: bool = True  # sim only: end the episode as soon as the task reports success
    save_gif: bool = True  # episode summary: current frame | goal | best predicted rollout, per step
    gif_frame_ms: int = Field(400, ge=20)  # summary playback speed
    # Processes the sim oracle rolls out in (physics is its cost); 1 stays in-process, cores/2 is fair
    # on a shared machine.
    oracle_workers: int = Field(1, ge=1, le=256)


# --- data collection and loading (robot/collect, models/data) ------------------------------------


class CollectConfig(_Strict):
    """collect-finetune-data: exploration policy, episode length, storage, fault handling."""

    episode_steps: int = Field(30, ge=1, le=10_000)  # actions per episode (RoboNet: 30); frames = steps + 1
    robot_hours: float = Field(4.0, gt=0)  # default target; robot time (sim: steps x control period)
    seed: int = 0  # episode i uses seed + i for its scene and policy, so --resume continues the sequence
    policy: Literal["random"] = "random"  # RoboNet-style correlated random exploration
    # Exploration policy (robot/exploration.py).
    noise_correlation: float = Field(0.7, ge=0, lt=1)  # AR(1) coefficient: smooth, time-correlated motion
    noise_scale: float = Field(0.6, gt=0, le=1)  # noise std as a share of the step limit per axis
    yaw_scale: float = Field(0.3, ge=0, le=1)  # yaw noise as a share of its step limit: yaw matters less
    z_scale: float = Field(0.3, ge=0, le=1)  # vertical noise share: the in-view height band is only ~12 cm
    gripper_toggle_prob: float = Field(0.08, ge=0, le=1)  # chance per step of an open/close event
    object_bias: float = Field(0.5, ge=0, le=1)  # episodes that push an object (sim: ~55% move one > 2 cm)
    approach_gain: float = Field(0.8, gt=0, le=1)  # share of the remaining distance covered per step
    # Pushes per pushing episode: after a push the policy may approach an object again (another, or the
    # same from a new side). Contact is what a push-task model learns least of: each push adds ~10
    # contact-rich steps to an episode that would otherwise explore at random.
    pushes_per_episode: int = Field(1, ge=1, le=100)
    # Gripper (tool centre point) height while pushing: the push task's (robot/sim/tasks.PUSH_HEIGHT_M).
    # At 3 cm (the old default) the data's pushes grazed only the tallest objects, from a height the
    # planner never pushes at.
    approach_height_m: float = Field(0.022, ge=0)
    approach_offset_m: float = Field(0.07, ge=0)  # start this far behind the object's centre
    push_distance_m: float = Field(0.12, gt=0)  # how far past the object centre a push aims
    workspace_margin_m: float = Field(0.02, ge=0)  # keep targets this far inside the safety box
    # Where exploration keeps the gripper (within the safety box): in the camera's view. The sim camera
    # sees the table within |x|, |y| <= 0.17 m and loses the gripper above z = 0.15 m.
    explore_bounds: WorkspaceBounds = WorkspaceBounds(
        x=Range(low=-0.17, high=0.17), y=Range(low=-0.17, high=0.17), z=Range(low=0.02, high=0.15)
    )
    # Resets between episodes.
    scene_redraw_every: int = Field(4, ge=1)  # sim: every N-th reset a fresh random scene, else the task's
    home_pose: list[float] = [0.0, 0.0, 0.15, 0.0, -1.0]  # real arm: x, y, z (m), yaw (rad), gripper
    reset_poses: list[list[float]] = []  # real arm: poses visited after home to re-spread the objects
    reset_tolerance_m: float = Field(0.01, gt=0)  # a reset pose counts as reached within this distance
    reset_max_steps: int = Field(60, ge=1)  # give up moving to a reset pose after this many steps
    # Storage.
    compression_level: int = Field(4, ge=0, le=9)  # gzip level for frames and segmentation
    record_segmentation: bool = True  # sim only: per-frame object ids for tokenizer metrics
    min_free_disk_mb: float = Field(500.0, ge=0)  # stop before writing when free space drops below this
    calibration_id: str = ""  # stored with every episode; "" for the simulation
    # Faults.
    camera_timeout_s: float = Field(2.0, gt=0)  # no frame after a command for this long: camera fault
    frozen_frame_limit: int = Field(4, ge=2)  # this many identical consecutive frames: camera frozen
    max_camera_reconnects: int = Field(5, ge=0)  # consecutive failed episodes before giving up
    arm_retries: int = Field(2, ge=0)  # re-tries of a timed-out arm request before a clean stop

    @model_validator(mode="after")
    def _poses_are_5d(self) -> CollectConfig:
        for pose in [self.home_pose, *self.reset_poses]:
            if len(pose) != 5:
                raise ValueError(f"poses are (x, y, z, yaw, gripper), 5 numbers; got {pose}")
        return self


class DataConfig(_Strict):
    """Training clips read from recorded episode folders."""

    folders: list[str] = []  # episode folders (collect-finetune-data --out); mixed by weights
    weights: list[float] = []  # sampling weight per folder; empty: all equal
    clip_length: int = Field(12, ge=2)  # frames per clip: 2 context + 10 future (VP2's MaskViT setup)
    frame_skip: int = Field(1, ge=1)  # use every k-th frame; actions in between are summed
    image_size: int = Field(64, ge=8, le=1024)  # square output resolution (area interpolation)
    val_fraction: float = Field(0.1, ge=0, lt=1)  # share of EPISODES held out (never clips of one episode)
    split_seed: int = 0  # changes which episodes are held out, deterministically
    action_source: Literal["applied", "commanded"] = "applied"  # applied: what the arm really did
    float_frames: bool = False  # False: uint8 frames; True: float32 in [0, 1]
    # Draw clips in which an object moves (recorded sim object positions) this many times as often as
    # the others: pushes are a minority of random-exploration clips but the whole point of the model.
    motion_oversample: float = Field(1.0, ge=0)
    motion_threshold_m: float = Field(0.01, gt=0)  # "moves": an object travels this far within the clip

    @model_validator(mode="after")
    def _weights_match(self) -> DataConfig:
        if self.weights and len(self.weights) != len(self.folders):
            raise ValueError(f"{len(self.weights)} weights for {len(self.folders)} folders: one per folder")
        if any(w < 0 for w in self.weights):
            raise ValueError("folder weights must be >= 0")
        return self


# --- models (models/) ---------------------------------------------------------------------------


class TokenizerConfig(_Strict):
    """The per-frame VQ-GAN: architecture, quantizer, losses and its training run.

    Defaults suit 64x64 simulated frames on a CPU; configs/tokenizer_cpu.yaml (8x8 tokens, for planning)
    and configs/tokenizer_cpu16.yaml (16x16 tokens, for reconstruction quality) are the measured CPU
    presets, configs/tokenizer_paper.yaml the paper-scale GPU preset.
    """

    # architecture
    image_size: int = Field(64, ge=16, le=1024)  # square input frames; episodes must match
    grid_size: int = Field(8, ge=1, le=128)  # tokens per side: image_size / 2**downsamplings
    base_channels: int = Field(16, ge=8, le=1024)  # width at full resolution, where the compute goes
    # channel multiplier per resolution level; len - 1 = number of 2x downsamplings
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1, max_length=8)
    num_res_blocks: int = Field(1, ge=1, le=8)  # residual blocks per level
    code_dim: int = Field(8, ge=2, le=1024)  # latent width at the quantizer; low dims use codes better
    # quantizer
    quantizer: Literal["vq", "fsq"] = "vq"  # fsq: finite scalar quantization, cannot collapse
    codebook_size: int = Field(512, ge=2, le=65_536)  # vq only; fsq's size is prod(fsq_levels)
    cosine_codes: bool = True  # l2-normalise latents and codes: keeps the codebook healthy
    codebook_update: Literal["gradient", "ema"] = "gradient"  # how vq codes learn
    ema_decay: float = Field(0.99, gt=0, lt=1)  # only with codebook_update=ema
    commitment_weight: float = Field(0.25, ge=0)  # beta in the VQ-VAE loss
    init_codebook_from_data: bool = True  # first training batch's latents seed the codebook
    dead_code_steps: int = Field(200, ge=0)  # code unused this many steps: restart it (0: never)
    fsq_levels: list[int] = Field(default_factory=lambda: [8, 8, 8], min_length=1, max_length=8)
    learned_background: bool = True  # decoder position embedding + background image: codes go to objects
    # group: GroupNorm as in VQ-GAN (image-wide statistics: codes on an unchanged table flip when the
    # gripper moves elsewhere); channel: per-pixel LayerNorm, codes depend only on nearby pixels
    norm: Literal["group", "channel"] = "group"
    encoder_token_kernel: Literal[1, 3] = 3  # 1: no 3x3 layers at token resolution: a smaller receptive field
    # losses
    recon_loss: Literal["l1", "l2"] = (
        "l2"  # l2 is what PSNR measures; it raised PSNR faster than l1 in trials
    )
    object_weight: float = Field(20.0, ge=1.0)  # loss weight on gripper/object pixels (segmentation > 0)
    # pixels around them weighted the same: the edge just outside the segmentation blurs the most
    object_margin: int = Field(0, ge=0, le=8)
    disc_weight: float = Field(0.0, ge=0)  # 0: no GAN; off on CPU (doubles step cost, lowers PSNR)
    disc_start_step: int = Field(2000, ge=0)  # GAN term off before this step: let reconstructions settle
    disc_channels: int = Field(64, ge=8, le=1024)
    disc_layers: int = Field(3, ge=1, le=6)  # PatchGAN depth: 3 gives 70x70 receptive fields
    adaptive_weight_max: float = Field(1e4, gt=0)  # clamp of the gradient-norm ratio
    perceptual_weight: float = Field(1.0, ge=0)  # used only with perceptual_weights_path
    # torchvision-style VGG16 state_dict (optionally with LPIPS lin layers); None: no perceptual term
    perceptual_weights_path: str | None = None
    # training run
    steps: int = Field(6000, ge=1)  # optimizer steps
    batch_size: int = Field(64, ge=1)  # frames per step per process
    lr: float = Field(1e-3, gt=0)  # 1e-3 beat 3e-4 by ~1.5 dB at 3000 steps on sim frames
    warmup_steps: int = Field(200, ge=0)  # linear warm-up, then cosine decay
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine floor as a share of lr
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max grad norm; 0: no clipping
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    seed: int = 0
    log_every: int = Field(50, ge=1)  # steps between CSV rows
    sample_every: int = Field(500, ge=1)  # steps between reconstruction PNG grids
    checkpoint_every: int = Field(1000, ge=1)  # steps between checkpoints

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerConfig:
        downs = len(self.channel_mult) - 1
        if self.image_size != self.grid_size * 2**downs:
            raise ValueError(
                f"image_size ({self.image_size}) must equal grid_size ({self.grid_size}) * 2**(len(channel_mult)-1)"
                f" = {self.grid_size * 2**downs}; change channel_mult's length or grid_size"
            )
        if any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"fsq_levels must all be >= 2, got {self.fsq_levels}")
        return self


class MaskViTConfig(_Strict):
    """The MaskViT transformer, its masked-visual-modeling objective and its training run.

    The codebook size and token grid are not set here: they come from the tokenizer the model is
    trained on, so the two can never disagree.
    """

    # architecture (models/maskvit.py)
    d_model: int = Field(256, ge=8)  # the 0.93M-parameter d=128 trial was capacity-bound on contact
    n_blocks: int = Field(4, ge=1)  # each block = one spatial-window + one spatiotemporal-window layer
    n_heads: int = Field(8, ge=1)  # d_model must divide evenly; 32-dim heads at the default width
    mlp_ratio: float = Field(4.0, gt=0)  # hidden width of each MLP, as a multiple of d_model
    dropout: float = Field(0.1, ge=0, lt=1)  # robot fine-tuning sets are small (thousands of clips)
    attention: Literal["window", "full"] = "window"  # full: each layer attends over the whole clip (ablation)
    st_window: tuple[int, int] = (4, 4)  # h' x w' tokens of the spatiotemporal window (paper: 4 x 4)
    # input: a projection of action t is added to every token of frame t+1 before the first block;
    # every_block: each block adds its own projection; none: action-free model (no action weights)
    action_conditioning: Literal["none", "input", "every_block"] = "input"
    # Divisor per action component (dx, dy, dz m; dyaw rad; gripper) before the projection: the default
    # step limits put every component in [-1, 1]. Unscaled, the table-plane motions (std ~0.03 m) were
    # ~30x weaker inputs than the gripper (+-1) and the trained model's rollouts barely followed them.
    action_scale: list[float] = [0.05, 0.05, 0.05, 0.3, 1.0]
    # Also condition frame t+1 on the sum of the actions since the clip's first frame (its displacement
    # from a visible context frame), not only on the last action.
    action_cumulative: bool = False
    # Also condition on the end effector's x, y, z at the clip's first frame, normalised as
    # (position - pose_offset) / pose_scale (metres): the oblique camera shows a raised gripper much like
    # one further back, and whether it pushes an object depends on that height. The planner passes the
    # arm's pose; fine-tuning a model without it (train-maskvit --init-from) starts from zero weights.
    pose_conditioning: bool = False
    pose_offset: list[float] = [0.0, 0.0, 0.1]
    pose_scale: list[float] = [0.15, 0.15, 0.1]
    context_frames: int = Field(2, ge=1)  # observed frames (VP2 planner default: 2)
    future_frames: int = Field(10, ge=1)  # predicted frames; planning needs a horizon of at least 8
    # masked-visual-modeling objective (models/masking.py)
    mask_ratio_min: float = Field(0.5, ge=0, lt=1)  # r ~ U[min, max) per clip; fixed ratios were worse
    mask_ratio_max: float = Field(1.0, gt=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)  # as in MaskGIT; 0 disables
    # changed: tokens that differ from the previous frame's token at the same position weigh more;
    # background: tokens that differ from the per-position most common token weigh more; context:
    # "changed" tokens and, in the future frames, those that differ from the last context frame (what
    # copy-last gets wrong: a moved object weighs in every later frame). ~62% of tabletop tokens are
    # static background and otherwise dominate the loss.
    token_weighting: Literal["none", "changed", "background", "context"] = "none"
    token_weight: float = Field(4.0, ge=1)  # weight of the changed / non-background tokens (others: 1)
    # weight (at least) of the token cells showing an object in the target frame or in the last context
    # frame (from the recorded segmentation): the pushed object, and the place it leaves. 1: off.
    object_token_weight: float = Field(1.0, ge=1)
    extra_visible_frames: list[int] = []  # future frame indices (of the whole clip, -1 = last) never masked
    # iterative decoding (models/decoding.py)
    decode_steps: int = Field(5, ge=1)  # forward passes per prediction (VP2's MaskViT wrapper: 5)
    mask_schedule: Literal["cosine", "linear", "square", "cubic", "sqrt", "exponential"] = "cosine"
    temperature: float = Field(1.0, ge=0)  # sampling temperature of each token; 0: argmax
    # scale of the Gumbel noise added to the log-confidence, annealed to 0 over the steps; 4.5 is
    # MaskGIT's default (the "temperature around 4.5" of the paper is this knob, not sampling)
    confidence_noise: float = Field(4.5, ge=0)
    # training run (models/train_maskvit.py)
    tokenizer_checkpoint: str | None = None  # train-tokenizer's step_N.pt; train-maskvit --tokenizer sets it
    steps: int = Field(20_000, ge=1)  # optimizer steps; the 33-minute CPU trial (~2k steps) still improved
    batch_size: int = Field(32, ge=1)  # clips per step per process
    lr: float = Field(3e-4, gt=0)  # AdamW peak learning rate
    warmup_steps: int = Field(500, ge=0)  # linear warm-up, then cosine decay
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine floor as a share of lr
    weight_decay: float = Field(0.05, ge=0)  # on matrices only; embeddings, norms and biases get none
    grad_clip: float = Field(1.0, ge=0)  # max gradient norm; 0 disables
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast: 1.8x faster than fp32 on the trial CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    seed: int = 0
    log_every: int = Field(50, ge=1)  # steps between CSV rows
    val_every: int = Field(500, ge=1)  # steps between validation passes
    val_batches: int = Field(8, ge=1)  # validation batches per pass (same clips and masks every pass)
    # clips decoded at each validation (as the planner decodes) for PSNR / SSIM vs copy-last and the
    # object-position error; 0 skips it
    val_decode_clips: int = Field(32, ge=0)
    checkpoint_every: int = Field(1000, ge=1)  # steps between checkpoints

    @model_validator(mode="after")
    def _consistent(self) -> MaskViTConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.mask_ratio_min >= self.mask_ratio_max:
            raise ValueError(
                f"mask_ratio_min ({self.mask_ratio_min}) must be below mask_ratio_max ({self.mask_ratio_max})"
            )
        if min(self.st_window) < 1:
            raise ValueError(f"st_window sides must be >= 1, got {self.st_window}")
        n = self.context_frames + self.future_frames
        for i in self.extra_visible_frames:
            j = i % n if -n <= i < n else None
            if j is None or j < self.context_frames:
                raise ValueError(
                    f"extra_visible_frames entry {i} must name a future frame: an index in "
                    f"[{self.context_frames}, {n}) or [-{self.future_frames}, -1]"
                )
        if len({i % n for i in self.extra_visible_frames}) >= self.future_frames:
            raise ValueError("extra_visible_frames must leave at least one future frame to predict")
        if len(self.action_scale) != 5 or min(self.action_scale) <= 0:
            raise ValueError(
                f"action_scale needs 5 positive values (dx, dy, dz, dyaw, gripper), got {self.action_scale}"
            )
        if len(self.pose_offset) != 3 or len(self.pose_scale) != 3 or min(self.pose_scale) <= 0:
            raise ValueError(
                f"pose_offset needs 3 values and pose_scale 3 positive ones (x, y, z metres), got "
                f"{self.pose_offset} and {self.pose_scale}"
            )
        return self


# --- cameras and calibration (robot/cameras, robot/preprocess, calibration/) ----------------------


class ViewConfig(_Strict):
    """How a camera image becomes the model's view; collection and planning apply the same steps."""

    # Region kept, in pixels of the camera image: x, y (top-left corner), width, height. None: the
    # largest centred square, so a 4:3 image is cut rather than squashed.
    crop: list[int] | None = None
    image_size: int | None = Field(None, ge=8, le=1024)  # square output side; None: data.image_size
    undistort: bool = False  # remove lens distortion (camera.intrinsics_file) before cropping

    @model_validator(mode="after")
    def _crop_box(self) -> ViewConfig:
        if self.crop is not None and (
            len(self.crop) != 4 or min(self.crop[:2]) < 0 or min(self.crop[2:]) < 1
        ):
            raise ValueError(
                f"crop is [x, y, width, height] in pixels with x, y >= 0 and a positive size, got {self.crop}"
            )
        return self


class CameraConfig(_Strict):
    """Which camera a real-robot run reads and how; the sim streams its own frames over the bridge."""

    driver: Literal["zmq", "realsense", "opencv", "replay"] = "zmq"  # zmq: the arm server's stream
    serial: str | None = None  # realsense: which device (list-cameras); None: the only one connected
    device: str = "0"  # opencv: a device index (/dev/videoN), a device path or a video file / URL
    width: int = Field(640, ge=16, le=8192)  # requested capture mode; RealSense must offer it exactly
    height: int = Field(480, ge=16, le=8192)
    fps: int = Field(30, ge=1, le=1000)
    # Frames dropped after connecting: auto exposure and white balance need about a second to settle.
    warmup_frames: int = Field(30, ge=0, le=10_000)
    # Fixed exposure in the sensor's own unit (RealSense colour: 0.1 ms, so 166 = 16.6 ms; OpenCV: the
    # capture backend's); None keeps auto exposure. Fixed exposure keeps brightness constant for the model.
    exposure: float | None = Field(None, gt=0)
    depth: bool = False  # realsense: also stream depth, aligned to the colour image (metres)
    frame_timeout_s: float = Field(2.0, gt=0)  # longest wait for a frame while connecting
    reconnect_after_failures: int = Field(3, ge=1)  # consecutive read timeouts before reset + reconnect
    reconnect_timeout_s: float = Field(10.0, gt=0)  # how long a reset device may take to come back
    replay_path: str | None = None  # replay: an episode .h5, a video file or a folder of images
    replay_fps: float = Field(0.0, ge=0)  # replay pacing; 0: the next frame at every read
    replay_loop: bool = False  # replay: start over at the end instead of reporting the end
    intrinsics_file: str | None = None  # calibrate-camera's output; needed by view.undistort
    view: ViewConfig = ViewConfig()


class BoardSpec(_Strict):
    """A printed calibration board. Sizes count squares (not inner corners), as printed."""

    type: Literal["checkerboard", "charuco"] = "charuco"  # ChArUco: partly hidden views still count
    columns: int = Field(9, ge=3, le=100)  # squares across
    rows: int = Field(6, ge=3, le=100)  # squares down
    square_size_m: float = Field(0.03, gt=0)  # measure the print: printers scale
    marker_size_m: float | None = Field(None, gt=0)  # charuco: the ArUco marker side; default 0.75 x square
    dictionary: str = "DICT_5X5_100"  # charuco: cv2.aruco dictionary name

    @model_validator(mode="after")
    def _marker_fits(self) -> BoardSpec:
        if self.marker_size_m is not None and self.marker_size_m >= self.square_size_m:
            raise ValueError(
                f"marker_size_m ({self.marker_size_m}) must be smaller than square_size_m ({self.square_size_m})"
            )
        return self


def _is_matrix(value: list[list[float]], rows: int, cols: int) -> bool:
    return len(value) == rows and all(len(row) == cols for row in value)


class CameraIntrinsics(_Strict):
    """calibrate-camera's output: the pinhole model and OpenCV distortion of one camera at one resolution."""

    kind: Literal["camera_intrinsics"] = "camera_intrinsics"
    id: str = Field(min_length=1)  # recorded with every episode (collect.calibration_id)
    camera: str = ""  # e.g. realsense:123456789 or opencv:0
    image_width: int = Field(gt=0)
    image_height: int = Field(gt=0)
    camera_matrix: list[list[float]]  # 3x3 [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], pixels
    distortion: list[float]  # OpenCV order: k1, k2, p1, p2[, k3[, k4, k5, k6]]
    reprojection_error_px: float = Field(ge=0)  # RMS over all detected corners
    views_used: int = Field(ge=1)
    board: BoardSpec
    created: str = ""  # ISO 8601 time of the calibration

    @model_validator(mode="after")
    def _pinhole(self) -> CameraIntrinsics:
        k = self.camera_matrix
        if not _is_matrix(k, 3, 3) or k[2] != [0.0, 0.0, 1.0] or k[0][0] <= 0 or k[1][1] <= 0:
            raise ValueError(
                f"camera_matrix must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {k}"
            )
        if len(self.distortion) not in (4, 5, 8, 12, 14):
            raise ValueError(
                f"distortion needs 4, 5, 8, 12 or 14 OpenCV coefficients, got {len(self.distortion)}"
            )
        return self


class HandEyeCalibration(_Strict):
    """calibrate-handeye's output: where the camera is, as a 4x4 rigid transform (metres)."""

    kind: Literal["hand_eye"] = "hand_eye"
    id: str = Field(min_length=1)
    # eye_to_hand: a fixed camera; transform = the camera's pose in the robot base frame.
    # eye_in_hand: a camera on the arm; transform = the camera's pose in the gripper (flange) frame.
    setup: Literal["eye_to_hand", "eye_in_hand"]
    method: Literal["tsai", "park", "horaud", "andreff", "daniilidis"]
    transform: list[list[float]]  # 4x4, maps camera coordinates into the parent frame
    # Spread of the board pose that should be constant (on the gripper, or on the table) over the pairs.
    residual_translation_mm: float = Field(ge=0)  # RMS
    residual_rotation_deg: float = Field(ge=0)  # RMS
    pairs_used: int = Field(ge=3)
    intrinsics_id: str = ""
    created: str = ""

    @model_validator(mode="after")
    def _rigid(self) -> HandEyeCalibration:
        t = self.transform
        if not _is_matrix(t, 4, 4) or t[3] != [0.0, 0.0, 0.0, 1.0]:
            raise ValueError("transform must be a 4x4 matrix whose last row is [0, 0, 0, 1]")
        r = [row[:3] for row in t[:3]]
        for i in range(3):
            for j in range(3):
                dot = sum(r[k][i] * r[k][j] for k in range(3))
                if abs(dot - (1.0 if i == j else 0.0)) > 1e-4:
                    raise ValueError("the rotation part of transform is not orthonormal")
        det = (
            r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
            - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
            + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0])
        )
        if det < 0:
            raise ValueError("the rotation part of transform is a reflection (determinant -1)")
        return self


class WorkspaceCalibration(_Strict):
    """calibrate-workspace's output: the box ``arm-server --workspace-file`` enforces."""

    kind: Literal["workspace_bounds"] = "workspace_bounds"
    id: str = Field(min_length=1)
    workspace: WorkspaceBounds
    source: Literal["recorded", "entered"]
    points_m: list[list[float]] = []  # the corners it was made from (x, y, z), robot base frame
    margin_m: float = Field(0.0, ge=0)  # how far the box was pulled in from the corners
    created: str = ""


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
    camera: CameraConfig = CameraConfig()
