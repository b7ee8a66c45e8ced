"""The tabletop scene as MJCF, built from :class:`SimConfig` alone.

Frames and units: the world frame is the robot base frame; the table top is the plane z = 0; x points
right and y away from the camera; metres and radians. The gripper's reference point (its "tool centre
point") is the centre of the fingertips' lower edge, so the workspace floor z >= 0.02 keeps the fingers
off the table.

The model never depends on a seed: every per-episode choice (where objects and the gripper start) is
state, so ``(SimConfig, state)`` reproduces a scene in any process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...configs.schema import SimConfig

CAMERA_NAME = "table_cam"
# About 72 degrees below the horizon, looking away from the robot's front: the view covers the table
# for y in [-0.30, 0.32] m (x within +-0.26 m at the near edge). A steep view matters for pixel costs:
# from 48 degrees, a gripper 5 cm higher looked like one 4.4 cm farther, and an oracle planner reached
# for the wrong place; from 72 degrees that shift is 1.6 cm.
CAMERA_POS = np.array([0.0, -0.27, 0.72])
CAMERA_TARGET = np.array([0.0, -0.03, 0.0])
CAMERA_FOVY_DEG = 42.0

FINGER_HALF = (0.009, 0.009, 0.0225)  # finger box half sizes (m); its lower face is the TCP height
FINGER_TRAVEL = 0.035  # each finger slides this far from closed (touching) to fully open (m)
OBJECT_HALF_HEIGHT = 0.02  # 4 cm tall: wide for its height, so pushes slide it rather than tip it


@dataclass(frozen=True)
class ObjectSpec:
    """One coloured object on the table."""

    name: str
    shape: str  # "box" (half width, half height) or "cylinder" (radius, half height)
    rgba: tuple[float, float, float, float]
    half_width: float = 0.028  # about 6 cm wide: about 7 pixels at 64x64 from the default camera
    mass: float = 0.15  # kg

    @property
    def radius(self) -> float:
        """Horizontal radius that contains the object (m), for non-overlap checks."""
        return self.half_width * (np.sqrt(2.0) if self.shape == "box" else 1.0)


OBJECT_SPECS: tuple[ObjectSpec, ...] = (
    ObjectSpec("red_block", "box", (0.85, 0.12, 0.10, 1.0)),
    ObjectSpec("green_cylinder", "cylinder", (0.15, 0.70, 0.20, 1.0), half_width=0.03),
    ObjectSpec("blue_block", "box", (0.12, 0.28, 0.90, 1.0)),
    ObjectSpec("yellow_cylinder", "cylinder", (0.95, 0.80, 0.10, 1.0), half_width=0.03),
    ObjectSpec("purple_block", "box", (0.55, 0.20, 0.75, 1.0)),
    ObjectSpec("orange_block", "box", (0.98, 0.50, 0.10, 1.0)),
)

# Collision bits: objects touch everything; the gripper and table touch objects only, so the
# gripper's own parts never collide with each other or with the table.
_TABLE_BITS = 'contype="1" conaffinity="0"'
_GRIPPER_BITS = 'contype="4" conaffinity="0"'
_OBJECT_BITS = 'contype="2" conaffinity="7"'


def object_specs(cfg: SimConfig) -> tuple[ObjectSpec, ...]:
    return OBJECT_SPECS[: cfg.num_objects]


def _camera_axes() -> str:
    forward = CAMERA_TARGET - CAMERA_POS
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.6f}" for v in (*right, *up))


def _object_xml(spec: ObjectSpec) -> str:
    if spec.shape == "box":
        size = f"{spec.half_width} {spec.half_width} {OBJECT_HALF_HEIGHT}"
    else:
        size = f"{spec.half_width} {OBJECT_HALF_HEIGHT}"
    rgba = " ".join(str(c) for c in spec.rgba)
    return (
        f'<body name="{spec.name}" pos="0 0 {OBJECT_HALF_HEIGHT}">'
        f'<freejoint name="{spec.name}_joint"/>'
        f'<geom name="{spec.name}_geom" type="{spec.shape}" size="{size}" rgba="{rgba}" mass="{spec.mass}" '
        f'friction="0.6 0.005 0.0001" {_OBJECT_BITS}/>'
        "</body>"
    )


def gripper_centre(frame: np.ndarray) -> np.ndarray | None:
    """(row, col) centroid of the gripper in a rendered RGB frame, from its dark grey pixels (the table is
    light, the objects saturated); None when fewer than 5 such pixels show. Works on predicted frames
    too, where no segmentation exists."""
    f = np.asarray(frame).astype(np.int16)
    hi, lo = f.max(-1), f.min(-1)
    ys, xs = np.nonzero((hi < 140) & (hi - lo < 30))
    return None if len(ys) < 5 else np.array([ys.mean(), xs.mean()])


def build_mjcf(cfg: SimConfig) -> str:
    """The MJCF text of the scene; depends only on ``cfg``'s physics and object fields."""
    timestep = cfg.control_period_s / cfg.substeps
    fx, fy, fz = FINGER_HALF
    objects = "".join(_object_xml(spec) for spec in object_specs(cfg))
    grey = 'rgba="0.22 0.22 0.25 1"'
    light_grey = 'rgba="0.45 0.45 0.48 1"'
    g = _GRIPPER_BITS
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep:.9g}" integrator="implicitfast"/>
  <visual>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.05 0.05 0.05"/>
    <quality shadowsize="1024"/>
  </visual>
  <worldbody>
    <light name="top" pos="0.1 -0.2 1.5" dir="-0.05 0.15 -1" directional="true"
           diffuse="0.4 0.4 0.4" specular="0.05 0.05 0.05"/>
    <camera name="{CAMERA_NAME}" pos="{CAMERA_POS[0]} {CAMERA_POS[1]} {CAMERA_POS[2]}"
            xyaxes="{_camera_axes()}" fovy="{CAMERA_FOVY_DEG}"/>
    <geom name="table" type="plane" size="0.8 0.8 0.05" pos="0 0 0" rgba="0.78 0.74 0.66 1"
          friction="0.6 0.005 0.0001" {_TABLE_BITS}/>
    <body name="gripper" pos="0 0 0" gravcomp="1">
      <joint name="gripper_x" type="slide" axis="1 0 0" armature="0.1"/>
      <joint name="gripper_y" type="slide" axis="0 1 0" armature="0.1"/>
      <joint name="gripper_z" type="slide" axis="0 0 1" armature="0.1"/>
      <joint name="gripper_yaw" type="hinge" axis="0 0 1" armature="0.005"/>
      <geom name="palm" type="box" size="0.02 0.035 0.01" pos="0 0 {2 * fz + 0.01}" mass="0.5" {grey} {g}/>
      <geom name="wrist" type="cylinder" size="0.02 0.03" pos="0 0 {2 * fz + 0.05}" mass="0.3"
            {grey} {g}/>
      <body name="finger_left" pos="0 {fy} {fz}" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" armature="0.005"/>
        <geom name="finger_left" type="box" size="{fx} {fy} {fz}" mass="0.05" {light_grey} {g}/>
      </body>
      <body name="finger_right" pos="0 {-fy} {fz}" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" armature="0.005"/>
        <geom name="finger_right" type="box" size="{fx} {fy} {fz}" mass="0.05" {light_grey} {g}/>
      </body>
    </body>
    {objects}
  </worldbody>
  <actuator>
    <position name="x" joint="gripper_x" kp="5000" dampratio="1" forcerange="-60 60"/>
    <position name="y" joint="gripper_y" kp="5000" dampratio="1" forcerange="-60 60"/>
    <position name="z" joint="gripper_z" kp="5000" dampratio="1" forcerange="-60 60"/>
    <position name="yaw" joint="gripper_yaw" kp="30" dampratio="1" forcerange="-5 5"/>
    <position name="finger_left" joint="finger_left" kp="300" dampratio="1" forcerange="-15 15"/>
    <position name="finger_right" joint="finger_right" kp="300" dampratio="1" forcerange="-15 15"/>
  </actuator>
</mujoco>
"""
