"""The control loop hands the planner the actions the arm applied between the context frames, and the
arm's pose."""

from __future__ import annotations

import numpy as np
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.loop import EpisodeLog, run_episode
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import PlanStep, RandomPolicy
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.launch import launch_sim_server
from maskvit_mpc.robot.zmq_camera import ZmqCamera


class _Recording(RandomPolicy):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.seen: list[np.ndarray | None] = []
        self.poses: list[np.ndarray | None] = []

    def plan(
        self,
        context_frames: np.ndarray,
        context_actions: np.ndarray | None = None,
        pose: np.ndarray | None = None,
    ) -> PlanStep:
        self.seen.append(None if context_actions is None else np.array(context_actions))
        self.poses.append(None if pose is None else np.array(pose))
        return super().plan(context_frames, context_actions, pose)


def test_applied_actions_follow_the_context_frames() -> None:
    cfg = load_config("default", ["sim.image_size=32", "mpc.context_frames=3", "planner.horizon=2"])
    policy = _Recording(cfg.planner, ActionBounds.from_safety(cfg.safety), np.random.default_rng(0))
    episode = EpisodeLog(goal_image=np.zeros((32, 32, 3), np.uint8))
    mpc = cfg.mpc.model_copy(update={"max_steps": 3})
    with launch_sim_server(cfg) as server, ZmqArm(server.bridge) as arm, ZmqCamera(server.bridge) as camera:
        start = arm.read_state().pose
        run_episode(arm, camera, policy, mpc, episode)
    # the pose before each plan: the arm's at the start, then the one it measured after each action
    # (the commanded motion, up to a few mm of tracking error)
    np.testing.assert_allclose(policy.poses[0], start)
    for k in (1, 2):
        moved = policy.poses[k][:4] - policy.poses[k - 1][:4]
        np.testing.assert_allclose(moved, episode.steps[k - 1].applied[:4], atol=5e-3)
        assert not np.allclose(moved, 0.0, atol=1e-3)
    applied = [s.applied.astype(np.float32) for s in episode.steps]
    assert policy.seen[0] is None  # nothing known at the start: the predictor holds
    # one applied action known: the earlier slot is "hold" with that action's gripper
    np.testing.assert_allclose(policy.seen[1][1], applied[0])
    np.testing.assert_allclose(policy.seen[1][0][:4], 0.0)
    assert policy.seen[1][0][4] == applied[0][4]
    np.testing.assert_allclose(policy.seen[2], np.stack(applied[:2]))  # oldest first, like the frames
