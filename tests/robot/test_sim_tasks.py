"""Simulated tasks: goal rendering, distance and success, and solvability by a scripted controller."""

from __future__ import annotations

import numpy as np
import pytest
from maskvit_mpc.configs.schema import SimConfig, TaskConfig
from maskvit_mpc.robot.sim import (
    SEG_FIRST_OBJECT,
    SEG_GRIPPER,
    PushTask,
    ReachTask,
    TabletopSim,
    TaskEpisode,
    TaskError,
    make_task,
)

SIZE = 32
SEEDS = range(6)


@pytest.fixture(scope="module")
def sim():
    s = TabletopSim(SimConfig(image_size=SIZE))
    yield s
    s.close()


@pytest.fixture(scope="module")
def other_sim():
    """A second instance: episodes drawn with ``sim`` must work here from their states alone."""
    s = TabletopSim(SimConfig(image_size=SIZE))
    yield s
    s.close()


def _push_policy(sim: TabletopSim, ep: TaskEpisode) -> np.ndarray:
    """Knows the state: get behind the object on the line to its goal, push, stop near the goal.

    To get behind the object it lifts, moves over and comes down, so it never knocks the object.
    """
    obj = sim.object_positions()[ep.info["object"]][:2]
    to_goal = ep.goal_xy - obj
    dist = float(np.linalg.norm(to_goal))
    ee = sim.ee_pose()
    if dist < 0.02:  # close enough: stop before the push direction gets noisy
        return np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    u = to_goal / dist
    rel = ee[:2] - obj
    lateral = rel - np.dot(rel, u) * u
    pre_push = obj - 0.075 * u
    yaw = (np.arctan2(u[1], u[0]) + np.pi / 2) % np.pi - np.pi / 2  # broad finger face forward
    low, high = 0.022, 0.08
    if np.dot(rel, u) < -0.035 and np.linalg.norm(lateral) < 0.02 and ee[2] < 0.03:
        target, z = obj + (min(dist, 0.04) - 0.045) * u - 0.5 * lateral, low  # push
    elif np.linalg.norm(pre_push - ee[:2]) < 0.01:
        target, z = pre_push, low  # above the pre-push point: come down
    elif ee[2] < high - 0.01:
        target, z = ee[:2], high  # lift in place
    else:
        target, z = pre_push, high  # move over
    return np.array([*(target - ee[:2]), z - ee[2], yaw - ee[3], 1.0])


def _reach_policy(sim: TabletopSim, ep: TaskEpisode) -> np.ndarray:
    ee = sim.ee_pose()
    return np.array([*(np.asarray(ep.info["goal_pos"]) - ee[:3]), 0.0, ee[4]])


@pytest.mark.parametrize(("name", "policy"), [("push", _push_policy), ("reach", _reach_policy)])
def test_scripted_controller_solves_the_task_from_the_episode_state(sim, other_sim, name, policy):
    task = make_task(TaskConfig(name=name))
    for seed in SEEDS:
        ep = task.sample(sim, seed)
        other_sim.set_state(ep.initial_state)  # scored in another instance, from the state alone
        start = task.distance(other_sim, ep)
        assert start > task.config.success_threshold_m
        assert not task.success(other_sim, ep)
        for _ in range(20):
            other_sim.step(policy(other_sim, ep))
        assert task.success(other_sim, ep), (name, seed, start, task.distance(other_sim, ep))


