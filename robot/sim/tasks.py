"""Simulated tasks: from a seed, an initial state, a goal state, a goal image, a distance and success.

Everything a task needs is in the simulator state, so an episode drawn with one :class:`TabletopSim`
can be scored with any other built from the same :class:`SimConfig` (a planner's private oracle copy,
an evaluation process). Distances are measured in the table plane, in metres.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...configs.errors import UserError
from ...configs.schema import TaskConfig
from .scene import object_specs
from .tabletop import VIEW_HALF_EXTENT, SimError, TabletopSim, sample_object_xy

# Where a push goal parks the gripper: high above the table, behind the camera's field of view.
PARKED_GRIPPER_POSE = (0.0, 0.0, 1.0, 0.0, 1.0)
PUSH_HEIGHT_M = 0.022  # tool centre point height while pushing: fingers span 2.2-6.7 cm, objects 0-4 cm
# Reach happens low, just above the workspace floor. A pixel cost barely changes with the gripper's
# height, and a gripper that is not yet in place looks less wrong when lower (smaller in the image), so
# an oracle planner's gripper sank toward the floor and, seen obliquely, a lower gripper sits elsewhere
# in the image: goals 6-10 cm up were missed by 3-7 cm. At the floor there is nowhere to sink to.
REACH_HEIGHT_M = (0.025, 0.035)
# Where reach starts and goals lie (x, y). A raised gripper appears farther up the image than its
# table position, so the far side stops short: an oracle planner whose gripper left the top of the
# view lowered its pixel cost by hiding the gripper instead of reaching.
_REACH_XY_LOW = np.array([-0.13, -0.14])
_REACH_XY_HIGH = np.array([0.13, 0.07])
_MAX_TRIES = 1000


class TaskError(UserError, ValueError):
    """A task that cannot be set up as configured; the message says which setting to change."""


@dataclass(frozen=True, eq=False)  # holds an image: compare fields, not episodes
class TaskEpisode:
    """One drawn task instance.

    ``initial_state`` and ``goal_state`` are :meth:`TabletopSim.get_state` bytes; ``goal_image`` is
    (S, S, 3) uint8 from the sim's camera; ``info`` holds plain JSON-able values (task-specific: the
    pushed ``object`` and its ``goal_xy``, or the reach ``goal_pos``).
    """

    task: str
    seed: int
    initial_state: bytes
    goal_state: bytes
    goal_image: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def goal_xy(self) -> np.ndarray:
        """(2,) goal position in the table plane, metres."""
        return np.asarray(self.info["goal_xy"], dtype=np.float64)


class Task(ABC):
    """Draws episodes from seeds and scores a simulator's current state against an episode's goal."""

    name: ClassVar[str]

    def __init__(self, cfg: TaskConfig) -> None:
        self.config = cfg

    @abstractmethod
    def sample(self, sim: TabletopSim, seed: int) -> TaskEpisode:
        """Draw an episode; leaves ``sim`` in the episode's initial state."""

    @abstractmethod
    def distance(self, sim: TabletopSim, episode: TaskEpisode) -> float:
        """Table-plane distance (m) of the task's point of interest from its goal, in ``sim`` now."""

    def success(self, sim: TabletopSim, episode: TaskEpisode) -> bool:
        """Whether ``sim``'s current state solves ``episode`` (distance within the threshold)."""
        return self.distance(sim, episode) <= self.config.success_threshold_m


def _unit(theta: float) -> np.ndarray:
    return np.array([np.cos(theta), np.sin(theta)])


def _inside_view(*points: np.ndarray, margin: float = 0.0) -> bool:
    return all(float(np.max(np.abs(p))) <= VIEW_HALF_EXTENT - margin for p in points)


class PushTask(Task):
    """Push one named object to a goal position on the table.

    Initial state: the gripper closed, at pushing height, 7-10 cm behind the object on the push line
    and turned so the fingers' broad side faces the push; the goal 6-12 cm ahead of the object; the
    other objects off the path. A trial with a perfect predictor failed when the gripper started too
    far from the object to reach and push it within the planning horizon, hence the short approach.

    Goal image: the objects at the goal state with the gripper parked out of the camera's view. A
    trial with a pixel cost found that a gripper visible in the goal image (parked in a corner) pulls
    the planner's gripper toward it (7 of 10 solved vs 9 of 10 without it): the goal is about the
    object, so the image shows only the object's goal.
    """

    name = "push"

    def sample(self, sim: TabletopSim, seed: int) -> TaskEpisode:
        cfg = self.config
        rng = np.random.default_rng(seed)
        specs = object_specs(sim.config)
        if cfg.push_object is not None and cfg.push_object not in sim.object_names:
            raise TaskError(
                f"task.push_object {cfg.push_object!r} is not in the scene; objects with "
                f"sim.num_objects={sim.config.num_objects}: {', '.join(sim.object_names)}"
            )
        name = cfg.push_object or str(rng.choice(sim.object_names))
        spec = next(s for s in specs if s.name == name)
        ws = sim.safety.workspace
        for _ in range(_MAX_TRIES):
            obj_xy = rng.uniform(-0.10, 0.10, size=2)
            theta = rng.uniform(-np.pi, np.pi)
            u = _unit(theta)
            goal_xy = obj_xy + rng.uniform(cfg.push_distance_m.low, cfg.push_distance_m.high) * u
            start_xy = obj_xy - rng.uniform(cfg.push_start_offset_m.low, cfg.push_start_offset_m.high) * u
            start_xy = start_xy + rng.uniform(-0.01, 0.01) * _unit(theta + np.pi / 2)
            if not _inside_view(goal_xy, start_xy, margin=spec.radius):
                continue
            # Other objects stay clear of the swept path, so the push moves one object only.
            path = (start_xy, goal_xy, spec.radius + 0.02)
            try:
                layout = sample_object_xy(rng, specs, placed={name: obj_xy}, keep_out=[path])
            except SimError:
                continue
            break
        else:
            raise TaskError(f"no push layout found for seed {seed}; lower sim.num_objects")
        yaws = {n: rng.uniform(-np.pi, np.pi) for n in sim.object_names}
        # Fingers close along the gripper's y axis, so its x axis is the broad pushing face's normal;
        # the face is symmetric, so fold the heading into the workspace's yaw range.
        yaw = (theta + np.pi / 2) % np.pi - np.pi / 2 + rng.uniform(-0.15, 0.15)
        yaw = float(np.clip(yaw, ws.yaw.low, ws.yaw.high))
        start_pose = (*start_xy, max(PUSH_HEIGHT_M, ws.z.low), yaw, 1.0)

        goal_objects = {n: (*layout[n], yaws[n]) for n in sim.object_names}
        goal_objects[name] = (*goal_xy, yaws[name])
        sim.place(PARKED_GRIPPER_POSE, goal_objects)
        goal_image = sim.render()
        goal_state = sim.get_state()

        sim.place(start_pose, {n: (*layout[n], yaws[n]) for n in sim.object_names})
        info = {
            "object": name,
            "goal_xy": [float(v) for v in goal_xy],
            "start_xy": [float(v) for v in layout[name]],
            "push_direction_rad": float(theta),
        }
        return TaskEpisode(self.name, seed, sim.get_state(), goal_state, goal_image, info)

    def distance(self, sim: TabletopSim, episode: TaskEpisode) -> float:
        xy = sim.object_positions()[episode.info["object"]][:2]
        return float(np.linalg.norm(xy - episode.goal_xy))


