"""Sampling-based trajectory optimisers: the cross-entropy method (CEM) and MPPI.

Pure functions: everything random comes from the ``np.random.Generator`` passed in, and the only
contact with the world is ``cost_fn(actions (N, horizon, 5)) -> (N,)``, lower is better. Every
sequence handed to ``cost_fn`` lies inside the action bounds (and has its gripper snapped to -1 / +1
when the gripper is discrete), so what is scored is exactly what could be sent.

Sampling noise is correlated in time (an AR(1) process, as VP2's time-correlated CEM):
``eps_t = beta * eps_{t-1} + sqrt(1 - beta^2) * w_t`` with white ``w_t``; each ``eps_t`` keeps unit
variance, neighbouring steps correlate with coefficient ``beta``, and plans come out smoother.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..configs.errors import UserError
from ..configs.schema import PlannerConfig, SafetyConfig
from ..robot.types import ACTION_DIM

CostFn = Callable[[np.ndarray], np.ndarray]
# Maps (N, horizon, 5) sampled sequences to the ones the arm would really execute (workspace limits).
Projection = Callable[[np.ndarray], np.ndarray]
GRIPPER = ACTION_DIM - 1  # index of the absolute gripper command


class PlannerError(UserError):
    """Inconsistent planner inputs (bounds, initial plan, cost output)."""


@dataclass(frozen=True)
class ActionBounds:
    """Per-step box on actions: (5,) low and high, metres / radians / gripper command."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_safety(cls, safety: SafetyConfig) -> ActionBounds:
        """The step limits the arm server enforces, and the gripper's [-1, 1]."""
        lim = safety.step_limits
        high = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw, safety.workspace.gripper.high])
        low = np.array([-lim.dx, -lim.dy, -lim.dz, -lim.dyaw, safety.workspace.gripper.low])
        return cls(low=low, high=high)

    def clip(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, self.low, self.high)


@dataclass(frozen=True)
class PlanResult:
    """What one planning call found."""

    actions: np.ndarray  # (horizon, 5) the sequence to execute (its first action now)
    cost: float  # cost of ``actions``
    iteration_costs: np.ndarray  # (iterations,) best cost among each iteration's samples
    iteration_mean_costs: np.ndarray  # (iterations,) mean cost of the elites (CEM) / all samples (MPPI)
    mean: np.ndarray  # (horizon, 5) final sampling mean; shifted, it warm-starts the next step
    num_evaluated: int  # sequences scored in total


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], beta: float) -> np.ndarray:
    """Unit-variance AR(1) noise (N, horizon, dim) float64, correlated along the horizon axis."""
    white = rng.standard_normal(shape)
    if beta == 0:
        return white
    out = np.empty_like(white)
    out[:, 0] = white[:, 0]
    scale = np.sqrt(1.0 - beta**2)
    for t in range(1, shape[1]):
        out[:, t] = beta * out[:, t - 1] + scale * white[:, t]
    return out


def initial_mean(horizon: int, cfg: PlannerConfig) -> np.ndarray:
    """Cold-start mean (horizon, 5): no motion, gripper at ``cfg.init_gripper`` (None: -1, open)."""
    mean = np.zeros((horizon, ACTION_DIM))
    mean[:, GRIPPER] = -1.0 if cfg.init_gripper is None else cfg.init_gripper
    return mean


def shift_plan(plan: np.ndarray) -> np.ndarray:
    """Warm start for the next step: drop the executed first action and append a motionless step
    that keeps the last gripper command."""
    plan = np.asarray(plan, dtype=np.float64)
    tail = np.zeros((1, plan.shape[1]))
    tail[0, GRIPPER] = plan[-1, GRIPPER]
    return np.concatenate([plan[1:], tail], axis=0)


def finalize_actions(actions: np.ndarray, bounds: ActionBounds, discrete_gripper: bool) -> np.ndarray:
    """Clip (..., 5) actions to the bounds and, for a discrete gripper, snap its command to -1 / +1."""
    actions = bounds.clip(actions)
    if discrete_gripper:
        actions[..., GRIPPER] = np.where(actions[..., GRIPPER] >= 0.0, 1.0, -1.0)
    return actions