def test_push_episode_layout_and_goal(sim, other_sim):
    task = PushTask(TaskConfig(name="push"))
    for seed in SEEDS:
        ep = task.sample(sim, seed)
        name = ep.info["object"]
        assert name in sim.object_names
        assert ep.goal_image.shape == (SIZE, SIZE, 3) and ep.goal_image.dtype == np.uint8

        other_sim.set_state(ep.initial_state)
        objects = other_sim.object_positions()
        ee = other_sim.ee_pose()
        travel = np.linalg.norm(ep.goal_xy - objects[name][:2])
        cfg = task.config
        assert cfg.push_distance_m.low - 1e-9 <= travel <= cfg.push_distance_m.high + 1e-9
        # The gripper starts closed, at pushing height, behind the object on the push line.
        u = (ep.goal_xy - objects[name][:2]) / travel
        behind = np.dot(objects[name][:2] - ee[:2], u)
        assert 0.06 <= behind <= 0.10 and ee[2] < 0.03 and ee[4] > 0.9
        np.testing.assert_array_equal(other_sim.render(), sim.render())  # sample left sim in the start

        # Goal state: the object at the goal, the others where they start, no gripper in view.
        other_sim.set_state(ep.goal_state)
        goal_objects = other_sim.object_positions()
        np.testing.assert_allclose(goal_objects[name][:2], ep.goal_xy, atol=1e-9)
        for other in sim.object_names:
            if other != name:
                np.testing.assert_allclose(goal_objects[other], objects[other], atol=1e-9)
        assert task.distance(other_sim, ep) == pytest.approx(0.0, abs=1e-9)
        assert task.success(other_sim, ep)
        seg = other_sim.render_segmentation()
        assert not (seg == SEG_GRIPPER).any()
        assert (seg == SEG_FIRST_OBJECT + sim.object_names.index(name)).sum() >= 4
        np.testing.assert_array_equal(other_sim.render(), ep.goal_image)


def test_reach_goal_shows_the_gripper_at_its_goal_with_objects_unchanged(sim, other_sim):
    task = ReachTask(TaskConfig(name="reach"))
    for seed in SEEDS:
        ep = task.sample(sim, seed)
        other_sim.set_state(ep.initial_state)
        objects = other_sim.object_positions()
        start_pose = other_sim.ee_pose()
        np.testing.assert_allclose(start_pose[:3], ep.info["start_pos"], atol=1e-9)

        other_sim.set_state(ep.goal_state)
        np.testing.assert_allclose(other_sim.ee_pose()[:3], ep.info["goal_pos"], atol=1e-9)
        np.testing.assert_allclose(other_sim.ee_pose()[3:], start_pose[3:], atol=1e-9)
        for name, pos in other_sim.object_positions().items():
            np.testing.assert_allclose(pos, objects[name], atol=1e-12)
        assert (other_sim.render_segmentation() == SEG_GRIPPER).sum() >= 4
        np.testing.assert_array_equal(other_sim.render(), ep.goal_image)
        assert task.success(other_sim, ep)


def test_distance_and_success_follow_the_threshold(sim):
    push = PushTask(TaskConfig(name="push", push_object="green_cylinder", success_threshold_m=0.03))
    ep = push.sample(sim, 0)
    assert ep.info["object"] == "green_cylinder"
    gx, gy = ep.goal_xy
    ee = (*ep.info["start_xy"], 0.15, 0.0, 1.0)  # gripper well clear of the object
    for offset, solved in ((0.029, True), (0.031, False)):
        sim.place(ee, {"green_cylinder": (gx + offset * 0.6, gy - offset * 0.8, 0.0)})
        assert push.distance(sim, ep) == pytest.approx(offset)
        assert push.success(sim, ep) is solved

    reach = ReachTask(TaskConfig(name="reach", success_threshold_m=0.03))
    ep = reach.sample(sim, 1)
    gx, gy, gz = ep.info["goal_pos"]
    # Only the table-plane distance counts: 5 cm above the goal is still at the goal.
    sim.place((gx, gy + 0.02, gz + 0.05, 0.0, 1.0))
    assert reach.distance(sim, ep) == pytest.approx(0.02)
    assert reach.success(sim, ep)
    sim.place((gx - 0.04, gy, gz, 0.0, 1.0))
    assert reach.distance(sim, ep) == pytest.approx(0.04)
    assert not reach.success(sim, ep)


def test_sampling_is_a_function_of_the_seed(sim, other_sim):
    task = make_task(TaskConfig(name="push"))
    a, b = task.sample(sim, 7), task.sample(other_sim, 7)
    assert a.initial_state == b.initial_state and a.goal_state == b.goal_state and a.info == b.info
    np.testing.assert_array_equal(a.goal_image, b.goal_image)
    assert task.sample(sim, 8).initial_state != a.initial_state


def test_unknown_push_object_is_a_user_error(sim):
    with pytest.raises(TaskError, match="yellow_cylinder"):
        PushTask(TaskConfig(name="push", push_object="yellow_cylinder")).sample(sim, 0)


def test_make_task_returns_the_named_task():
    assert isinstance(make_task(TaskConfig(name="reach")), ReachTask)
    assert isinstance(make_task(TaskConfig(name="push")), PushTask)
