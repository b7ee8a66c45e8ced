"""The MuJoCo sim behind the real arm server, started as its own process by launch_sim_server."""

from __future__ import annotations

import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.robot.client import ZmqArm, ZmqSimProbe
from maskvit_mpc.robot.launch import ServerStartError, launch_sim_server
from maskvit_mpc.robot.protocol import RemoteError
from maskvit_mpc.robot.sim import TabletopSim, make_task
from maskvit_mpc.robot.zmq_camera import ZmqCamera

FRAME_TIMEOUT_S = 10.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def cfg():
    return load_config("default", ["sim.image_size=32", "bridge.request_timeout_s=10", "bridge.retries=0"])


@pytest.fixture(scope="module")
def sim_server(cfg):
    with launch_sim_server(cfg) as server:
        yield server


@pytest.fixture
def arm_and_camera(sim_server):
    with ZmqArm(sim_server.bridge) as arm, ZmqCamera(sim_server.bridge) as camera:
        yield arm, camera


def test_seeded_task_reset_step_and_frames(cfg, arm_and_camera):
    arm, camera = arm_and_camera
    state = arm.reset_episode({"seed": 4, "task": "push"})
    assert state.info["task"]["name"] == "push" and state.info["task"]["seed"] == 4
    assert len(state.info["objects"]) == cfg.sim.num_objects
    first = camera.read(timeout_s=FRAME_TIMEOUT_S, after_command_seq=state.last_command_seq)
    assert first.rgb.shape == (32, 32, 3) and first.last_command_seq == state.last_command_seq

    # The episode the server drew is the one a client draws for the same seed in its own sim.
    local = TabletopSim(cfg.sim, cfg.safety)
    episode = make_task(cfg.task).sample(local, 4)
    local.set_state(arm.sim_state())
    np.testing.assert_allclose(local.ee_pose(), state.pose)
    np.testing.assert_array_equal(local.get_state(), episode.initial_state)

    result = arm.send_action(np.array([0.02, -0.01, 0.02, 0.1, 1.0]))
    np.testing.assert_allclose(result.applied, [0.02, -0.01, 0.02, 0.1, 1.0], atol=1e-9)
    assert not result.clipped
    frame = camera.read(timeout_s=FRAME_TIMEOUT_S, after_command_seq=result.seq)
    assert frame.last_command_seq == result.seq and frame.seq > first.seq
    local.step(np.array([0.02, -0.01, 0.02, 0.1, 1.0]))
    np.testing.assert_allclose(result.state.pose, local.ee_pose(), atol=1e-9)  # same physics, same state
    np.testing.assert_array_equal(frame.rgb, local.render())
    local.close()


def test_sim_state_round_trips_through_reset(arm_and_camera):
    arm, camera = arm_and_camera
    arm.reset_episode({"seed": 11})
    saved = arm.sim_state()
    before = arm.read_state()
    for _ in range(3):
        arm.send_action(np.array([0.03, 0.03, 0.0, 0.0, -1.0]))
    moved = arm.read_state()
    assert np.linalg.norm(moved.pose[:2] - before.pose[:2]) > 0.05
    state = arm.reset_episode({"state": saved})
    np.testing.assert_allclose(state.pose, before.pose)
    assert arm.sim_state() == saved
    assert camera.read(timeout_s=FRAME_TIMEOUT_S, after_command_seq=state.last_command_seq) is not None
    labels = arm.segmentation()
    assert labels.shape == (32, 32) and labels.dtype == np.int32 and labels.max() >= 2


def test_bad_sim_options_are_refused(arm_and_camera):
    arm, _ = arm_and_camera
    with pytest.raises(RemoteError) as err:
        arm.reset_episode({"state": b"not a state"})
    assert err.value.code == "BAD_OPTIONS"
    with pytest.raises(RemoteError, match="BAD_OPTIONS"):
        arm.reset_episode({"seed": 1, "task": "juggle"})
    with pytest.raises(RemoteError, match="BAD_OPTIONS"):
        arm.reset_episode({})
    assert arm.read_state().pose.shape == (5,)  # still serving


def test_failed_start_is_reported(cfg):
    bad = cfg.model_copy(deep=True)
    bad.bridge.curve_keys_dir = "/nonexistent-keys-folder"
    with pytest.raises(ServerStartError, match="exited"), launch_sim_server(bad, backend="dry"):
        pass


def test_sim_probe_adapter(arm_and_camera):
    arm, _ = arm_and_camera
    probe = ZmqSimProbe(arm)
    assert probe.state() == arm.sim_state()
    np.testing.assert_array_equal(probe.segmentation(), arm.segmentation())
