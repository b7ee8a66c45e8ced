"""--predictor PATH: an export-predictor file behind the planner's predictor interface."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.configs.schema import Config
from maskvit_mpc.models.export import export_predictor
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import VisualMPCPolicy
from maskvit_mpc.mpc.predictors import PredictorError, TorchScriptPredictor, load_predictor

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from export_helpers import CONTEXT, FUTURE, IMAGE_SIZE, write_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predictor")
    tok, mv = write_checkpoints(root / "ckpt", decode_steps=3)
    return export_predictor(tok, mv, root / "predictor.ts")[0]


def _config(*overrides: str) -> Config:
    base = [
        f"sim.image_size={IMAGE_SIZE}",
        f"mpc.context_frames={CONTEXT}",
        f"planner.horizon={FUTURE}",
        "planner.samples=10",
        "planner.iterations=2",
        "cost.blur_sigma_px=0",
    ]
    return load_config("default", base + list(overrides))


def _context(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (CONTEXT, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def _actions(n: int, horizon: int = FUTURE, seed: int = 1) -> np.ndarray:
    actions = np.random.default_rng(seed).uniform(-0.05, 0.05, (n, horizon, 5)).astype(np.float32)
    actions[..., 4] = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    return actions


def _expected(path: Path, context: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The module's own forward on the full clip: hold (no motion, first gripper) between the context
    frames, the planned actions from the last context frame on, hold after the horizon."""
    module = torch.jit.load(str(path))
    n, horizon, _ = actions.shape
    clip = np.zeros((n, CONTEXT - 1 + FUTURE, 5), np.float32)
    clip[:, : CONTEXT - 1, 4] = actions[:, :1, 4]
    clip[:, CONTEXT - 1 : CONTEXT - 1 + horizon] = actions
    clip[:, CONTEXT - 1 + horizon :, 4] = actions[:, -1:, 4]
    return module(torch.from_numpy(context), torch.from_numpy(clip)).numpy()[:, :horizon]


