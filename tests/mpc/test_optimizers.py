import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from maskvit_mpc.configs.schema import PlannerConfig, SafetyConfig
from maskvit_mpc.mpc.optimizers import (
    ActionBounds,
    PlannerError,
    cem,
    correlated_noise,
    optimize,
    shift_plan,
)

BOUNDS = ActionBounds.from_safety(SafetyConfig())
HORIZON = 6
ALL_DIMS = [0.03, 0.03, 0.03, 0.15, 1.0]  # explore every dimension (the default freezes dz and gripper)


def _quadratic(target: np.ndarray, weights=(1.0, 1.0, 1.0, 1.0, 1.0)):
    scale = np.asarray(weights) / (BOUNDS.high - BOUNDS.low) ** 2  # each dimension on the same footing

    def cost(actions: np.ndarray) -> np.ndarray:
        return (((actions - target) ** 2) * scale).sum(axis=(1, 2))

    return cost


def _target(rng: np.random.Generator, horizon: int = HORIZON) -> np.ndarray:
    # Interior target, gripper on its closed bound so a discrete gripper can reach it exactly.
    target = rng.uniform(0.6 * BOUNDS.low, 0.6 * BOUNDS.high, size=(horizon, 5))
    target[:, 4] = 1.0
    return target


def test_bounds_from_safety_config():
    np.testing.assert_allclose(BOUNDS.high, [0.05, 0.05, 0.05, 0.3, 1.0])
    np.testing.assert_allclose(BOUNDS.low, -BOUNDS.high)


def test_cem_finds_the_minimum_of_a_quadratic():
    # 15 dimensions: CEM's convergence slows quickly with dimension at a fixed sample count.
    rng = np.random.default_rng(1)
    target = _target(rng, horizon=3)
    cfg = PlannerConfig(samples=200, iterations=10, gripper="continuous", noise_beta=0.0, init_std=ALL_DIMS)
    result = cem(_quadratic(target), 3, BOUNDS, cfg, rng)
    assert result.actions.shape == (3, 5)
    np.testing.assert_allclose(result.actions[:, :3], target[:, :3], atol=0.01)  # metres: 1 cm of 10 cm range
    assert result.cost < 0.02 * _quadratic(target)(np.zeros((1, 3, 5)))[0]
    assert result.iteration_costs.shape == (10,)
    assert result.iteration_costs[-1] < 0.1 * result.iteration_costs[0]
    assert np.all(np.diff(result.iteration_mean_costs) <= 1e-12)
    assert result.num_evaluated == 2000
    assert result.cost == pytest.approx(_quadratic(target)(result.actions[None])[0])


def test_cem_is_reproducible_from_the_seed():
    target = _target(np.random.default_rng(2))
    cfg = PlannerConfig(samples=50, iterations=2)
    a = cem(_quadratic(target), HORIZON, BOUNDS, cfg, np.random.default_rng(7))
    b = cem(_quadratic(target), HORIZON, BOUNDS, cfg, np.random.default_rng(7))
    np.testing.assert_array_equal(a.actions, b.actions)


def test_cem_mean_return_is_the_scored_final_mean():
    target = _target(np.random.default_rng(5))
    scored = []

    def cost(actions: np.ndarray) -> np.ndarray:
        scored.append(actions.copy())
        return _quadratic(target)(actions)

    cfg = PlannerConfig(samples=40, iterations=3, cem_return="mean")
    result = cem(cost, HORIZON, BOUNDS, cfg, np.random.default_rng(0))
    assert result.num_evaluated == 121 and len(scored) == 4 and scored[-1].shape == (1, HORIZON, 5)
    np.testing.assert_array_equal(result.actions, scored[-1][0])  # what is returned is what was scored last
    np.testing.assert_allclose(result.actions[:, :4], result.mean[:, :4])  # the final mean, inside the bounds
    assert result.cost == pytest.approx(_quadratic(target)(result.actions[None])[0])


def test_cem_mean_return_resists_a_noisy_cost():
    """With noise on every score, CEM's best sample is the luckiest draw; the elites' mean is closer to
    the true minimum (the optimizer's curse a learned predictor's errors bring to the planner)."""
    target = _target(np.random.default_rng(6), horizon=3)
    true_cost = _quadratic(target)
    start = true_cost(np.zeros((1, 3, 5)))[0]

    def true_cost_of_plan(cem_return: str, seed: int) -> float:
        noise = np.random.default_rng(100 + seed)

        def noisy(actions: np.ndarray) -> np.ndarray:
            return true_cost(actions) + 0.3 * start * noise.standard_normal(len(actions))

        cfg = PlannerConfig(
            samples=60,
            iterations=3,
            gripper="continuous",
            noise_beta=0.0,
            init_std=ALL_DIMS,
            cem_return=cem_return,
        )
        return float(true_cost(cem(noisy, 3, BOUNDS, cfg, np.random.default_rng(seed)).actions[None])[0])

    best = np.mean([true_cost_of_plan("best", s) for s in range(20)])
    mean = np.mean([true_cost_of_plan("mean", s) for s in range(20)])
    assert mean < 0.9 * best, (mean, best)


def test_mppi_converges_on_a_quadratic():
    # MPPI keeps its sampling std, so it settles within the noise level rather than exactly.
    rng = np.random.default_rng(3)
    target = _target(rng, horizon=3)
    cfg = PlannerConfig(
        optimizer="mppi",
        samples=300,
        iterations=10,
        gripper="continuous",
        noise_beta=0.0,
        mppi_temperature=0.1,
        init_std=ALL_DIMS,
    )
    result = optimize(_quadratic(target), 3, BOUNDS, cfg, rng)
    start = _quadratic(target)(np.zeros((1, 3, 5)))[0]
    assert result.cost < 0.1 * start
    np.testing.assert_allclose(result.actions[:, :3], target[:, :3], atol=0.02)
    assert result.num_evaluated == 3001
    assert result.cost == pytest.approx(_quadratic(target)(result.actions[None])[0])


