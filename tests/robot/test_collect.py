"""collect-finetune-data: targets, faults (frozen / silent camera, dead controller, full disk), policy.

Fault tests use fakes at the Arm / Camera boundary (a kinematic point gripper and a camera that
draws it); the end-to-end tests at the bottom run the real sim server over the real bridge.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.configs.schema import CollectConfig, SafetyConfig
from maskvit_mpc.robot import episodes as E
from maskvit_mpc.robot.arm import Arm, ArmTimeout, EStopActive
from maskvit_mpc.robot.camera import Camera, CameraTimeout
from maskvit_mpc.robot.collect import Collector, target_steps
from maskvit_mpc.robot.exploration import ExplorationPolicy
from maskvit_mpc.robot.types import AppliedAction, ArmState, Frame

SIZE = 16


class FakeArm(Arm):
    """A point gripper that moves by the applied delta and shoves one object it comes within 4 cm of."""

    def __init__(self, safety: SafetyConfig, dead_after: int | None = None) -> None:
        self.safety = safety
        self.pose = np.array([0.0, 0.0, 0.15, 0.0, -1.0])
        self.obj = np.array([0.1, 0.0, 0.025])
        self.seq = 0
        self.calls = 0
        self.dead_after = dead_after  # stop answering after this many calls
        self.connected = False

    def _answer(self) -> None:
        self.calls += 1
        if self.dead_after is not None and self.calls > self.dead_after:
            raise ArmTimeout("fake controller silent")

    def _state(self) -> ArmState:
        return ArmState(
            self.pose.copy(), 0.0, last_command_seq=self.seq, info={"objects": {"box": self.obj.tolist()}}
        )

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def send_action(self, action: np.ndarray) -> AppliedAction:
        self._answer()
        lim = self.safety.step_limits
        step = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw, 1.0])
        applied = np.clip(action, -step, step)
        self.pose[:4] += applied[:4]
        self.pose[4] = applied[4]
        self.pose[2] = max(self.pose[2], 0.02)
        if np.linalg.norm(self.pose[:2] - self.obj[:2]) < 0.04 and self.pose[2] < 0.05:
            self.obj[:2] += applied[:2]
        self.seq += 1
        return AppliedAction(
            self.seq, np.asarray(action), applied, bool((applied != action).any()), 0.0, self._state()
        )

    def read_state(self) -> ArmState:
        self._answer()
        return self._state()

    def stop(self) -> ArmState:
        return self.read_state()

    def estop(self) -> ArmState:
        return self.read_state()

    def reset_estop(self) -> ArmState:
        return self.read_state()

    def reset_episode(self, options: dict | None = None) -> ArmState:
        self._answer()
        self.pose = np.array([0.0, 0.0, 0.15, 0.0, -1.0])
        self.obj = np.array([0.1, 0.0, 0.025])
        self.seq += 1
        return self._state()


class FakeCamera(Camera):
    """Draws the fake gripper as a bright pixel; can freeze (repeat a frame) or go silent on cue."""

    def __init__(self, arm: FakeArm, freeze_at: int | None = None, silent_at: int | None = None) -> None:
        self.arm = arm
        self.reads = 0
        self.freeze_at, self.silent_at = freeze_at, silent_at
        self._frozen: np.ndarray | None = None
        self.connects = 0
        self._connected = False

    def connect(self) -> None:
        self.connects += 1
        self._connected = True
        self._frozen = None

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        self.reads += 1
        if self.silent_at is not None and self.reads == self.silent_at:
            raise CameraTimeout("fake camera silent")
        if (
            self.freeze_at is not None and self.reads >= self.freeze_at and self.connects == 1
        ):  # a reconnect cures it
            if self._frozen is None:
                self._frozen = self._draw()
            return Frame(self._frozen, 0.0, self.reads, after_command_seq or -1)
        return Frame(self._draw(), float(self.reads), self.reads, self.arm.seq)

    def _draw(self) -> np.ndarray:
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        x, y, z = self.arm.pose[:3]
        i = int(np.clip((y + 0.3) / 0.6 * (SIZE - 1), 0, SIZE - 1))
        j = int(np.clip((x + 0.3) / 0.6 * (SIZE - 1), 0, SIZE - 1))
        img[i, j] = (255, int(z * 800) % 256, int((self.arm.pose[4] + 1) * 100))
        img[SIZE - 1, SIZE - 1, 1] = int(self.arm.pose[3] * 400) % 256  # yaw, off channel 0
        return img


def make_collector(tmp_path: Path, arm: Arm, camera: Camera, **kw) -> Collector:
    cfg = load_config("default", ["collect.episode_steps=6", "collect.min_free_disk_mb=0"])
    kw.setdefault("target_episodes", 3)
    arm.connect()
    camera.connect()  # as main() does before handing them over
    return Collector(cfg, arm, camera, tmp_path, sim=True, progress=False, sleep=lambda s: None, **kw)


def test_target_steps_from_hours_and_episodes() -> None:
    assert target_steps(4.0, None, 30, 0.2) == 72_000  # 4 h x 5 Hz
    assert target_steps(4.0, None, 30, 0.2) // 30 == 2400
    assert target_steps(None, 7, 30, 0.2) == 210


def test_collects_target_and_counts(tmp_path: Path) -> None:
    arm = FakeArm(SafetyConfig())
    summary = make_collector(tmp_path, arm, FakeCamera(arm)).run()
    assert summary.completed and summary.episodes_total == 3 and summary.frames_total == 21
    assert summary.robot_time_s == pytest.approx(3 * 6 * 0.2)
    files = E.episode_files(tmp_path)
    assert len(files) == 3
    ep = E.read_episode(files[0])
    assert ep.frames.shape == (7, SIZE, SIZE, 3) and ep.object_names == ("box",)
    assert ep.meta.seed == 0 and ep.meta.robot == "sim-tabletop"
    assert "faults" in E.read_manifest(tmp_path).info
    # Frame t + 1 shows the pose after action t: the drawn pixel sits where the recorded pose says.
    for t in range(1, 7):
        i, j = np.argwhere(ep.frames[t][..., 0] == 255)[0]
        x, y = ep.poses[t][:2]
        assert j == int(np.clip((x + 0.3) / 0.6 * (SIZE - 1), 0, SIZE - 1))
        assert i == int(np.clip((y + 0.3) / 0.6 * (SIZE - 1), 0, SIZE - 1))
    with pytest.raises(UserError, match="already holds 3 episode"):
        make_collector(tmp_path, arm, FakeCamera(arm))
    # --resume toward a bigger target continues the index and seed sequence.
    more = make_collector(tmp_path, arm, FakeCamera(arm), target_episodes=5, resume=True).run()
    assert more.episodes_this_run == 2 and more.episodes_total == 5
    assert [E.read_episode(p, with_frames=False).meta.seed for p in E.episode_files(tmp_path)] == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_frozen_camera_drops_episode_and_reconnects(tmp_path: Path) -> None:
    arm = FakeArm(SafetyConfig())
    camera = FakeCamera(arm, freeze_at=10)  # freezes in the middle of episode 2
    summary = make_collector(tmp_path, arm, camera).run()
    assert summary.completed and summary.episodes_total == 3
    assert summary.faults["camera_frozen"] == 1 and summary.faults["camera_reconnect"] == 1
    assert camera.connects == 2
    for p in E.episode_files(tmp_path):
        ep = E.read_episode(p)
        assert not any(np.array_equal(ep.frames[t], ep.frames[t + 1]) for t in range(3))


def test_silent_camera_drops_episode(tmp_path: Path) -> None:
    arm = FakeArm(SafetyConfig())
    camera = FakeCamera(arm, silent_at=4)
    summary = make_collector(tmp_path, arm, camera).run()
    assert summary.completed and summary.episodes_total == 3 and summary.faults["camera_timeout"] == 1
    assert [E.episode_index(p) for p in E.episode_files(tmp_path)] == [0, 1, 2]


def test_dead_controller_stops_cleanly_and_keeps_episodes(tmp_path: Path) -> None:
    arm = FakeArm(SafetyConfig(), dead_after=7 * 2 + 3)  # two episodes (1 reset + 6 steps each), then silence
    summary = make_collector(tmp_path, arm, FakeCamera(arm), target_episodes=5).run()
    assert not summary.completed
    assert "did not recover after 2 retries" in summary.stopped_reason
    assert summary.faults["arm_timeout"] == 1 and summary.faults["arm_retry"] == 3
    assert summary.episodes_total == 2
    for p in E.episode_files(tmp_path):
        E.validate_episode(p)
    assert E.read_manifest(tmp_path).num_episodes == 2


def test_estop_stops_cleanly(tmp_path: Path) -> None:
    class EStoppedArm(FakeArm):
        def send_action(self, action: np.ndarray) -> AppliedAction:
            if self.calls >= 10:
                raise EStopActive("e-stop pressed")
            return super().send_action(action)

    arm = EStoppedArm(SafetyConfig())
    summary = make_collector(tmp_path, arm, FakeCamera(arm)).run()
    assert not summary.completed and "e-stop pressed" in summary.stopped_reason
    assert summary.faults["estop"] == 1 and summary.episodes_total == 1
    assert "STOPPED" in summary.format() and "estop 1" in summary.format()


def test_disk_nearly_full_stops_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Usage = namedtuple("Usage", "total used free")
    free = {"bytes": 10**12}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**13, 0, free["bytes"]))
    arm = FakeArm(SafetyConfig())
    collector = make_collector(tmp_path, arm, FakeCamera(arm), target_episodes=4)
    collector.c.min_free_disk_mb = 100
    real_write = E.write_episode

    def write_then_fill(path, episode, level=4):  # the disk fills up after the second episode
        size = real_write(path, episode, level)
        if E.episode_index(path) == 1:
            free["bytes"] = 50 * 10**6
        return size

    monkeypatch.setattr(E, "write_episode", write_then_fill)
    summary = collector.run()
    assert not summary.completed and "MB free" in summary.stopped_reason
    assert summary.faults["disk_full"] == 1 and summary.episodes_total == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        E.episode_filename(0),
        E.episode_filename(1),
        E.MANIFEST_NAME,
    ]


def test_real_arm_reset_routine_and_wall_clock_target(tmp_path: Path) -> None:
    """On a real arm: reset_episode (home) then the configured reset poses, and --hours counts wall time."""

    class RecordingArm(FakeArm):
        def __init__(self, safety: SafetyConfig) -> None:
            super().__init__(safety)
            self.visited: list[np.ndarray] = []
            self.reset_options: list = []

        def reset_episode(self, options: dict | None = None) -> ArmState:
            self.reset_options.append(options)
            self.pose = np.array([0.05, -0.05, 0.12, 0.2, -1.0])  # the arm's own idea of home
            return self._state()

        def send_action(self, action: np.ndarray) -> AppliedAction:
            out = super().send_action(action)
            self.visited.append(self.pose.copy())
            return out

    cfg = load_config(
        "default",
        [
            "collect.episode_steps=4",
            "collect.min_free_disk_mb=0",
            "collect.reset_poses=[[0.1, 0.1, 0.05, 0.0, 1.0]]",
        ],
    )
    arm = RecordingArm(cfg.safety)
    camera = FakeCamera(arm)
    camera.connect()
    collector = Collector(cfg, arm, camera, tmp_path, sim=False, target_hours=1e-7, progress=False)
    summary = collector.run()
    assert summary.completed and summary.episodes_total == 1  # any wall time exceeds 0.36 ms
    assert summary.robot_time_s > 0 and arm.reset_options == [None]
    visited = np.array(arm.visited)
    reached = [
        np.linalg.norm(visited[:, :3] - np.array(p[:3]), axis=1).min()
        for p in [cfg.collect.home_pose, *cfg.collect.reset_poses]
    ]
    assert max(reached) < cfg.collect.reset_tolerance_m
    ep = E.read_episode(E.episode_files(tmp_path)[0])
    np.testing.assert_allclose(ep.poses[0][:3], cfg.collect.home_pose[:3], atol=cfg.collect.reset_tolerance_m)
    assert ep.segmentation is None and ep.initial_sim_state is None and ep.meta.robot == "arm"
    assert E.read_manifest(tmp_path).info["robot_wall_s"] == pytest.approx(summary.robot_time_s)


def test_policy_stays_inside_and_is_time_correlated() -> None:
    cfg, safety = CollectConfig(object_bias=0.0), SafetyConfig()
    policy = ExplorationPolicy(cfg, safety, np.random.default_rng(0))
    pose = np.array([0.0, 0.0, 0.15, 0.0, -1.0])
    policy.reset(pose)
    actions, gripper_events = [], 0
    for _ in range(2000):
        a = policy.act(pose)
        assert np.all(np.abs(a[:3]) <= 0.05 + 1e-9) and abs(a[3]) <= 0.3 + 1e-9 and a[4] in (-1.0, 1.0)
        gripper_events += a[4] != pose[4]
        pose = pose + np.append(a[:4], 0.0)
        pose[4] = a[4]
        ws = safety.workspace
        assert ws.x.low <= pose[0] <= ws.x.high and ws.y.low <= pose[1] <= ws.y.high
        assert ws.z.low <= pose[2] <= ws.z.high
        actions.append(a)
    a = np.array(actions)
    lag1 = np.mean([np.corrcoef(a[:-1, k], a[1:, k])[0, 1] for k in range(3)])
    assert lag1 > 0.4  # smooth sweeps, not white noise
    assert 50 < gripper_events < 400  # open/close events happen, but not every step


def test_policy_object_bias_pushes_objects() -> None:
    """With the bias, the fake world's object moves more than 2 cm in most episodes; without, rarely."""

    def moved_share(bias: float) -> float:
        cfg = CollectConfig(object_bias=bias)
        moved = 0
        for seed in range(40):
            arm = FakeArm(SafetyConfig())
            state = arm.reset_episode()
            policy = ExplorationPolicy(cfg, SafetyConfig(), np.random.default_rng(seed))
            policy.reset(state.pose, {"box": arm.obj.copy()})
            start = arm.obj.copy()
            for _ in range(30):
                state = arm.send_action(policy.act(state.pose, {"box": arm.obj.copy()})).state
            moved += np.linalg.norm(arm.obj - start) > 0.02
        return moved / 40

    assert moved_share(1.0) > 0.7
    assert moved_share(0.0) < 0.3


