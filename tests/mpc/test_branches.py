import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.branches import SCENE_STRIDE, BranchSettings, choose_branches, complete_scenes, main
from maskvit_mpc.robot.episodes import episode_files, episode_index, read_episode, read_manifest
from maskvit_mpc.robot.sim import TabletopSim


def _seqs(rng, n):
    return rng.uniform(-1, 1, size=(n, 4, 5))


def test_choose_branches_takes_the_executed_plan_the_best_ranked_and_random_ones_once_each():
    rng = np.random.default_rng(0)
    first, second = _seqs(rng, 6), _seqs(rng, 6)
    costs_first = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 8.0])
    costs_second = np.array([0.5, 2.0, 0.7, 6.0, 4.0, 0.6])
    executed = second[0].copy()  # the best overall: CEM's best sample
    chosen = choose_branches(
        [first, second],
        [costs_first, costs_second],
        executed,
        BranchSettings(top=3, first_top=2, random=2),
        rng,
    )
    reasons = [r for r, _ in chosen]
    assert reasons == ["executed", "top", "top", "top", "first-top", "first-top", "random", "random"]
    # the executed plan is not repeated among the top ones: next come costs 0.6, 0.7, 1.0
    np.testing.assert_array_equal(chosen[0][1], executed)
    for (_, seq), want in zip(chosen[1:4], [second[5], second[2], first[1]], strict=True):
        np.testing.assert_array_equal(seq, want)
    # the first batch's best (1.0) is already taken: its next two are 3.0 and 5.0
    np.testing.assert_array_equal(chosen[4][1], first[3])
    np.testing.assert_array_equal(chosen[5][1], first[0])
    # random picks come from the scored sequences and repeat none of the others
    seqs = [s for _, s in chosen]
    pool = np.concatenate([first, second])
    for s in seqs[6:]:
        assert any(np.array_equal(s, p) for p in pool)
    assert len({s.tobytes() for s in seqs}) == len(seqs)


def test_choose_branches_with_few_sequences_and_bad_input():
    rng = np.random.default_rng(1)
    only = _seqs(rng, 2)
    chosen = choose_branches([only], [np.array([1.0, 2.0])], only[0], BranchSettings(top=5, random=5), rng)
    assert len(chosen) == 2  # nothing twice, however many were asked for
    assert [r for r, _ in choose_branches([], [], only[0], BranchSettings(), rng)] == ["executed"]
    with pytest.raises(ValueError, match="one cost per sequence"):
        choose_branches([only], [np.array([1.0])], only[0], BranchSettings(), rng)


ARGS = [
    "--predictor",
    "copy-last",
    "--workers",
    "1",
    "--max-steps",
    "2",
    "--top",
    "2",
    "--first-top",
    "1",
    "--random",
    "1",
    "--set",
    "sim.image_size=32",
    "--set",
    "planner.samples=8",
    "--set",
    "planner.iterations=2",
    "--set",
    "planner.horizon=4",
]


def test_branches_replay_in_the_simulator_and_continue_the_trajectory(tmp_path, capsys):
    out = tmp_path / "br"
    assert main(["--out", str(out), "--scenes", "1", "--seed", "42", *ARGS]) == 0
    assert "1 scenes" in capsys.readouterr().out
    files = episode_files(out)
    trajectory = read_episode(files[0])
    branches = [read_episode(p) for p in files[1:]]
    assert episode_index(files[0]) == 0 and trajectory.meta.extra["kind"] == "trajectory"
    assert trajectory.num_steps == 2 and trajectory.meta.seed == 42
    # per step: the executed plan, and up to 2 + 1 + 1 others (copy-last ties can dedupe some)
    steps = [b.meta.extra["scene_step"] for b in branches]
    assert sorted(set(steps)) == [0, 1] and all(2 <= steps.count(s) <= 5 for s in (0, 1))
    assert read_manifest(out).num_episodes == len(files)
    cfg = load_config("default", ["sim.image_size=32"])
    sim = TabletopSim(cfg.sim, cfg.safety)
    try:
        for b in branches:
            assert b.frames.shape == (2 + 4, 32, 32, 3) and b.num_steps == 5
            assert b.object_positions is not None and b.segmentation is not None
            s = b.meta.extra["scene_step"]
            # context: the trajectory's frame before this step (repeated at step 0) and its frame now
            np.testing.assert_array_equal(b.frames[1], trajectory.frames[s])
            np.testing.assert_array_equal(b.frames[0], trajectory.frames[max(0, s - 1)])
            if s > 0:
                np.testing.assert_array_equal(b.applied[0], trajectory.applied[s - 1])
            if b.meta.extra["reason"] == "executed":
                np.testing.assert_array_equal(b.applied[1], trajectory.applied[s])
                np.testing.assert_array_equal(b.frames[2], trajectory.frames[s + 1])
            # the simulator replays the branch from its stored state, frame for frame (at step 0 the
            # context's hold is the loop's "standing still" and the state is the present one)
            sim.set_state(b.initial_sim_state)
            first = 1 if s == 0 else 0
            np.testing.assert_array_equal(sim.render(), b.frames[first])
            for t in range(first, b.num_steps):
                sim.step(b.applied[t])
                np.testing.assert_array_equal(sim.render(), b.frames[t + 1])
    finally:
        sim.close()


def test_resume_redoes_only_incomplete_scenes_and_a_full_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "br"
    assert main(["--out", str(out), "--scenes", "2", *ARGS]) == 0
    assert complete_scenes(out) == {0, 1}
    before = {p.name: p.read_bytes() for p in episode_files(out)}
    # scene 1 "killed" before its trajectory was written: only some branches on disk
    (out / f"episode_{SCENE_STRIDE:06d}.h5").unlink()
    assert complete_scenes(out) == {0}
    assert main(["--out", str(out), "--scenes", "2", *ARGS]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--out", str(out), "--scenes", "2", "--resume", *ARGS]) == 0
    after = {p.name: p.read_bytes() for p in episode_files(out)}
    assert after.keys() == before.keys()
    scene0 = [n for n in before if episode_index(out / n) < SCENE_STRIDE]
    assert all(before[n] == after[n] for n in scene0)  # complete scene untouched
    assert read_manifest(out).num_episodes == len(after)


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--predictor", "random"]) == 2
    assert "no planner" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "b"), "--scenes", "0"]) == 2
    assert "--scenes" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "c"), "--top", "-1"]) == 2
    assert "--top" in capsys.readouterr().err
    assert (
        main(["--out", str(tmp_path / "d"), "--predictor", "copy-last", "--set", "mpc.context_frames=3"]) == 2
    )
    assert "two context frames" in capsys.readouterr().err
