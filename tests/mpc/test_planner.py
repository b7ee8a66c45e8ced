"""The planner with a toy predictor: a square that moves by (dx, dy) per step on a 32x32 image."""

from collections.abc import Sequence

import numpy as np
from maskvit_mpc.configs.schema import CostConfig, PlannerConfig, SafetyConfig
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import RandomPolicy, VisualMPCPolicy
from maskvit_mpc.mpc.predictors import Predictor, check_predict_inputs
from maskvit_mpc.robot.safety import ActionLimiter

PX_PER_M = 100.0  # 5 cm step = 5 px


def _draw(xy: np.ndarray) -> np.ndarray:
    img = np.full((32, 32, 3), 40, np.uint8)
    x, y = np.clip(np.round(xy).astype(int), 2, 29)
    img[y - 2 : y + 3, x - 2 : x + 3] = (230, 60, 60)
    return img


class SquareWorld(Predictor):
    """Knows where the square is now (like the oracle knows the sim state) and moves it by the actions."""

    name = "square-world"

    def __init__(self, xy) -> None:
        self.xy = np.asarray(xy, dtype=float)

    def predict(
        self, context_frames, actions, frame_indices: Sequence[int] | None = None, context_actions=None
    ):
        _, actions, indices = check_predict_inputs(context_frames, actions, frame_indices, context_actions)
        path = self.xy + np.cumsum(actions[..., :2], axis=1) * PX_PER_M  # (B, horizon, 2)
        return np.stack([[_draw(path[b, i]) for i in indices] for b in range(len(actions))])


def _square_policy(world: Predictor, goal: np.ndarray, cfg: PlannerConfig, **kwargs) -> VisualMPCPolicy:
    """The planner on the square world: last-frame cost blurred 3 px, default limits, the gripper held."""
    return VisualMPCPolicy(
        world,
        goal,
        cfg,
        CostConfig(blur_sigma_px=3.0, frames="last"),
        ActionBounds.from_safety(SafetyConfig()),
        np.random.default_rng(0),
        current_gripper=1.0,
        **kwargs,
    )


def test_visual_mpc_drives_the_square_to_its_goal():
    world = SquareWorld([6.0, 6.0])
    goal = _draw(np.array([24.0, 20.0]))
    cfg = PlannerConfig(horizon=5, samples=60, iterations=3, init_std=[0.03, 0.03, 0.0, 0.0, 0.0])
    policy = _square_policy(world, goal, cfg)
    for _ in range(8):  # receding horizon: execute the first action, replan
        step = policy.plan(_draw(world.xy)[None])
        assert step.predicted.shape == (5, 32, 32, 3)
        assert step.result.iteration_costs.shape == (3,)
        assert step.plan_time_s >= step.predict_time_s + step.cost_time_s - 1e-6
        np.testing.assert_array_equal(step.action[2:], [0.0, 0.0, 1.0])  # frozen dims, gripper held
        world.xy = world.xy + step.action[:2] * PX_PER_M
    assert np.linalg.norm(world.xy - [24.0, 20.0]) < 2.0


def test_random_policy_stays_in_bounds():
    bounds = ActionBounds.from_safety(SafetyConfig())
    policy = RandomPolicy(PlannerConfig(horizon=4), bounds, np.random.default_rng(0))
    steps = [policy.plan(np.zeros((1, 8, 8, 3), np.uint8)) for _ in range(50)]
    actions = np.stack([s.result.actions for s in steps])
    assert np.all(actions >= bounds.low) and np.all(actions <= bounds.high)
    assert set(np.unique(actions[..., 4])) == {-1.0, 1.0}
    assert actions[..., 0].std() > 0.02  # it does move


class _Seen(SquareWorld):
    """Records every batch of sequences the planner asks about."""

    def __init__(self, xy) -> None:
        super().__init__(xy)
        self.batches: list[np.ndarray] = []

    def predict(self, context_frames, actions, frame_indices=None, context_actions=None):
        self.batches.append(np.array(actions))
        return super().predict(context_frames, actions, frame_indices, context_actions)