def test_policy_pushes_again_within_an_episode() -> None:
    """pushes_per_episode > 1: after a push the policy approaches again, and pushes more in all."""

    def pushes(n: int) -> tuple[int, float]:
        cfg = CollectConfig(object_bias=1.0, pushes_per_episode=n)
        starts, travel = 0, 0.0
        for seed in range(20):
            arm = FakeArm(SafetyConfig())
            state = arm.reset_episode()
            policy = ExplorationPolicy(cfg, SafetyConfig(), np.random.default_rng(seed))
            policy.reset(state.pose, {"box": arm.obj.copy()})
            phase = policy._phase
            for _ in range(60):
                before = arm.obj.copy()
                state = arm.send_action(policy.act(state.pose, {"box": arm.obj.copy()})).state
                travel += float(np.linalg.norm(arm.obj - before))
                starts += phase != "push" and policy._phase == "push"
                phase = policy._phase
        return starts, travel

    one, travel_one = pushes(1)
    three, travel_three = pushes(3)
    assert one <= 20  # at most one push per episode
    assert three > 1.8 * one
    assert travel_three > 1.2 * travel_one  # the object is pushed further in all


def test_policy_pushes_at_the_push_tasks_height() -> None:
    """Exploration pushes where the planner pushes: at the push task's gripper height, not above it."""
    from maskvit_mpc.robot.sim.tasks import PUSH_HEIGHT_M

    cfg, safety = CollectConfig(object_bias=1.0), SafetyConfig()
    heights = []
    for seed in range(20):
        arm = FakeArm(safety)
        state = arm.reset_episode()
        policy = ExplorationPolicy(cfg, safety, np.random.default_rng(seed))
        policy.reset(state.pose, {"box": arm.obj.copy()})
        for _ in range(30):
            state = arm.send_action(policy.act(state.pose, {"box": arm.obj.copy()})).state
            if policy._phase == "push":
                heights.append(state.pose[2])
    assert len(heights) > 50
    assert abs(np.median(heights) - PUSH_HEIGHT_M) < 0.006
    assert np.percentile(heights, 90) < PUSH_HEIGHT_M + 0.015


