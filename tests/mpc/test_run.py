"""mpc-run and mpc-eval end to end through the real bridge: a launched sim arm server, ZeroMQ, the camera."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc import evaluate, run
from maskvit_mpc.mpc.loop import EpisodeLog, run_episode
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import RandomPolicy
from maskvit_mpc.mpc.session import GoalImageError, load_goal_image
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.launch import launch_sim_server
from maskvit_mpc.robot.zmq_camera import ZmqCamera
from PIL import Image

# Tiny sizes: the point is the code path, not the plan quality.
TINY = [
    "--set",
    "sim.image_size=32",
    "--set",
    "planner.samples=4",
    "--set",
    "planner.iterations=1",
    "--set",
    "planner.horizon=2",
    "--set",
    "mpc.gif_frame_ms=50",
]
ORACLE = ["--predictor", "oracle", *TINY]  # mpc-run's default, the shipped model, needs 64x64 frames


def test_sim_episode_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = run.main(["--task", "push", "--sim", "--seed", "2", "--max-steps", "2", "--out", str(out), *ORACLE])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "success:" in printed and "final distance" in printed
    doc = json.loads((out / "episode.json").read_text())
    assert doc["summary"]["steps"] == 2 and doc["meta"]["predictor"] == "oracle"
    assert doc["summary"]["final_distance_m"] is not None
    data = np.load(out / "episode.npz")
    assert data["frames"].shape == (3, 32, 32, 3)  # two planned-from frames and the final one
    assert data["planned_actions"].shape == (2, 2, 5)
    assert data["predicted_frames"].shape == (2, 2, 32, 32, 3)
    assert np.all(np.isfinite(data["applied_actions"]))
    assert np.all(np.abs(data["applied_actions"][:, :2]) <= 0.05 + 1e-9)
    assert not np.array_equal(data["frames"][0], data["frames"][-1])  # the arm moved, the camera saw it
    goal = np.asarray(Image.open(out / "goal.png"))
    np.testing.assert_array_equal(goal, data["goal_image"])
    assert Image.open(out / "summary.gif").n_frames == 2


def test_dry_run_moves_nothing(tmp_path):
    out = tmp_path / "dry"
    rc = run.main(["--sim", "--seed", "3", "--dry-run", "--max-steps", "2", "--out", str(out), *ORACLE])
    assert rc == 0
    doc = json.loads((out / "episode.json").read_text())
    assert doc["meta"]["arm_pose_start"] == doc["meta"]["arm_pose_end"]
    assert all(step["sent"] is None for step in doc["steps"])
    frames = np.load(out / "episode.npz")["frames"]
    assert all(np.array_equal(frames[0], f) for f in frames[1:])
    assert Image.open(out / "summary.gif").n_frames == 2  # one per step, even when nothing moved


def test_dry_run_loop_leaves_the_arm_state_alone():
    cfg = load_config("default", ["sim.image_size=32", "mpc.max_steps=2", "planner.horizon=2"])
    with launch_sim_server(cfg) as server, ZmqArm(server.bridge) as arm, ZmqCamera(server.bridge) as camera:
        state = arm.reset_episode({"seed": 4, "task": "push"})
        before, sim_before = arm.read_state(), arm.sim_state()
        policy = RandomPolicy(cfg.planner, ActionBounds.from_safety(cfg.safety), np.random.default_rng(0))
        episode = EpisodeLog(goal_image=np.zeros((32, 32, 3), np.uint8))
        telemetry = []  # the per-step hook a dashboard would use
        run_episode(
            arm,
            camera,
            policy,
            cfg.mpc,
            episode,
            first_command_seq=state.last_command_seq,
            dry_run=True,
            on_step=telemetry.append,
        )
        after = arm.read_state()
        assert len(episode.steps) == 2 and telemetry == episode.steps
        np.testing.assert_array_equal(before.pose, after.pose)
        assert after.last_command_seq == before.last_command_seq  # no command reached the server
        assert arm.sim_state() == sim_before


def test_goal_images_are_checked(tmp_path, capsys):
    rgb = tmp_path / "rgb48.png"
    Image.fromarray(np.full((48, 48, 3), 120, np.uint8)).save(rgb)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((32, 32), 120, np.uint8)).save(gray)
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")

    resized = load_goal_image(rgb, 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    with pytest.raises(GoalImageError, match="48x48 but frames are 32x32"):
        load_goal_image(rgb, 32, resize=False)

    cases = [
        (gray, [], "mode L but must be 8-bit RGB"),
        (junk, [], "not a readable image"),
        (tmp_path / "missing.png", [], "does not exist"),
        (rgb, ["--no-resize"], "48x48 but frames are 32x32"),
    ]
    for path, extra, message in cases:
        rc = run.main(["--sim", "--goal", str(path), "--out", str(tmp_path / "x"), *extra, *ORACLE])
        assert rc == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before anything ran


def test_other_user_errors(capsys):
    assert run.main(["--task", "push", "--goal", "g.png", "--predictor", "oracle"]) == 2
    assert "only in simulation" in capsys.readouterr().err
    assert run.main(["--sim", "--predictor", "nope.pt", *TINY]) == 2
    assert "neither a built-in predictor" in capsys.readouterr().err


def test_ctrl_c_stops_the_arm_and_saves_the_log(tmp_path):
    out = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "maskvit_mpc.mpc.run",
        "--sim",
        "--seed",
        "1",
        "--max-steps",
        "500",
        "--predictor",
        "copy-last",
        "--out",
        str(out),
        *TINY,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,  # its own process group, like a command in a terminal
        # as from a terminal: a shell that ran the tests in the background (cmd &) leaves SIGINT ignored,
        # which children inherit, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the episode is under way
            line = proc.stderr.readline()
            lines.append(line)
            if "step 1:" in line or proc.poll() is not None:
                break
        assert "step 1:" in lines[-1], "".join(lines)
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + stderr
    assert proc.returncode == 130, stderr
    assert "arm stopped" in stderr
    doc = json.loads((out / "episode.json").read_text())
    assert doc["summary"]["stopped_by"] == "interrupted"
    assert 2 <= doc["summary"]["steps"] < 500


def test_wilson_interval_known_values():
    low, high = evaluate.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = evaluate.wilson_interval(10, 20)
    assert (low, high) == (pytest.approx(0.2993, abs=1e-4), pytest.approx(0.7007, abs=1e-4))
    low, high = evaluate.wilson_interval(20, 20)
    assert low == pytest.approx(0.8389, abs=1e-4) and high == 1.0


def test_eval_random_writes_results(tmp_path, capsys):
    out = tmp_path / "random.csv"
    rc = evaluate.main(
        [
            "--task",
            "reach",
            "--episodes",
            "2",
            "--predictor",
            "random",
            "--max-steps",
            "2",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reach / random: success" in printed and "95% CI" in printed
    rows = out.read_text().strip().splitlines()
    assert rows[0].startswith("seed,success,final_distance_m")
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "summary"]


def test_real_arm_path_reads_the_configured_camera_through_the_shared_preprocessing(tmp_path, capsys):
    """Without --sim, mpc-run reads --camera (here a replay of image files larger than the model's view)
    through the same preprocessing as collection, and drives a running arm server (the dry backend)."""
    from maskvit_mpc.configs.schema import BridgeConfig, SafetyConfig
    from maskvit_mpc.robot.backends import DryBackend
    from maskvit_mpc.robot.server import ArmServer

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    goal = tmp_path / "goal.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(goal)
    safety = SafetyConfig()
    bridge = BridgeConfig(command_port=0, camera_port=0, request_timeout_s=2.0, retries=1)
    backend = DryBackend(safety, image_size=16)
    with ArmServer(backend, safety, bridge).running() as endpoints:
        port = int(endpoints.command.rsplit(":", 1)[1])
        out = tmp_path / "run"
        rc = run.main(
            [
                "--goal",
                str(goal),
                "--predictor",
                "copy-last",
                "--camera",
                f"replay:{images}",
                "--max-steps",
                "2",
            ]
            + ["--out", str(out), "--set", f"bridge.command_port={port}", "--set", "data.image_size=32"]
            + ["--set", "camera.replay_loop=true", *TINY]
        )
        assert rc == 0, capsys.readouterr().err
    data = np.load(out / "episode.npz")
    assert data["frames"].shape[1:] == (32, 32, 3)  # 64x48 images cropped and resized to the view
    assert data["applied_actions"].shape == (2, 5)
    assert backend.steps == 2  # both planned actions reached the controller


def test_camera_flag_is_refused_with_sim(capsys):
    assert run.main(["--sim", "--camera", "realsense"]) == 2
    assert "--camera is for a real robot" in capsys.readouterr().err


def test_eval_workers_give_the_results_of_one_process(tmp_path, capsys):
    """--workers splits the seeds over processes (spawned, each with its own sim server); every episode
    keeps its seed, so the per-episode results equal a single process's."""
    args = ["--task", "reach", "--episodes", "3", "--predictor", "random", "--max-steps", "2", *TINY]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert evaluate.main([*args, "--out", str(one)]) == 0
    assert evaluate.main([*args, "--out", str(two), "--workers", "2"]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert [r["seed"] for r in b["episodes_detail"]] == [0, 1, 2]
    for ra, rb in zip(a["episodes_detail"], b["episodes_detail"], strict=True):
        assert ra["final_distance_m"] == rb["final_distance_m"] and ra["success"] == rb["success"]
    assert a["successes"] == b["successes"] and b["episodes"] == 3
    assert evaluate.main([*args, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_eval_workers_pass_a_worker_error_on(tmp_path, capsys):
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"not a model")
    argv = ["--task", "push", "--episodes", "2", "--predictor", str(bad), "--workers", "2", *TINY]
    assert evaluate.main(argv) == 2
    assert "(not a zip archive); export one with export-predictor" in capsys.readouterr().err


# A process standing in for an mpc-eval worker: it watches its parent like the workers do, then waits
# for work; ``ignore`` makes it swallow the interrupt, so only the hard exit can end it.
_WORKER = """
import os, signal, sys, time
from pathlib import Path
from maskvit_mpc.mpc.evaluate import _exit_with_parent
marker, ignore = Path(sys.argv[1]), sys.argv[2] == "1"
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for mpc-eval started in the background (`cmd &`)
_exit_with_parent(os.getppid(), period_s=0.05, grace_s=1.0)
marker.write_text("ready")
while True:
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        marker.write_text("interrupted")
        if not ignore:
            sys.exit(0)
"""
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(line for line in fh if line.startswith("State:"))
    except FileNotFoundError:
        return False
    return " Z" not in state  # an orphan's zombie may wait for a reaper that never comes in a container


@pytest.mark.parametrize("ignore", [False, True], ids=["interrupted", "hard-exit"])
def test_eval_worker_stops_when_mpc_eval_is_killed(tmp_path, ignore):
    """A killed mpc-eval must not leave its workers planning (and their arm servers running) as orphans."""
    marker = tmp_path / "worker.txt"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _WORKER, str(marker), "1" if ignore else "0"], stdout=subprocess.PIPE
    )
    try:
        worker = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text() == "ready"):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        assert _running(worker)
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait()
        deadline = time.monotonic() + 15
        while _running(worker):
            assert time.monotonic() < deadline, "the worker outlived mpc-eval"
            time.sleep(0.05)
        assert marker.read_text() == "interrupted"  # it was told to stop first, hard exit or not
    finally:
        parent.kill()
        if "worker" in locals() and _running(worker):
            os.kill(worker, signal.SIGKILL)