def test_discrete_gripper_is_snapped_and_optimised():
    target = _target(np.random.default_rng(4))
    seen = []

    def cost(actions: np.ndarray) -> np.ndarray:
        seen.append(actions[..., 4].copy())
        return _quadratic(target, weights=(1, 1, 1, 1, 1))(actions)

    cfg = PlannerConfig(samples=64, iterations=4, gripper="discrete", init_gripper=-1.0, init_std=ALL_DIMS)
    result = cem(cost, HORIZON, BOUNDS, cfg, np.random.default_rng(0))
    assert all(set(np.unique(g)) <= {-1.0, 1.0} for g in seen)
    np.testing.assert_array_equal(result.actions[:, 4], 1.0)  # target closes the gripper everywhere


def test_zero_std_freezes_a_dimension():
    target = _target(np.random.default_rng(5))
    cfg = PlannerConfig(samples=32, iterations=2, init_std=[0.03, 0.03, 0.0, 0.0, 1.0])
    result = cem(_quadratic(target), HORIZON, BOUNDS, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(result.actions[:, 2:4], 0.0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    optimizer=st.sampled_from(["cem", "mppi"]),
    gripper=st.sampled_from(["continuous", "discrete"]),
    std_scale=st.floats(0.0, 50.0),
    beta=st.floats(0.0, 0.95),
    mean_scale=st.floats(-20.0, 20.0),
)
def test_samples_and_plans_never_leave_the_bounds(seed, optimizer, gripper, std_scale, beta, mean_scale):
    cfg = PlannerConfig(
        optimizer=optimizer,
        samples=16,
        iterations=2,
        gripper=gripper,
        noise_beta=beta,
        init_std=list(std_scale * np.array([0.05, 0.05, 0.05, 0.3, 1.0])),
    )
    rng = np.random.default_rng(seed)
    init = mean_scale * rng.standard_normal((4, 5))  # far outside the bounds, on purpose
    checked = []

    def cost(actions: np.ndarray) -> np.ndarray:
        assert np.all(actions >= BOUNDS.low) and np.all(actions <= BOUNDS.high)
        checked.append(len(actions))
        return rng.standard_normal(len(actions))

    result = optimize(cost, 4, BOUNDS, cfg, rng, init_mean=init)
    assert checked
    assert np.all(result.actions >= BOUNDS.low) and np.all(result.actions <= BOUNDS.high)


def test_warm_start_shifts_the_previous_plan():
    plan = np.arange(4 * 5, dtype=float).reshape(4, 5) / 100
    plan[:, 4] = [-1, -1, 1, 1]
    shifted = shift_plan(plan)
    np.testing.assert_array_equal(shifted[:3], plan[1:])
    np.testing.assert_array_equal(shifted[3], [0, 0, 0, 0, 1])

    # A warm start already at the optimum is kept (include_mean scores it as sample 0).
    target = _target(np.random.default_rng(6))
    cfg = PlannerConfig(samples=8, iterations=1, include_mean=True, gripper="continuous")
    result = cem(_quadratic(target), HORIZON, BOUNDS, cfg, np.random.default_rng(0), init_mean=target)
    np.testing.assert_allclose(result.actions, target)
    assert result.cost == pytest.approx(0.0, abs=1e-12)


def test_noise_correlation_matches_beta():
    rng = np.random.default_rng(0)
    for beta in (0.0, 0.5, 0.9):
        eps = correlated_noise(rng, (20_000, 8, 5), beta)
        assert eps.var() == pytest.approx(1.0, abs=0.03)
        lag1 = (eps[:, 1:] * eps[:, :-1]).mean()
        assert lag1 == pytest.approx(beta, abs=0.02)
        lag2 = (eps[:, 2:] * eps[:, :-2]).mean()
        assert lag2 == pytest.approx(beta**2, abs=0.02)


def test_bad_inputs():
    cfg = PlannerConfig(samples=4, iterations=1)
    with pytest.raises(PlannerError, match="initial plan"):
        cem(
            _quadratic(np.zeros((3, 5))), 3, BOUNDS, cfg, np.random.default_rng(0), init_mean=np.zeros((2, 5))
        )
    with pytest.raises(PlannerError, match="cost returned shape"):
        cem(lambda a: np.zeros(1), 3, BOUNDS, cfg, np.random.default_rng(0))


def test_nan_costs_never_win():
    target = _target(np.random.default_rng(8))
    base = _quadratic(target)

    def cost(actions):
        out = base(actions)
        out[::2] = np.nan
        return out

    result = cem(cost, HORIZON, BOUNDS, PlannerConfig(samples=20, iterations=2), np.random.default_rng(0))
    assert np.isfinite(result.cost)


def test_planner_config_is_validated():
    from maskvit_mpc.configs import ConfigError, load_config

    with pytest.raises(ConfigError, match="init_std needs 5 non-negative values"):
        load_config("default", ["planner.init_std=[0.1, 0.1]"])
    with pytest.raises(ConfigError, match="planner.optimizer"):
        load_config("default", ["planner.optimizer=adam"])
    with pytest.raises(ConfigError, match="frame_weights must be non-negative"):
        load_config("default", ["cost.frame_weights=[0, 0]"])
    assert load_config("default", ["planner.optimizer=mppi"]).planner.optimizer == "mppi"