class InProcessSimArm(FakeArm):
    """The real MuJoCo sim behind the Arm boundary, in-process (the bridge's sim backend does the same
    over ZeroMQ): object positions in ArmState.info, scene and task resets from seeds."""

    def __init__(self, cfg) -> None:
        from maskvit_mpc.robot.sim import TabletopSim
        from maskvit_mpc.robot.sim.tasks import make_task

        super().__init__(cfg.safety)
        self.sim = TabletopSim(cfg.sim, cfg.safety)
        self.task = make_task(cfg.task)
        self.resets: list[dict] = []

    def _state(self) -> ArmState:
        objects = {k: v.tolist() for k, v in self.sim.object_positions().items()}
        return ArmState(self.sim.ee_pose(), 0.0, last_command_seq=self.seq, info={"objects": objects})

    def send_action(self, action: np.ndarray) -> AppliedAction:
        self._answer()
        applied = self.sim.step(action)
        self.seq += 1
        return AppliedAction(
            self.seq, np.asarray(action), applied, not np.allclose(applied, action), 0.0, self._state()
        )

    def reset_episode(self, options: dict | None = None) -> ArmState:
        self._answer()
        self.resets.append(dict(options or {}))
        if "task" in (options or {}):
            self.task.sample(self.sim, options["seed"])
        else:
            self.sim.reset(options["seed"])
        self.seq += 1
        return self._state()

    def get_sim_state(self) -> bytes:
        return self.sim.get_state()


