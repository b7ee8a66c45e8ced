"""The MaskViT predictor shipped as package data: small, self-describing, loaded by default, and its
rollouts follow the commanded motion the way the simulator does."""

from __future__ import annotations

import json
import zipfile

import numpy as np
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc import run
from maskvit_mpc.mpc.predictors import (
    DEFAULT_PREDICTOR,
    TorchScriptPredictor,
    default_model_path,
    load_predictor,
)
from maskvit_mpc.robot.safety import ActionLimiter
from maskvit_mpc.robot.sim import TabletopSim, gripper_centre, make_task


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


def test_the_shipped_model_moves_the_gripper_where_the_simulator_does():
    """Eight scenes x four straight moves, limited by the workspace from the scene's start pose as the
    planner limits its samples: the predicted gripper must travel the simulator's way, at least a third
    of the true distance, in most cases (the rollouts follow the actions; copy-last scores 0)."""
    cfg = load_config("default")
    horizon = cfg.planner.horizon
    moves = [(0.025, 0.0), (-0.025, 0.0), (0.0, 0.025), (0.0, -0.025)]
    actions = np.zeros((len(moves), horizon, 5), np.float32)
    for i, (dx, dy) in enumerate(moves):
        actions[i, :, 0], actions[i, :, 1], actions[i, :, 4] = dx, dy, 1.0
    sim = TabletopSim(cfg.sim, cfg.safety)
    limiter = ActionLimiter(cfg.safety)
    followed, cases = 0, 0
    with load_predictor(DEFAULT_PREDICTOR, cfg) as predictor:
        for seed in range(2000, 2008):  # scenes the evaluation tables do not use
            episode = make_task(cfg.task).sample(sim, seed=seed)
            sim.set_state(episode.initial_state)
            now = sim.render()
            start = gripper_centre(now)
            assert start is not None
            context = np.repeat(now[None, None], cfg.mpc.context_frames, axis=1)
            feasible = limiter.limit_plans(sim.ee_pose(), actions).astype(np.float32)
            pose = {"pose": sim.ee_pose()} if predictor.needs_pose else {}
            predicted = predictor.predict(
                np.repeat(context, len(moves), axis=0), feasible, frame_indices=[horizon - 1], **pose
            )
            for i, seq in enumerate(feasible):
                sim.set_state(episode.initial_state)
                for a in seq:
                    sim.step(a)
                end = gripper_centre(sim.render())
                true_shift = end - start
                distance = float(np.linalg.norm(true_shift))
                if distance < 3:  # the workspace edge stopped it
                    continue
                cases += 1
                found = gripper_centre(predicted[i, 0])
                if found is not None and float((found - start) @ true_shift) / distance > distance / 3:
                    followed += 1
    sim.close()
    assert cases >= 20
    assert followed > 0.5 * cases, f"the predicted gripper followed {followed} of {cases} moves"


def test_mpc_run_in_simulation_uses_the_shipped_model_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--sim", "--task", "push", "--seed", "4", "--max-steps", "1", "--out", str(out)]
    argv += ["--set", "planner.samples=6", "--set", "planner.iterations=1", "--set", "mpc.save_gif=false"]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "success:" in printed and "final distance" in printed
    meta = json.loads((out / "episode.json").read_text())["meta"]
    assert meta["predictor"].startswith("maskvit:")


def test_the_shipped_model_unpacks_into_checkpoints_for_fine_tuning(tmp_path):
    """`train-maskvit --init-from maskvit` needs the networks' configs inside the file."""
    from maskvit_mpc.models.export import unpack_predictor
    from maskvit_mpc.models.maskvit import maskvit_from_checkpoint
    from maskvit_mpc.models.tokenizer import load_tokenizer
    from maskvit_mpc.models.training import load_checkpoint

    unpacked = unpack_predictor(default_model_path(), tmp_path)
    cfg = load_config("default")
    assert load_tokenizer(unpacked.tokenizer).image_size == cfg.sim.image_size
    mv = load_checkpoint(unpacked.maskvit)
    assert mv["config"]["maskvit"]["context_frames"] == cfg.mpc.context_frames
    assert maskvit_from_checkpoint(mv).num_frames >= cfg.mpc.context_frames + cfg.planner.horizon
    # the documented fine-tune, `train-maskvit --config maskvit_cpu --init-from maskvit`, needs the
    # preset to describe the shipped network
    preset = load_config("maskvit_cpu").maskvit
    network = mv["extra"]["model_config"]
    for field in ("d_model", "n_blocks", "n_heads", "action_cumulative", "pose_conditioning"):
        assert network[field] == getattr(preset, field), field