def test_load_predictor_gives_the_exported_model_behind_the_interface(predictor_file: Path) -> None:
    predictor = load_predictor(str(predictor_file), _config())
    assert isinstance(predictor, TorchScriptPredictor) and predictor.name == "maskvit:predictor.ts"
    context, actions = _context(), _actions(5)
    batch_context = np.broadcast_to(context[None], (5, *context.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about read-only (broadcast) numpy arrays
        frames = predictor.predict(batch_context, actions)
    assert frames.shape == (5, FUTURE, IMAGE_SIZE, IMAGE_SIZE, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, _expected(predictor_file, context, actions))
    last = predictor.predict(batch_context, actions, frame_indices=[FUTURE - 1])
    np.testing.assert_array_equal(last[:, 0], frames[:, -1])
    # a shorter horizon is padded to the trained clip length: its frames are the same rollout's
    short = predictor.predict(batch_context, actions[:, :2])
    np.testing.assert_array_equal(short, _expected(predictor_file, context, actions[:, :2]))


def test_batches_are_chunked_and_the_context_is_encoded_once(predictor_file: Path) -> None:
    whole = load_predictor(str(predictor_file), _config())
    chunked = load_predictor(str(predictor_file), _config("planner.predictor_batch=3"))
    context, actions = _context(), _actions(7)
    batch_context = np.broadcast_to(context[None], (7, *context.shape))
    np.testing.assert_array_equal(
        chunked.predict(batch_context, actions), whole.predict(batch_context, actions)
    )
    assert chunked.forward_passes == 3 * 3  # ceil(7 / 3) batches x 3 decoding steps
    assert whole.forward_passes == 3
    chunked.predict(batch_context.copy(), actions)  # the same frames, not a view: still no new encoding
    assert chunked.context_encodings == 1
    chunked.predict(np.broadcast_to(_context(5)[None], (7, *context.shape)), actions)
    assert chunked.context_encodings == 2
    # different contexts per sample are encoded (in batches) and used per sample
    mixed = np.stack([_context(0), _context(5)])
    both = chunked.predict(mixed, actions[:2])
    np.testing.assert_array_equal(both[1], _expected(predictor_file, _context(5), actions[1:2])[0])


def test_sequences_already_scored_from_the_same_context_are_not_decoded_again(predictor_file: Path) -> None:
    predictor = load_predictor(str(predictor_file), _config())
    context = _context()
    batch = np.broadcast_to(context[None], (4, *context.shape))
    actions = _actions(4)
    actions[3] = actions[1]  # the same sequence twice in one batch is decoded once
    first = predictor.predict(batch, actions, frame_indices=[2])
    np.testing.assert_array_equal(first[3], first[1])
    assert predictor.forward_passes == 3
    best = predictor.predict(batch[:1], actions[2:3])  # all frames of one scored sequence
    assert predictor.forward_passes == 3
    np.testing.assert_array_equal(best[0, 2], first[2, 0])
    np.testing.assert_array_equal(best, _expected(predictor_file, context, actions[2:3]))


def test_planning_step_encodes_the_context_once_and_returns_a_plan(predictor_file: Path) -> None:
    cfg = _config("planner.predictor_batch=4", "planner.cem_return=best")
    predictor = load_predictor(str(predictor_file), cfg)
    assert predictor.learned  # planner.cem_return=auto would execute CEM's elites' mean
    goal = np.random.default_rng(3).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    bounds = ActionBounds.from_safety(cfg.safety)
    policy = VisualMPCPolicy(
        predictor, goal, cfg.planner, cfg.cost, bounds, np.random.default_rng(0), current_gripper=1.0
    )
    step = policy.plan(_context())
    assert predictor.context_encodings == 1  # two CEM iterations and the best plan's rollout share it
    # per CEM iteration: 10 samples + the mean in batches of 4 = 3 batches of 3 decoding steps; the best
    # plan was scored in one of them, so its rollout is not decoded again
    assert predictor.forward_passes == 2 * 3 * 3
    assert step.predicted.shape == (FUTURE, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert step.result.actions.shape == (FUTURE, 5)
    assert np.all(step.result.actions >= bounds.low - 1e-9) and np.all(
        step.result.actions <= bounds.high + 1e-9
    )
    assert step.predict_time_s > 0 and np.isfinite(step.result.cost)
    np.testing.assert_array_equal(
        step.predicted, _expected(predictor_file, _context(), step.result.actions[None])[0]
    )
    policy.plan(_context(9))  # the next planning step: new frames, one more encoding
    assert predictor.context_encodings == 2


def test_planner_settings_override_the_exported_decoding(predictor_file: Path) -> None:
    cfg = _config("planner.predictor_decode_steps=1", "planner.predictor_precision=bf16")
    predictor = load_predictor(str(predictor_file), cfg)
    context, actions = _context(), _actions(4)
    predictor.predict(np.broadcast_to(context[None], (4, *context.shape)), actions)
    assert predictor.forward_passes == 1
    sampling = _config("planner.predictor_temperature=3.0", "planner.seed=4")
    sampled = load_predictor(str(predictor_file), sampling)
    batch = np.broadcast_to(context[None], (4, *context.shape))
    first = sampled.predict(batch, actions)
    again = load_predictor(str(predictor_file), sampling)
    np.testing.assert_array_equal(again.predict(batch, actions), first)  # seeded from planner.seed
    np.testing.assert_array_equal(sampled.predict(batch, actions), first)  # the rollouts already scored
    sampled.predict(batch[:1, ::-1], actions[:1])  # another context: a new planning step
    assert not np.array_equal(sampled.predict(batch, actions), first)  # sampled anew, the generator moved on


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sim.image_size=32", "takes 16x16 frames but the config gives 32x32: set sim.image_size=16"),
        ("mpc.context_frames=3", "conditions on 2 context frames but mpc.context_frames is 3"),
        ("planner.horizon=4", "predicts at most 3 frames but planner.horizon is 4"),
    ],
)
def test_a_predictor_that_does_not_fit_the_config_is_refused(
    predictor_file: Path, override: str, message: str
) -> None:
    with pytest.raises(PredictorError, match=message):
        load_predictor(str(predictor_file), _config(override))


def test_wrong_inputs_at_predict_time_are_refused(predictor_file: Path) -> None:
    predictor = load_predictor(str(predictor_file), _config())
    with pytest.raises(PredictorError, match="context frames are 8x8 but the predictor takes 16x16"):
        predictor.predict(np.zeros((1, 2, 8, 8, 3), np.uint8), _actions(1))
    with pytest.raises(PredictorError, match="conditions on 2 context frames, got 1"):
        predictor.predict(np.zeros((1, 1, 16, 16, 3), np.uint8), _actions(1))
    with pytest.raises(PredictorError, match="at most 3 frames, asked for 4"):
        predictor.predict(np.zeros((1, 2, 16, 16, 3), np.uint8), _actions(1, horizon=4))


def test_applied_past_actions_condition_the_prediction(predictor_file: Path) -> None:
    """The actions between the context frames go into the clip where the model was trained to see them."""
    predictor = load_predictor(str(predictor_file), _config())
    context, actions = _context(), _actions(3)
    batch_context = np.broadcast_to(context[None], (3, *context.shape))
    past = np.tile(np.array([0.04, -0.03, 0.0, 0.1, 1.0], np.float32), (3, CONTEXT - 1, 1))
    frames = predictor.predict(batch_context, actions, context_actions=past)
    module = torch.jit.load(str(predictor_file))
    clip = np.zeros((3, CONTEXT - 1 + FUTURE, 5), np.float32)
    clip[:, : CONTEXT - 1] = past
    clip[:, CONTEXT - 1 :] = actions
    expected = module(torch.from_numpy(context), torch.from_numpy(clip)).numpy()
    np.testing.assert_array_equal(frames, expected)
    # the same frames with other past actions are other rollouts, not the cached ones
    hold = predictor.predict(batch_context, actions)
    np.testing.assert_array_equal(hold, _expected(predictor_file, context, actions))
    # samples may carry their own pasts: each is rolled out with its own
    mixed = past.copy()
    mixed[1] = 0.0
    clip[1, : CONTEXT - 1] = 0.0
    expected_mixed = module(torch.from_numpy(context), torch.from_numpy(clip)).numpy()
    np.testing.assert_array_equal(
        predictor.predict(batch_context, actions, context_actions=mixed), expected_mixed
    )
    with pytest.raises(PredictorError, match="context_actions must be"):
        predictor.predict(batch_context, actions, context_actions=past[:, :0])


def test_oracle_tokenized_returns_the_oracle_frames_as_the_tokenizer_reconstructs_them(predictor_file):
    from maskvit_mpc.mpc.predictors import TokenizedPredictor
    from maskvit_mpc.robot.sim import TabletopSim, make_task

    cfg = _config()
    sim = TabletopSim(cfg.sim, cfg.safety)
    state = make_task(cfg.task).sample(sim, seed=3).initial_state
    sim.close()
    actions = _actions(4)
    context = np.repeat(_context()[None], 4, axis=0)
    with load_predictor(f"oracle-tokenized:{predictor_file}", cfg) as tokenized:
        assert isinstance(tokenized, TokenizedPredictor) and tokenized.needs_sim_state
        tokenized.set_sim_state(state)
        got = tokenized.predict(context, actions, frame_indices=[0, FUTURE - 1])
    with load_predictor("oracle", cfg) as oracle:
        oracle.set_sim_state(state)
        truth = oracle.predict(context, actions, frame_indices=[0, FUTURE - 1])
    module = torch.jit.load(str(predictor_file))
    flat = torch.from_numpy(truth.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3))
    expected = module.decode_frames(module.encode_context(flat)).numpy().reshape(truth.shape)
    assert got.shape == truth.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, truth)  # a tiny random tokenizer cannot reproduce the frames
    with pytest.raises(PredictorError, match="export-predictor file"):
        load_predictor("oracle-tokenized:copy-last", cfg)