class InProcessSimCamera(FakeCamera):
    def _draw(self) -> np.ndarray:
        return self.arm.sim.render()


class InProcessProbe:
    def __init__(self, arm: InProcessSimArm) -> None:
        self.arm = arm

    def state(self) -> bytes:
        return self.arm.get_sim_state()

    def segmentation(self) -> np.ndarray:
        return self.arm.sim.render_segmentation().astype(np.uint8)


def test_sim_episodes_record_objects_segmentation_and_replay(tmp_path: Path) -> None:
    """With the real simulator: resets alternate scene / task, objects and segmentation are recorded,
    and frame t + 1 is what the simulator shows after action t (replayed from the stored initial state)."""
    from maskvit_mpc.robot.sim import TabletopSim

    cfg = load_config(
        "default", ["sim.image_size=32", "collect.episode_steps=8", "collect.scene_redraw_every=2"]
    )
    arm = InProcessSimArm(cfg)
    camera = InProcessSimCamera(arm)
    arm.connect()
    camera.connect()
    collector = Collector(
        cfg, arm, camera, tmp_path, sim=True, target_episodes=4, sim_probe=InProcessProbe(arm), progress=False
    )
    summary = collector.run()
    assert summary.completed and summary.episodes_total == 4 and summary.moved_share is not None
    assert [("task" in r) for r in arm.resets] == [False, True, False, True]
    assert [r["seed"] for r in arm.resets] == [0, 1, 2, 3]
    with TabletopSim(cfg.sim, cfg.safety) as replay:
        for path in E.episode_files(tmp_path):
            ep = E.read_episode(path)
            assert ep.object_names == replay.object_names
            assert ep.segmentation.shape == (9, 32, 32) and set(np.unique(ep.segmentation)) >= {0, 1}
            replay.set_state(ep.initial_sim_state)
            np.testing.assert_array_equal(replay.render(), ep.frames[0])
            for t, a in enumerate(ep.applied):
                replay.step(a)
                np.testing.assert_array_equal(replay.render(), ep.frames[t + 1])
                np.testing.assert_allclose(
                    np.stack(list(replay.object_positions().values())), ep.object_positions[t + 1], atol=1e-6
                )
                np.testing.assert_array_equal(replay.render_segmentation(), ep.segmentation[t + 1])
            assert ep.max_object_displacement() == pytest.approx(
                E.validate_episode(path)["max_object_displacement_m"] or float("nan"), nan_ok=True
            )
    arm.sim.close()


