import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.oracle import OraclePredictor
from maskvit_mpc.mpc.predictors import PredictorError
from maskvit_mpc.robot.sim import TabletopSim, make_task


@pytest.fixture(scope="module")
def cfg():
    return load_config("default", ["sim.image_size=32"])


def test_oracle_matches_an_independent_rollout_and_renders_only_what_is_asked(cfg):
    sim = TabletopSim(cfg.sim, cfg.safety)
    episode = make_task(cfg.task).sample(sim, seed=5)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 0.05, (3, 4, 5)).astype(np.float32)
    actions[..., 4] = 1.0
    context = np.zeros((3, 2, 32, 32, 3), np.uint8)
    with OraclePredictor(cfg.sim, cfg.safety) as oracle:
        with pytest.raises(PredictorError, match="no simulator state"):
            oracle.predict(context, actions)
        oracle.set_sim_state(episode.initial_state)
        full = oracle.predict(context, actions)
        last = oracle.predict(context, actions, frame_indices=[3])
        some = oracle.predict(context, actions, frame_indices=[1, 3])
        with pytest.raises(PredictorError, match="renders 32x32"):
            oracle.predict(np.zeros((3, 2, 16, 16, 3), np.uint8), actions)
    assert full.shape == (3, 4, 32, 32, 3) and full.dtype == np.uint8
    np.testing.assert_array_equal(last[:, 0], full[:, 3])
    np.testing.assert_array_equal(some, full[:, [1, 3]])
    # The same actions stepped in another simulator show the same frames, bit for bit.
    for b in range(3):
        sim.set_state(episode.initial_state)
        for t in range(4):
            sim.step(actions[b, t])
            np.testing.assert_array_equal(sim.render(), full[b, t])
    assert not np.array_equal(full[0, 3], full[1, 3])  # different actions, different futures
    sim.close()


def test_oracle_workers_give_the_same_frames(cfg):
    sim = TabletopSim(cfg.sim, cfg.safety)
    state = make_task(cfg.task).sample(sim, seed=6).initial_state
    sim.close()
    actions = np.random.default_rng(1).uniform(-0.05, 0.05, (5, 3, 5)).astype(np.float32)
    context = np.zeros((5, 1, 32, 32, 3), np.uint8)
    frames = {}
    for workers in (1, 2):
        with OraclePredictor(cfg.sim, cfg.safety, workers=workers) as oracle:
            oracle.set_sim_state(state)
            frames[workers] = oracle.predict(context, actions, frame_indices=[2])
    np.testing.assert_array_equal(frames[1], frames[2])
