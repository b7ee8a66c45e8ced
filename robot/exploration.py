"""The exploration policy of ``collect-finetune-data``, in the spirit of RoboNet's random data collection.

Actions are time-correlated random 5-D deltas (an AR(1) process per axis, so the gripper sweeps
rather than jitters), kept inside the workspace by reflecting the noise at its edges, with random
gripper open/close events. Pushes are rare under pure noise, so in a configurable share of
episodes the policy first approaches a point just behind a known object (sim: positions from
``ArmState.info``), pushes through it along a random direction, and then explores randomly again, or, with
``pushes_per_episode`` above 1, approaches an object for the next push.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs.schema import CollectConfig, SafetyConfig
from .types import ACTION_DIM

Objects = Mapping[str, np.ndarray]  # name -> (3,) centre in the base frame, metres


class ExplorationPolicy:
    """``reset`` at the start of each episode, then ``act`` once per control step.

    ``act(pose, objects)`` returns a (5,) float64 action: dx, dy, dz (m), dyaw (rad) within the step
    limits, and an absolute gripper command of -1 (open) or +1 (closed).
    """

    def __init__(self, cfg: CollectConfig, safety: SafetyConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        lim = safety.step_limits
        self.step_limit = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw])
        ws, ex, m = safety.workspace, cfg.explore_bounds, cfg.workspace_margin_m
        # The box exploration aims to stay in: the explore box (the camera's view) inside the safety box,
        # shrunk by a margin so the controller rarely has to clip (clipped commands would teach the model
        # actions that had no effect).
        # No margin above the floor: pushes happen just above it (the push task's height), and data
        # whose gripper never went that low taught a model pushes that do not look like the planner's.
        safe_low = np.array([ws.x.low + m, ws.y.low + m, ws.z.low, ws.yaw.low + 0.1])
        safe_high = np.array([ws.x.high - m, ws.y.high - m, ws.z.high - m, ws.yaw.high - 0.1])
        self.low = np.maximum(safe_low, [ex.x.low, ex.y.low, ex.z.low, ex.yaw.low])
        self.high = np.minimum(safe_high, [ex.x.high, ex.y.high, ex.z.high, ex.yaw.high])
        self.low = np.minimum(self.low, (ws_mid := (self.low + self.high) / 2))
        self.high = np.maximum(self.high, ws_mid)
        self.scale = self.step_limit * np.array(
            [cfg.noise_scale, cfg.noise_scale, cfg.z_scale, cfg.yaw_scale]
        )
        self._noise = np.zeros(4)
        self._gripper = -1.0
        self.mode = "random"
        self._phase = "explore"
        self._target_name: str | None = None
        self._direction = np.zeros(2)
        self._push_goal = np.zeros(3)
        self._phase_steps = 0
        self._pushes_left = 0

    def reset(self, pose: np.ndarray, objects: Objects | None = None) -> None:
        """Start an episode at ``pose``; with ``objects`` known, maybe plan a push (``cfg.object_bias``)."""
        self._noise = self.rng.normal(size=4) * self.scale
        self._gripper = float(np.sign(pose[4]) or -1.0)
        self._phase_steps = 0
        self.mode, self._phase, self._target_name = "random", "explore", None
        self._pushes_left = 0
        if objects and self.rng.random() < self.cfg.object_bias:
            self.mode, self._pushes_left = "push", self.cfg.pushes_per_episode
            self._start_push(objects)

    def _start_push(self, objects: Objects) -> None:
        """Pick an object and a direction at random and start approaching the point behind it."""
        names = sorted(objects)
        self._target_name = names[int(self.rng.integers(len(names)))]
        angle = self.rng.uniform(-np.pi, np.pi)
        self._direction = np.array([np.cos(angle), np.sin(angle)])
        self._phase, self._phase_steps = "approach", 0
        self._pushes_left -= 1

    def _correlated_noise(self) -> np.ndarray:
        rho = self.cfg.noise_correlation
        self._noise = rho * self._noise + np.sqrt(1 - rho**2) * self.rng.normal(size=4) * self.scale
        return self._noise

    def _gripper_event(self) -> float:
        if self.rng.random() < self.cfg.gripper_toggle_prob:
            self._gripper = -self._gripper
        return self._gripper

    def _toward(self, pose: np.ndarray, target_xyz: np.ndarray, gain: float) -> np.ndarray:
        delta = (target_xyz - pose[:3]) * gain
        return np.clip(delta, -self.step_limit[:3], self.step_limit[:3])

    def _approach_point(self, objects: Objects) -> np.ndarray:
        centre = np.asarray(objects[self._target_name], dtype=np.float64)
        xy = centre[:2] - self._direction * self.cfg.approach_offset_m
        return np.array([xy[0], xy[1], self.cfg.approach_height_m])

    def act(self, pose: np.ndarray, objects: Objects | None = None) -> np.ndarray:
        pose = np.asarray(pose, dtype=np.float64)
        noise = self._correlated_noise()
        action = np.zeros(ACTION_DIM)
        self._phase_steps += 1
        if self._phase == "approach" and objects and self._target_name in objects:
            target = self._approach_point(objects)
            # Come down last, so the fingers do not land on the object on the way in.
            far = np.linalg.norm(target[:2] - pose[:2]) > 0.03
            if far:
                target[2] = max(target[2], min(pose[2], self.high[2]))
            action[:3] = self._toward(pose, target, self.cfg.approach_gain) + 0.15 * noise[:3]
            action[3] = 0.3 * noise[3]
            if np.linalg.norm(target - pose[:3]) < 0.015 or self._phase_steps > 15:
                centre = np.asarray(objects[self._target_name], dtype=np.float64)
                xy = centre[:2] + self._direction * self.cfg.push_distance_m
                self._push_goal = np.array([xy[0], xy[1], self.cfg.approach_height_m])
                self._phase, self._phase_steps = "push", 0
            action[4] = self._gripper_event()
        elif self._phase == "push":
            action[:3] = self._toward(pose, self._push_goal, 1.0) * 0.6 + 0.15 * noise[:3]
            action[3] = 0.3 * noise[3]
            if np.linalg.norm(self._push_goal[:2] - pose[:2]) < 0.02 or self._phase_steps > 12:
                self._phase = "explore"
                if objects and self._pushes_left > 0:
                    self._start_push(objects)
            action[4] = self._gripper_event()
        else:
            action[:4] = noise
            action[4] = self._gripper_event()
        return self._keep_inside(pose, action)

    def _keep_inside(self, pose: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Clip to the step limits and reflect motion (and its noise) that would leave the box."""
        action[:4] = np.clip(action[:4], -self.step_limit, self.step_limit)
        nxt = pose[:4] + action[:4]
        out = (nxt < self.low) | (nxt > self.high)
        if out.any():
            action[:4] = np.where(
                out, np.clip(-action[:4], self.low - pose[:4], self.high - pose[:4]), action[:4]
            )
            action[:4] = np.clip(action[:4], -self.step_limit, self.step_limit)
            self._noise = np.where(out, -self._noise, self._noise)
        return action