# --- the command, end to end through the real bridge and sim server ----------------------------


def _collect_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "maskvit_mpc.robot.collect",
        "--sim",
        "--out",
        str(out),
        "--episode-steps",
        "6",
        "--no-progress",
        "--set",
        "sim.image_size=32",
        *extra,
    ]


def test_sigkill_then_resume_loses_only_the_unfinished_episode(tmp_path: Path) -> None:
    out = tmp_path / "episodes"
    # Its own session, so the kill takes the collector and the sim server it started, like a power cut.
    proc = subprocess.Popen(
        _collect_cmd(out, "--episodes", "10"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(E.episode_files(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    survivors = {p.name: p.read_bytes() for p in E.episode_files(out)}
    assert 3 <= len(survivors) < 10
    for name in survivors:
        E.validate_episode(out / name)  # every visible file is complete
    done = subprocess.run(
        _collect_cmd(out, "--episodes", "10", "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "collection complete" in done.stdout and "episodes:     10" in done.stdout
    files = E.episode_files(out)
    assert [E.episode_index(p) for p in files] == list(range(10))
    for p in files:
        E.validate_episode(p)
    # Episodes finished before the kill are kept untouched; nothing temporary is left.
    assert all((out / name).read_bytes() == data for name, data in survivors.items())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    manifest = E.read_manifest(out)
    assert [e["file"] for e in manifest.episodes] == [p.name for p in files]
    assert manifest.num_frames == 70 and manifest.moved_share() is not None
    eps = [E.read_episode(p) for p in files]
    assert [e.meta.seed for e in eps] == list(range(10))
    assert all(e.segmentation is not None and e.initial_sim_state for e in eps)


def test_cli_refuses_a_used_folder_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from maskvit_mpc.robot.collect import main

    arm = FakeArm(SafetyConfig())
    make_collector(tmp_path, arm, FakeCamera(arm), target_episodes=1).run()
    assert main(["--sim", "--episodes", "2", "--out", str(tmp_path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["--episodes", "0", "--out", str(tmp_path / "new")]) == 2


def test_killed_server_stops_collection_cleanly(tmp_path: Path) -> None:
    """The arm server dies mid-run: the controller is re-tried, then a clean stop keeps every finished episode."""
    import threading

    from maskvit_mpc.robot.client import ZmqArm
    from maskvit_mpc.robot.collect import _BridgeProbe
    from maskvit_mpc.robot.launch import launch_sim_server
    from maskvit_mpc.robot.zmq_camera import ZmqCamera

    cfg = load_config(
        "default",
        [
            "sim.image_size=32",
            "collect.episode_steps=6",
            "collect.min_free_disk_mb=0",
            "collect.camera_timeout_s=0.5",
            "bridge.request_timeout_s=0.3",
            "bridge.retries=0",
        ],
    )
    with launch_sim_server(cfg) as server, ZmqArm(server.bridge) as arm, ZmqCamera(server.bridge) as camera:

        def kill_after_two_episodes() -> None:
            deadline = time.monotonic() + 60
            while len(E.episode_files(tmp_path)) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            server.process.kill()

        killer = threading.Thread(target=kill_after_two_episodes)
        killer.start()
        collector = Collector(
            cfg,
            arm,
            camera,
            tmp_path,
            sim=True,
            target_episodes=50,
            sim_probe=_BridgeProbe(arm),
            progress=False,
        )
        summary = collector.run()
        killer.join()
    assert not summary.completed and "did not recover after 2 retries" in summary.stopped_reason
    assert summary.faults["arm_lost"] == 1 and summary.faults["arm_retry"] == 3
    assert 2 <= summary.episodes_total < 50
    for p in E.episode_files(tmp_path):
        E.validate_episode(p)
    assert E.read_manifest(tmp_path).num_episodes == summary.episodes_total