def _prepare(
    horizon: int, bounds: ActionBounds, cfg: PlannerConfig, init_mean: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if (
        bounds.low.shape != (ACTION_DIM,)
        or bounds.high.shape != (ACTION_DIM,)
        or np.any(bounds.low > bounds.high)
    ):
        raise PlannerError(f"action bounds must be two (5,) arrays with low <= high, got {bounds}")
    mean = initial_mean(horizon, cfg) if init_mean is None else np.array(init_mean, dtype=np.float64)
    if mean.shape != (horizon, ACTION_DIM):
        raise PlannerError(f"the initial plan must have shape ({horizon}, {ACTION_DIM}), got {mean.shape}")
    mean = bounds.clip(mean)
    std = np.broadcast_to(np.asarray(cfg.init_std, dtype=np.float64), (horizon, ACTION_DIM)).copy()
    return mean, std


def _sample(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    n: int,
    bounds: ActionBounds,
    cfg: PlannerConfig,
    project: Projection | None = None,
) -> np.ndarray:
    eps = correlated_noise(rng, (n, *mean.shape), cfg.noise_beta)
    samples = mean + std * eps
    if cfg.include_mean:
        samples[0] = mean
    samples = finalize_actions(samples, bounds, cfg.gripper == "discrete")
    return samples if project is None else project(samples)


def _evaluate(cost_fn: CostFn, samples: np.ndarray) -> np.ndarray:
    costs = np.asarray(cost_fn(samples), dtype=np.float64)
    if costs.shape != (samples.shape[0],):
        raise PlannerError(f"the cost returned shape {costs.shape}, expected ({samples.shape[0]},)")
    # A NaN cost (a diverged prediction) must never win.
    return np.where(np.isfinite(costs), costs, np.inf)


def cem(
    cost_fn: CostFn,
    horizon: int,
    bounds: ActionBounds,
    cfg: PlannerConfig,
    rng: np.random.Generator,
    init_mean: np.ndarray | None = None,
    project: Projection | None = None,
) -> PlanResult:
    """Cross-entropy method: sample around a Gaussian, refit it on the elites, repeat.

    Returns the best sequence scored in any iteration (``cfg.cem_return`` "best"; "auto" is resolved
    by :class:`VisualMPCPolicy` and means "best" here) or the final elites' mean, scored once more
    ("mean").
    """
    mean, std = _prepare(horizon, bounds, cfg, init_mean)
    min_std = np.asarray(cfg.init_std) * cfg.min_std_fraction
    n_elite = max(1, min(cfg.samples, round(cfg.elite_fraction * cfg.samples)))
    best_actions, best_cost = mean, np.inf
    iter_best, iter_mean = [], []
    for _ in range(cfg.iterations):
        samples = _sample(rng, mean, std, cfg.samples, bounds, cfg, project)
        costs = _evaluate(cost_fn, samples)
        order = np.argsort(costs, kind="stable")
        elites = samples[order[:n_elite]]
        if costs[order[0]] < best_cost:
            best_cost, best_actions = float(costs[order[0]]), samples[order[0]].copy()
        iter_best.append(costs[order[0]])
        iter_mean.append(costs[order[:n_elite]].mean())
        mean = cfg.momentum * mean + (1.0 - cfg.momentum) * elites.mean(axis=0)
        std = np.maximum(elites.std(axis=0), min_std)
    evaluated = cfg.iterations * cfg.samples
    if cfg.cem_return == "mean":
        best_actions, best_cost = _score_mean(cost_fn, mean, bounds, cfg, project)
        evaluated += 1
    return PlanResult(
        actions=best_actions,
        cost=best_cost,
        iteration_costs=np.asarray(iter_best),
        iteration_mean_costs=np.asarray(iter_mean),
        mean=mean,
        num_evaluated=evaluated,
    )


def _score_mean(
    cost_fn: CostFn, mean: np.ndarray, bounds: ActionBounds, cfg: PlannerConfig, project: Projection | None
) -> tuple[np.ndarray, float]:
    """The sampling mean as an executable sequence (bounds, gripper, projection) and its cost."""
    plan = finalize_actions(mean.copy(), bounds, cfg.gripper == "discrete")
    if project is not None:
        plan = project(plan[None])[0]
    return plan, float(_evaluate(cost_fn, plan[None])[0])


def mppi(
    cost_fn: CostFn,
    horizon: int,
    bounds: ActionBounds,
    cfg: PlannerConfig,
    rng: np.random.Generator,
    init_mean: np.ndarray | None = None,
    project: Projection | None = None,
) -> PlanResult:
    """Model-predictive path integral: the new mean is the softmin-weighted average of the samples.

    The temperature is relative to the spread of the sample costs (their standard deviation), so one
    setting works whatever the scale of the cost. The sampling std stays at ``init_std``. Returns the
    final mean, scored once more.
    """
    mean, std = _prepare(horizon, bounds, cfg, init_mean)
    iter_best, iter_mean = [], []
    for _ in range(cfg.iterations):
        samples = _sample(rng, mean, std, cfg.samples, bounds, cfg, project)
        costs = _evaluate(cost_fn, samples)
        finite = np.isfinite(costs)
        if not finite.any():
            raise PlannerError("every sampled sequence had a non-finite cost; check the predictor output")
        spread = max(float(costs[finite].std()), 1e-12)
        weights = np.where(
            finite, np.exp(-(costs - costs[finite].min()) / (cfg.mppi_temperature * spread)), 0.0
        )
        weights /= weights.sum()
        iter_best.append(costs.min())
        iter_mean.append(costs[finite].mean())
        mean = cfg.momentum * mean + (1.0 - cfg.momentum) * np.tensordot(weights, samples, axes=1)
    plan, final_cost = _score_mean(cost_fn, mean, bounds, cfg, project)
    return PlanResult(
        actions=plan,
        cost=final_cost,
        iteration_costs=np.asarray(iter_best),
        iteration_mean_costs=np.asarray(iter_mean),
        mean=mean,
        num_evaluated=cfg.iterations * cfg.samples + 1,
    )


def optimize(
    cost_fn: CostFn,
    horizon: int,
    bounds: ActionBounds,
    cfg: PlannerConfig,
    rng: np.random.Generator,
    init_mean: np.ndarray | None = None,
    project: Projection | None = None,
) -> PlanResult:
    """Run the optimiser ``cfg.optimizer`` names. ``project`` (optional) maps every sampled batch of
    sequences to the sequences the arm will execute; the optimiser then scores and refits on those."""
    fn = cem if cfg.optimizer == "cem" else mppi
    return fn(cost_fn, horizon, bounds, cfg, rng, init_mean, project)
