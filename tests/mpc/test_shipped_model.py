"""The MaskViT predictor shipped as package data: small, self-describing, loaded by default, and its
rollouts follow the commanded motion the way the simulator does."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc import run
from maskvit_mpc.mpc.predictors import DEFAULT_PREDICTOR, TorchScriptPredictor, default_model_path, load_predictor
from maskvit_mpc.robot.sim import TabletopSim, make_task


def gripper_centre(frame: np.ndarray) -> np.ndarray | None:
    """(row, col) centroid of the gripper's dark grey pixels (the table is light, objects saturated)."""
    f = frame.astype(int)
    hi, lo = f.max(-1), f.min(-1)
    ys, xs = np.nonzero((hi < 140) & (hi - lo < 30))
    return None if len(ys) < 5 else np.array([ys.mean(), xs.mean()])


def test_the_shipped_model_is_package_data_under_30_mb_and_matches_the_default_config():
    path = default_model_path()
    assert path.is_file(), f"{path} missing: the shipped model belongs in models/weights/"
    assert path.stat().st_size <= 30 * 2**20
    assert zipfile.is_zipfile(path)
    cfg = load_config("default")
    with load_predictor(DEFAULT_PREDICTOR, cfg) as predictor:
        assert isinstance(predictor, TorchScriptPredictor)
        meta = predictor.metadata
        assert meta.image_size == cfg.sim.image_size
        assert meta.context_frames == cfg.mpc.context_frames
        assert meta.future_frames >= cfg.planner.horizon
    described = json.loads(predictor.module.metadata())
    assert described["image_size"] == cfg.sim.image_size


@pytest.mark.parametrize("seed", [1001, 1007])
def test_the_shipped_model_moves_the_gripper_where_the_simulator_does(seed):
    cfg = load_config("default")
    horizon = cfg.planner.horizon
    sim = TabletopSim(cfg.sim, cfg.safety)
    episode = make_task(cfg.task).sample(sim, seed=seed)
    sim.set_state(episode.initial_state)
    now = sim.render()
    context = np.repeat(now[None, None], cfg.mpc.context_frames, axis=1)
    moves = {"+x": (0.025, 0.0), "-x": (-0.025, 0.0), "+y": (0.0, 0.025), "-y": (0.0, -0.025)}
    actions = np.zeros((len(moves), horizon, 5), np.float32)
    for i, (dx, dy) in enumerate(moves.values()):
        actions[i, :, 0], actions[i, :, 1], actions[i, :, 4] = dx, dy, 1.0
    truth = []
    for seq in actions:
        sim.set_state(episode.initial_state)
        for a in seq:
            sim.step(a)
        truth.append(sim.render())
    sim.close()
    with load_predictor(DEFAULT_PREDICTOR, cfg) as predictor:
        predicted = predictor.predict(np.repeat(context, len(moves), axis=0), actions, frame_indices=[horizon - 1])
    start = gripper_centre(now)
    assert start is not None
    for i, name in enumerate(moves):
        true_shift = gripper_centre(truth[i]) - start
        pred_centre = gripper_centre(predicted[i, 0])
        assert pred_centre is not None, f"{name}: no gripper in the predicted frame"
        pred_shift = pred_centre - start
        # same direction, and at least a third of the true distance (the picture, not the exact pixels)
        along = float(pred_shift @ true_shift) / float(np.linalg.norm(true_shift))
        assert along > np.linalg.norm(true_shift) / 3, f"{name}: true shift {true_shift}, predicted {pred_shift}"


def test_mpc_run_in_simulation_uses_the_shipped_model_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--sim", "--task", "push", "--seed", "4", "--max-steps", "1", "--out", str(out)]
    argv += ["--set", "planner.samples=6", "--set", "planner.iterations=1", "--set", "mpc.save_gif=false"]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "success:" in printed and "final distance" in printed
    meta = json.loads((out / "episode.json").read_text())["meta"]
    assert meta["predictor"].startswith("maskvit:")
