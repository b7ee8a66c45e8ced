"""Glue shared by ``mpc-run`` and ``mpc-eval``: build a policy, run an episode against the arm bridge,
and (in simulation) draw the task, feed the oracle and judge the result.

In simulation the client keeps its own :class:`TabletopSim` (``judge_sim``): it draws the episode
from the seed (initial state, goal image), and after every step loads the arm server's simulator state
into it to measure the task distance. The server's scene is set with ``reset_episode({"state": ...})``,
so both sides hold exactly the same scene.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..configs.errors import UserError
from ..configs.schema import Config
from ..robot.arm import Arm
from ..robot.camera import Camera
from ..robot.safety import ActionLimiter
from .costs import check_goal_image
from .loop import EpisodeLog, Judgement, Policy, StepRecord, run_episode
from .optimizers import ActionBounds
from .planner import RandomPolicy, VisualMPCPolicy
from .predictors import Predictor

log = logging.getLogger(__name__)


class GoalImageError(UserError):
    """A goal image file that cannot be used as given."""


def load_goal_image(path: Path, image_size: int, resize: bool = True) -> np.ndarray:
    """Read a goal image file as (S, S, 3) uint8 RGB.

    Refused: a missing file, a file that is not an image, and images that are not RGB (grayscale,
    palette, RGBA...: converting them would silently change colours the pixel cost compares). An RGB
    image of another size is resized to S x S with a warning when ``resize``, refused otherwise.
    """
    if not path.is_file():
        raise GoalImageError(f"goal image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode, size = img.mode, img.size
            rgb = img.copy()
    except (OSError, ValueError) as exc:
        raise GoalImageError(f"goal image {str(path)!r} is not a readable image file ({exc})") from None
    if mode != "RGB":
        raise GoalImageError(
            f"goal image {str(path)!r} has mode {mode} but must be 8-bit RGB (3 channels); save it as RGB, "
            "e.g. from the camera view or a --sim run's goal.png"
        )
    if size != (image_size, image_size):
        if not resize:
            raise GoalImageError(
                f"goal image {str(path)!r} is {size[0]}x{size[1]} but frames are {image_size}x{image_size}"
            )
        log.warning(
            "goal image %s is %dx%d, resizing to the model's %dx%d; crop it to the camera's view if the "
            "aspect ratio differs",
            path,
            size[0],
            size[1],
            image_size,
            image_size,
        )
        rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
    return check_goal_image(np.asarray(rgb, dtype=np.uint8), image_size)


def make_policy(
    predictor: Predictor | None,
    goal_image: np.ndarray,
    cfg: Config,
    seed: int,
    current_gripper: float | None = None,
    **visual_mpc: Any,
) -> Policy:
    """Visual MPC around ``predictor``, or the random baseline when ``predictor`` is None;
    ``visual_mpc`` goes to :class:`VisualMPCPolicy` (``predict_best``, ``on_scored``)."""
    bounds = ActionBounds.from_safety(cfg.safety)
    rng = np.random.default_rng(cfg.planner.seed if cfg.planner.seed is not None else seed)
    if predictor is None:
        return RandomPolicy(cfg.planner, bounds, rng)
    return VisualMPCPolicy(
        predictor,
        goal_image,
        cfg.planner,
        cfg.cost,
        bounds,
        rng,
        current_gripper=current_gripper,
        limiter=ActionLimiter(cfg.safety),
        **visual_mpc,
    )


class SimSession:
    """Runs simulated episodes through a connected arm and camera (the ``--sim`` path)."""

    def __init__(self, cfg: Config, arm: Arm, camera: Camera) -> None:
        from ..robot.sim import TabletopSim, make_task  # MuJoCo only for simulated runs

        self.cfg = cfg
        self.arm = arm
        self.camera = camera
        self.task = make_task(cfg.task)
        self.judge_sim = TabletopSim(cfg.sim, cfg.safety)

    def _sim_state(self) -> bytes:
        getter = getattr(self.arm, "sim_state", None)
        if getter is None:
            raise UserError(
                "this arm cannot report a simulator state; the oracle and --sim need the sim server"
            )
        return getter()

    def run(
        self,
        seed: int,
        predictor: Predictor | None,
        goal_image: np.ndarray | None = None,
        dry_run: bool = False,
        on_step: Callable[[StepRecord], None] | None = None,
        episode: EpisodeLog | None = None,
        **hooks: Any,
    ) -> EpisodeLog:
        """One episode for ``seed``: the task's goal image unless ``goal_image`` is given (then success
        and distance still refer to the task's own goal). Fills and returns ``episode``. ``hooks``
        (``on_plan``, ``hold``) go to :func:`~.loop.run_episode`."""
        drawn = self.task.sample(self.judge_sim, seed)
        state = self.arm.reset_episode({"state": drawn.initial_state})
        goal = drawn.goal_image if goal_image is None else goal_image
        policy = make_policy(predictor, goal, self.cfg, seed, current_gripper=float(state.pose[-1]))
        if episode is None:
            episode = EpisodeLog(goal_image=goal)
        else:
            episode.goal_image = goal
        episode.meta.update(
            task=self.cfg.task.name,
            seed=seed,
            task_info=drawn.info,
            predictor="random" if predictor is None else predictor.name,
            goal_from_task=goal_image is None,
            dry_run=dry_run,
            arm_pose_start=[float(v) for v in state.pose],
            config=self.cfg.model_dump(mode="json"),
        )
        latest: list[bytes] = []  # the state the last judgement saw: the oracle plans from it

        def judge() -> Judgement:
            latest[:] = [self._sim_state()]
            self.judge_sim.set_state(latest[0])
            distance = self.task.distance(self.judge_sim, drawn)
            return Judgement(distance, distance <= self.cfg.task.success_threshold_m)

        def before_plan() -> None:
            if predictor is not None and predictor.needs_sim_state:
                predictor.set_sim_state(latest.pop() if latest else self._sim_state())

        return run_episode(
            self.arm,
            self.camera,
            policy,
            self.cfg.mpc,
            episode,
            first_command_seq=state.last_command_seq,
            dry_run=dry_run,
            before_plan=before_plan,
            judge=judge,
            on_step=on_step,
            **hooks,
        )

    def close(self) -> None:
        self.judge_sim.close()
