"""Policies the receding-horizon loop asks for a plan: visual MPC (predictor + cost + optimiser) and a
random baseline. Both return a :class:`PlanStep`; the loop executes its first action."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..configs.schema import CostConfig, PlannerConfig
from ..robot.safety import ActionLimiter
from .costs import ImageCost
from .optimizers import ActionBounds, PlanResult, finalize_actions, initial_mean, optimize, shift_plan
from .predictors import Predictor


@dataclass(frozen=True)
class PlanStep:
    """One planning call: the plan, what it was expected to look like, and where the time went."""

    result: PlanResult
    predicted: np.ndarray | None  # (horizon, H, W, 3) uint8: the best plan's predicted clip, if asked for
    plan_time_s: float  # wall time of the whole call
    predict_time_s: float  # of which inside the predictor
    cost_time_s: float  # of which inside the cost

    @property
    def action(self) -> np.ndarray:
        """(5,) the action to execute now."""
        return self.result.actions[0]


class VisualMPCPolicy:
    """Plans action sequences whose predicted frames look like the goal image.

    ``context_frames`` handed to :meth:`plan` are (Tc, H, W, 3) uint8, oldest first. Between calls it
    keeps the previous plan to warm-start the next one (``PlannerConfig.warm_start``).
    """

    def __init__(
        self,
        predictor: Predictor,
        goal_image: np.ndarray,
        planner_cfg: PlannerConfig,
        cost_cfg: CostConfig,
        bounds: ActionBounds,
        rng: np.random.Generator,
        predict_best: bool = True,
        current_gripper: float | None = None,
        limiter: ActionLimiter | None = None,
        on_scored: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        self.predictor = predictor
        if planner_cfg.cem_return == "auto":  # a learned model's best-scored plan is where its errors lie
            planner_cfg = planner_cfg.model_copy(
                update={"cem_return": "mean" if predictor.learned else "best"}
            )
        self.cfg = planner_cfg
        self.cost = ImageCost(cost_cfg, goal_image, planner_cfg.horizon)
        self.bounds = bounds
        self.rng = rng
        self.predict_best = predict_best
        # A cold start holds the arm's gripper unless the config names a command: with a zero gripper std
        # a default "open" would open a closed gripper at the first step.
        self.current_gripper = current_gripper
        # The arm's own limits: with the arm's pose, samples become the sequences it will really execute.
        self.limiter = limiter if planner_cfg.feasible_plans else None
        # Sees every batch the optimiser scores: (N, horizon, 5) sequences and their (N,) costs.
        self.on_scored = on_scored
        self._previous: np.ndarray | None = None

    @property
    def goal_image(self) -> np.ndarray:
        return self.cost.goal_image

    def reset(self) -> None:
        """Forget the previous plan (a new episode)."""
        self._previous = None

    def plan(
        self,
        context_frames: np.ndarray,
        context_actions: np.ndarray | None = None,
        pose: np.ndarray | None = None,
    ) -> PlanStep:
        """``context_actions`` (Tc - 1, 5): what the arm applied between the context frames, or None.
        ``pose`` (5,): the arm's pose now; with a limiter, every sampled sequence is limited from it."""
        start = time.perf_counter()
        timers = {"predict": 0.0, "cost": 0.0}
        context = np.asarray(context_frames)[None]  # (1, Tc, H, W, 3)
        past = None if context_actions is None else np.asarray(context_actions, np.float32)[None]
        # a pose-conditioned model is told where the arm is (one pose for every sample)
        pose_arg = (
            {"pose": np.asarray(pose, np.float64)} if self.predictor.needs_pose and pose is not None else {}
        )

        def cost_fn(actions: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            batch_context = np.broadcast_to(context, (len(actions), *context.shape[1:]))  # no copy
            extra = dict(pose_arg)
            if past is not None:
                extra["context_actions"] = np.broadcast_to(past, (len(actions), *past.shape[1:]))
            frames = self.predictor.predict(
                batch_context, actions.astype(np.float32), self.cost.frame_indices, **extra
            )
            t1 = time.perf_counter()
            costs = self.cost(frames)
            timers["predict"] += t1 - t0
            timers["cost"] += time.perf_counter() - t1
            if self.on_scored is not None:
                self.on_scored(actions, costs)
            return costs

        if self.cfg.warm_start and self._previous is not None:
            init = shift_plan(self._previous)
        else:
            init = initial_mean(self.cfg.horizon, self.cfg)
            if self.cfg.init_gripper is None and self.current_gripper is not None:
                init[:, -1] = self.current_gripper
        project = None
        if self.limiter is not None and pose is not None:
            limiter, at = self.limiter, np.asarray(pose, dtype=np.float64)

            def project(samples: np.ndarray) -> np.ndarray:
                return limiter.limit_plans(at, samples)

        result = optimize(
            cost_fn, self.cfg.horizon, self.bounds, self.cfg, self.rng, init_mean=init, project=project
        )
        predicted = None
        if self.predict_best:
            t0 = time.perf_counter()
            extra = dict(pose_arg) if past is None else {**pose_arg, "context_actions": past}
            predicted = self.predictor.predict(context, result.actions[None].astype(np.float32), **extra)[0]
            timers["predict"] += time.perf_counter() - t0
        # The plan the optimiser returns (CEM's best sample, or its elites' mean with cem_return=mean) is
        # the warm start: it is the plan actually followed.
        self._previous = result.actions
        return PlanStep(
            result=result,
            predicted=predicted,
            plan_time_s=time.perf_counter() - start,
            predict_time_s=timers["predict"],
            cost_time_s=timers["cost"],
        )


class RandomPolicy:
    """Baseline: every step a uniformly random action inside the bounds (gripper snapped when discrete)."""

    def __init__(self, planner_cfg: PlannerConfig, bounds: ActionBounds, rng: np.random.Generator) -> None:
        self.cfg = planner_cfg
        self.bounds = bounds
        self.rng = rng

    def reset(self) -> None:
        """Nothing to forget."""

    def plan(
        self,
        context_frames: np.ndarray,
        context_actions: np.ndarray | None = None,
        pose: np.ndarray | None = None,
    ) -> PlanStep:
        start = time.perf_counter()
        actions = self.rng.uniform(
            self.bounds.low, self.bounds.high, size=(self.cfg.horizon, len(self.bounds.low))
        )
        actions = finalize_actions(actions, self.bounds, self.cfg.gripper == "discrete")
        result = PlanResult(
            actions=actions,
            cost=float("nan"),
            iteration_costs=np.zeros(0),
            iteration_mean_costs=np.zeros(0),
            mean=actions,
            num_evaluated=0,
        )
        return PlanStep(result, None, time.perf_counter() - start, 0.0, 0.0)