def test_feasible_plans_score_only_what_the_arm_would_execute():
    """Near the workspace edge, with the goal beyond it, every scored sequence stays inside the box."""
    safety = SafetyConfig()
    limiter = ActionLimiter(safety)
    ws = safety.workspace
    pose = np.array([ws.x.high - 0.02, 0.0, 0.05, 0.0, 1.0])  # 2 cm from the +x edge
    cfg = PlannerConfig(horizon=5, samples=40, iterations=2, init_std=[0.03, 0.03, 0.0, 0.0, 0.0])
    world = _Seen([6.0, 16.0])
    goal = _draw(np.array([30.0, 16.0]))  # far along +x: the planner wants to push past the edge
    args = (goal, cfg, CostConfig(blur_sigma_px=3.0), ActionBounds.from_safety(safety))
    policy = VisualMPCPolicy(world, *args, np.random.default_rng(0), current_gripper=1.0, limiter=limiter)
    step = policy.plan(_draw(world.xy)[None], pose=pose)
    for batch in world.batches:
        reach = pose[0] + np.cumsum(batch[..., 0], axis=-1)
        assert reach.max() <= ws.x.high + 1e-6
        np.testing.assert_allclose(batch, limiter.limit_plans(pose, batch), atol=1e-6)  # already feasible
    assert pose[0] + step.result.actions[:, 0].sum() <= ws.x.high + 1e-6
    assert np.isclose(pose[0] + step.result.actions[:, 0].sum(), ws.x.high, atol=1e-3)  # it goes to the edge

    # Switched off (or without a pose) the samples are not limited: some reach past the edge.
    off = cfg.model_copy(update={"feasible_plans": False})
    world_off = _Seen([6.0, 16.0])
    policy = VisualMPCPolicy(
        world_off, goal, off, *args[2:], np.random.default_rng(0), current_gripper=1.0, limiter=limiter
    )
    policy.plan(_draw(world_off.xy)[None], pose=pose)
    assert max((pose[0] + np.cumsum(b[..., 0], axis=-1)).max() for b in world_off.batches) > ws.x.high + 0.05


def test_limit_plans_matches_stepwise_limit():
    safety = SafetyConfig()
    limiter = ActionLimiter(safety)
    rng = np.random.default_rng(3)
    plans = rng.normal(scale=[0.06, 0.06, 0.06, 0.4, 1.5], size=(50, 7, 5))
    ws = safety.workspace
    for pose in (
        np.array([0.0, 0.0, 0.05, 0.0, -1.0]),
        np.array([ws.x.high - 0.01, ws.y.low, 0.03, 0.2, 1.0]),
    ):
        batch = limiter.limit_plans(pose, plans)
        for n in range(len(plans)):
            at = pose.copy()
            for t in range(plans.shape[1]):
                applied = limiter.limit(at, plans[n, t]).applied
                np.testing.assert_allclose(batch[n, t], applied, atol=1e-12)
                at[:4] += applied[:4]
        assert not np.allclose(batch, plans)  # the random plans do get limited


def test_on_scored_sees_every_scored_batch_with_its_costs():
    world = SquareWorld([6.0, 6.0])
    goal = _draw(np.array([24.0, 20.0]))
    cfg = PlannerConfig(horizon=4, samples=20, iterations=3, init_std=[0.03, 0.03, 0.0, 0.0, 0.0])
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    policy = _square_policy(
        world,
        goal,
        cfg,
        predict_best=False,
        on_scored=lambda actions, costs: seen.append((actions.copy(), np.asarray(costs).copy())),
    )
    step = policy.plan(_draw(world.xy)[None])
    assert [len(a) for a, _ in seen] == [20, 20, 20] and step.result.num_evaluated == 60
    # the costs handed over are those of the sequences handed over, and the best is the plan
    for actions, costs in seen:
        np.testing.assert_allclose(
            costs, policy.cost(world.predict(np.zeros((len(actions), 1, 32, 32, 3), np.uint8), actions, [3]))
        )
    all_actions = np.concatenate([a for a, _ in seen])
    all_costs = np.concatenate([c for _, c in seen])
    np.testing.assert_array_equal(step.result.actions, all_actions[np.argmin(all_costs)])


def test_auto_cem_return_executes_the_elites_mean_only_for_a_learned_predictor():
    class LearnedSquare(SquareWorld):
        learned = True

    goal = _draw(np.array([24.0, 20.0]))
    auto = PlannerConfig(horizon=5, samples=20, iterations=2, init_std=[0.03, 0.03, 0.0, 0.0, 0.0])
    assert auto.cem_return == "auto"
    cases = [
        (SquareWorld([6.0, 6.0]), auto, "best"),  # the simulator-like predictor: its best score is true
        (LearnedSquare([6.0, 6.0]), auto, "mean"),
        (LearnedSquare([6.0, 6.0]), auto.model_copy(update={"cem_return": "best"}), "best"),  # as asked
    ]
    for world, cfg, executed in cases:
        policy = _square_policy(world, goal, cfg)
        assert policy.cfg.cem_return == executed
        step = policy.plan(_draw(world.xy)[None])
        # the elites' mean is scored once more after the last iteration; the best sample needs no extra
        assert step.result.num_evaluated == 2 * 20 + (executed == "mean")
        if executed == "best":
            assert step.result.cost == min(step.result.iteration_costs)