class ReachTask(Task):
    """Bring the gripper's tool centre point to a goal position (success judged in the table plane).

    Initial state: the gripper 2.5-3.5 cm above the table in the near and middle part of the view,
    the goal 5-12 cm away in the plane at the same height, objects off the straight path (and out of
    the area the gripper hides in the image). Low and level, because a pixel cost hardly sees height:
    an oracle planner's gripper sank toward the floor and, seen obliquely, a lower gripper appears
    elsewhere in the image, so goals 6-10 cm up were missed. Middle of the view, because a planner
    whose gripper left the top of the image lowered its pixel cost by hiding the gripper.

    Goal image: the gripper at its goal position with its start yaw and opening, objects unchanged.
    Unlike push, the gripper is the thing to move, so it must be in the goal image; everything else
    is as at the start, so the only pixel difference a planner can reduce is the gripper's position.
    """

    name = "reach"

    def sample(self, sim: TabletopSim, seed: int) -> TaskEpisode:
        cfg = self.config
        rng = np.random.default_rng(seed)
        specs = object_specs(sim.config)
        ws = sim.safety.workspace
        for _ in range(_MAX_TRIES):
            start_xy = rng.uniform(_REACH_XY_LOW, _REACH_XY_HIGH)
            dist = rng.uniform(cfg.reach_distance_m.low, cfg.reach_distance_m.high)
            goal_xy = start_xy + dist * _unit(rng.uniform(-np.pi, np.pi))
            if np.any(goal_xy < _REACH_XY_LOW) or np.any(goal_xy > _REACH_XY_HIGH):
                continue
            try:
                # Keep objects out of the gripper's path and out of the table area the raised
                # gripper covers in the image (it appears farther up the image than it stands).
                keep_out = [(start_xy + (0, dy), goal_xy + (0, dy), 0.04) for dy in (0.0, 0.06, 0.12)]
                layout = sample_object_xy(rng, specs, keep_out=keep_out)
            except SimError:
                continue
            break
        else:
            raise TaskError(f"no reach layout found for seed {seed}; lower sim.num_objects")
        objects = {n: (*layout[n], rng.uniform(-np.pi, np.pi)) for n in sim.object_names}
        # The goal keeps the start height: seen from an oblique camera, a gripper higher and nearer
        # lies on the same camera ray as one lower and farther, and a pixel cost cannot tell them apart.
        start_z = goal_z = float(np.clip(rng.uniform(*REACH_HEIGHT_M), ws.z.low, ws.z.high))
        yaw = float(np.clip(rng.uniform(-0.8, 0.8), ws.yaw.low, ws.yaw.high))
        grip = float(rng.choice([-1.0, 1.0]))

        sim.place((*goal_xy, goal_z, yaw, grip), objects)
        goal_image = sim.render()
        goal_state = sim.get_state()

        sim.place((*start_xy, start_z, yaw, grip), objects)
        info = {
            "goal_xy": [float(v) for v in goal_xy],
            "goal_pos": [float(goal_xy[0]), float(goal_xy[1]), goal_z],
            "start_pos": [float(start_xy[0]), float(start_xy[1]), start_z],
        }
        return TaskEpisode(self.name, seed, sim.get_state(), goal_state, goal_image, info)

    def distance(self, sim: TabletopSim, episode: TaskEpisode) -> float:
        return float(np.linalg.norm(sim.ee_pose()[:2] - episode.goal_xy))


_TASKS: dict[str, type[Task]] = {PushTask.name: PushTask, ReachTask.name: ReachTask}


def make_task(cfg: TaskConfig) -> Task:
    """The task named by ``cfg.name`` ("reach" or "push")."""
    if cfg.name not in _TASKS:
        raise TaskError(f"unknown task {cfg.name!r}; tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[cfg.name](cfg)