def test_a_pose_conditioned_export_gets_the_arm_position_at_the_first_context_frame(tmp_path: Path) -> None:
    """The planner passes the arm's pose now; the model is given its position at the first context
    frame (now less the applied past moves), and rollouts decoded for one pose are not reused for another."""
    tok, mv = write_checkpoints(
        tmp_path, decode_steps=2, pose_conditioning=True, pose_offset=[0, 0, 0.1], pose_scale=[0.1] * 3
    )
    path = export_predictor(tok, mv, tmp_path / "pose.ts")[0]
    cfg = _config()
    predictor = load_predictor(str(path), cfg)
    assert predictor.needs_pose
    context, actions = _context(), _actions(3)
    batch_context = np.broadcast_to(context[None], (3, *context.shape))
    past = np.tile(np.array([0.01, -0.02, 0.005, 0.0, 1.0], np.float32), (3, CONTEXT - 1, 1))
    pose = np.array([0.05, 0.02, 0.04, 0.0, 1.0])
    frames = predictor.predict(batch_context, actions, context_actions=past, pose=pose)
    module = torch.jit.load(str(path))
    clip = np.zeros((3, CONTEXT - 1 + FUTURE, 5), np.float32)
    clip[:, : CONTEXT - 1] = past
    clip[:, CONTEXT - 1 :] = actions
    start = torch.tensor(pose[:3] - past[0, :, :3].sum(axis=0), dtype=torch.float32)
    expected = module(torch.from_numpy(context), torch.from_numpy(clip), start_pose=start).numpy()
    np.testing.assert_array_equal(frames, expected)
    higher = pose + np.array([0.0, 0.0, 0.1, 0.0, 0.0])
    other = predictor.predict(batch_context, actions, context_actions=past, pose=higher)
    start_high = start + torch.tensor([0.0, 0.0, 0.1])
    np.testing.assert_array_equal(
        other, module(torch.from_numpy(context), torch.from_numpy(clip), start_pose=start_high).numpy()
    )
    assert not np.array_equal(other, frames)
    with pytest.raises(PredictorError, match="conditions on the arm's pose: pass pose="):
        predictor.predict(batch_context, actions, context_actions=past)

    # the planner hands the arm's pose to such a predictor
    seen = []
    original = predictor.predict

    def spy(*args, **kwargs):
        seen.append(kwargs.get("pose"))
        return original(*args, **kwargs)

    predictor.predict = spy
    goal = np.random.default_rng(3).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    policy = VisualMPCPolicy(
        predictor, goal, cfg.planner, cfg.cost, ActionBounds.from_safety(cfg.safety), np.random.default_rng(0)
    )
    policy.plan(context, past[0], pose)
    assert seen and all(p is not None and np.array_equal(p, pose) for p in seen)
