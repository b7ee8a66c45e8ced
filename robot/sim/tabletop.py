"""The MuJoCo tabletop simulator: a floating parallel gripper driven by 5-D end-effector deltas.

The gripper hangs on slide joints x, y, z and a hinge about z; position servos track a target pose,
so the gripper pushes objects through real contacts and stalls against them like a compliant arm.
Each control step moves the servo targets by the (clipped) action along a straight ramp during the
first three quarters of the control period and holds them for the last quarter, so the gripper moves
at most 0.33 m/s (objects are pushed, not kicked) and the frame after a step shows the step's whole
motion (the gripper settles within a millimetre of its target), as a real arm's controller would.

State: everything that changes during an episode lives in MuJoCo's integration state (time, joint
positions and velocities, servo targets, solver warm start), saved with ``mj_getState``. The servo
targets are the controller's only memory, so ``get_state``/``set_state`` capture the whole simulator:
the same state and the same actions give the same frames bit for bit, in this or another process
built from the same :class:`SimConfig`.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Mapping, Sequence

import mujoco
import numpy as np

from ...configs.errors import UserError
from ...configs.schema import SafetyConfig, SimConfig
from ..types import ACTION_DIM
from .rendering import OffscreenRenderer
from .scene import (
    CAMERA_NAME,
    FINGER_TRAVEL,
    OBJECT_HALF_HEIGHT,
    ObjectSpec,
    build_mjcf,
    object_specs,
)

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
_STATE_MAGIC = b"TTS1"
_HEADER = struct.Struct("<4sII")  # magic, model fingerprint, number of float64 values

SEG_BACKGROUND = 0
SEG_GRIPPER = 1
SEG_FIRST_OBJECT = 2

# Region of the table that the default camera sees with margin; resets place everything inside it.
VIEW_HALF_EXTENT = 0.17
# Share of the control period over which the servo target ramps; the rest lets the gripper settle.
# A fast ramp (half the period) moved the gripper at 0.6 m/s and kicked pushed objects ~3 cm ahead.
_RAMP_FRACTION = 0.75


class SimError(UserError, ValueError):
    """A bad action or state handed to the simulator; the message says what was expected."""


def gripper_command_to_opening(command: float) -> float:
    """Finger travel (m, per finger) for a gripper command in [-1, 1] (-1 open, +1 closed)."""
    return FINGER_TRAVEL * (1.0 - float(np.clip(command, -1.0, 1.0))) / 2.0


def sample_object_xy(
    rng: np.random.Generator,
    specs: Sequence[ObjectSpec],
    half_extent: float = VIEW_HALF_EXTENT,
    placed: Mapping[str, np.ndarray] | None = None,
    keep_out: Sequence[tuple[np.ndarray, np.ndarray, float]] = (),
    clearance: float = 0.015,
) -> dict[str, np.ndarray]:
    """Table-plane positions (m) for ``specs`` that overlap neither each other nor ``placed``.

    ``placed`` maps names of objects already positioned to their xy (their specs must be in ``specs``);
    ``keep_out`` lists segments (a, b, radius) no new object centre may come within radius + its own
    radius of. Raises :class:`SimError` when no layout is found (table too crowded).
    """
    by_name = {s.name: s for s in specs}
    out = {k: np.asarray(v, dtype=np.float64) for k, v in (placed or {}).items()}
    for spec in specs:
        if spec.name in out:
            continue
        for _ in range(2000):
            xy = rng.uniform(-half_extent, half_extent, size=2)
            if all(
                np.linalg.norm(xy - other) >= spec.radius + by_name[name].radius + clearance
                for name, other in out.items()
            ) and all(_segment_distance(xy, a, b) >= r + spec.radius for a, b, r in keep_out):
                out[spec.name] = xy
                break
        else:
            raise SimError(
                f"could not place {spec.name!r} without overlaps; use fewer objects (sim.num_objects)"
            )
    return {s.name: out[s.name] for s in specs if s.name in out}


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


class TabletopSim:
    """A tabletop with a floating gripper and coloured objects, rendered from a fixed camera.

    Actions are ``(dx, dy, dz, dyaw, gripper)``: metres and radians in the world (robot base) frame,
    gripper an absolute command in [-1, 1]. They are clipped to ``safety.step_limits`` and the servo
    target to ``safety.workspace`` (the arm server clips first; the sim clips again so it is safe on
    its own). Use one instance from one thread at a time.
    """

    def __init__(self, sim: SimConfig, safety: SafetyConfig | None = None) -> None:
        self.config = sim
        self.safety = safety if safety is not None else SafetyConfig()
        self._specs = object_specs(sim)
        self.object_names: tuple[str, ...] = tuple(s.name for s in self._specs)
        self._model = mujoco.MjModel.from_xml_string(build_mjcf(sim))
        self._data = mujoco.MjData(self._model)
        m = self._model
        self._object_qpos = {
            s.name: int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"{s.name}_joint")])
            for s in self._specs
        }
        self._object_body = {
            s.name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, s.name) for s in self._specs
        }
        self._finger_qpos = [
            int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)])
            for n in ("finger_left", "finger_right")
        ]
        ws = self.safety.workspace
        self._ws_low = np.array([ws.x.low, ws.y.low, ws.z.low, ws.yaw.low])
        self._ws_high = np.array([ws.x.high, ws.y.high, ws.z.high, ws.yaw.high])
        lim = self.safety.step_limits
        self._step_limit = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw])
        self._state_size = mujoco.mj_stateSize(m, _STATE_SPEC)
        # The state layout, not the physics constants, is what a saved state must match.
        layout = f"{m.nq},{m.nv},{m.nu},{m.na},{','.join(self.object_names)}"
        self._fingerprint = zlib.crc32(layout.encode())
        self._geom_label = self._segmentation_labels()
        self._renderer: OffscreenRenderer | None = None
        self.reset(0)

    # --- scene setup ------------------------------------------------------------------------------

    def _segmentation_labels(self) -> np.ndarray:
        """Label per model geom (+1 slot for "no geom" at index -1): 0 table, 1 gripper, 2.. objects."""
        m = self._model
        labels = np.full(m.ngeom + 1, SEG_BACKGROUND, dtype=np.int32)
        gripper_root = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper")
        object_label = {body: SEG_FIRST_OBJECT + i for i, body in enumerate(self._object_body.values())}
        for g in range(m.ngeom):
            body = int(m.geom_bodyid[g])
            if int(m.body_rootid[body]) == gripper_root:
                labels[g] = SEG_GRIPPER
            elif body in object_label:
                labels[g] = object_label[body]
        return labels

    def place(
        self,
        ee_pose: Sequence[float],
        objects: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Put the scene at rest in a chosen configuration (time 0, zero velocities).

        ``ee_pose``: (x, y, z, yaw, gripper), also the new servo target; it may lie outside the
        workspace (tasks park the gripper out of view), and steps then move it back at the step limits.
        ``objects``: name -> (x, y, yaw) on the table; objects not named keep their pose.
        """
        pose = np.asarray(ee_pose, dtype=np.float64)
        if pose.shape != (5,) or not np.all(np.isfinite(pose)):
            raise SimError(f"ee_pose must be 5 finite numbers (x, y, z, yaw, gripper), got {ee_pose!r}")
        d = self._data
        for name, xyyaw in (objects or {}).items():
            if name not in self._object_qpos:
                raise SimError(f"unknown object {name!r}; objects: {', '.join(self.object_names)}")
            x, y, yaw = (float(v) for v in xyyaw)
            a = self._object_qpos[name]
            d.qpos[a : a + 3] = (x, y, OBJECT_HALF_HEIGHT)
            d.qpos[a + 3 : a + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        opening = gripper_command_to_opening(pose[4])
        d.qpos[:4] = pose[:4]
        d.qpos[self._finger_qpos] = opening
        d.qvel[:] = 0.0
        d.qacc_warmstart[:] = 0.0
        d.ctrl[:4] = pose[:4]
        d.ctrl[4:6] = opening
        d.time = 0.0
        mujoco.mj_forward(self._model, d)

    def reset(self, seed: int) -> None:
        """A random scene: objects apart inside the camera view, the gripper above them."""
        rng = np.random.default_rng(seed)
        xy = sample_object_xy(rng, self._specs)
        objects = {name: (*xy[name], rng.uniform(-np.pi, np.pi)) for name in self.object_names}
        gripper_xy = rng.uniform(-0.12, 0.12, size=2)
        pose = (*gripper_xy, rng.uniform(0.08, 0.15), rng.uniform(-1.0, 1.0), rng.choice([-1.0, 1.0]))
        self.place(pose, objects)

    # --- control ----------------------------------------------------------------------------------

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """The action this simulator would apply now: step limits, then the workspace box."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise SimError(
                f"action must be {ACTION_DIM} finite numbers (dx, dy, dz, dyaw, gripper), got {action!r}"
            )
        old = self._data.ctrl[:4].copy()
        delta = np.clip(a[:4], -self._step_limit, self._step_limit)
        # A target already outside the box (a parked gripper) may come back but not go further out.
        new = np.clip(old + delta, np.minimum(self._ws_low, old), np.maximum(self._ws_high, old))
        ws_g = self.safety.workspace.gripper
        grip = float(np.clip(a[4], max(ws_g.low, -1.0), min(ws_g.high, 1.0)))
        return np.concatenate([new - old, [grip]])

    def step(self, action: np.ndarray) -> np.ndarray:
        """One control period; returns the applied (clipped) action, shape (5,), float64."""
        applied = self.clip_action(action)
        m, d = self._model, self._data
        start = d.ctrl[:4].copy()
        target = start + applied[:4]
        d.ctrl[4:6] = gripper_command_to_opening(applied[4])
        # Ramp the target one physics step at a time: a staircase of targets would make the servo
        # kick objects ahead of the fingers instead of pushing them.
        ramp = max(1, round(self.config.substeps * _RAMP_FRACTION))
        for i in range(1, ramp + 1):
            d.ctrl[:4] = start + applied[:4] * (i / ramp)
            mujoco.mj_step(m, d)
        d.ctrl[:4] = target
        if self.config.substeps > ramp:
            mujoco.mj_step(m, d, nstep=self.config.substeps - ramp)
        # Derived quantities (body poses for rendering) must match the state just reached.
        mujoco.mj_forward(m, d)
        return applied

    # --- observation ------------------------------------------------------------------------------

    def _get_renderer(self) -> OffscreenRenderer:
        if self._renderer is None:
            cfg = self.config
            self._renderer = OffscreenRenderer(
                self._model,
                cfg.image_size,
                CAMERA_NAME,
                backend=cfg.render_backend,
                shadows=cfg.shadows,
                multisamples=cfg.multisamples,
            )
        return self._renderer

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def render_backend(self) -> str:
        """The OpenGL backend in use ("egl" or "osmesa"); starts the renderer if needed."""
        return self._get_renderer().backend

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 RGB from the fixed table camera, S = ``SimConfig.image_size``."""
        return self._get_renderer().render(self._data)

    def render_segmentation(self) -> np.ndarray:
        """(S, S) int32 labels: 0 table/background, 1 gripper, 2 + i the i-th of ``object_names``."""
        geom_ids = self._get_renderer().render_geom_ids(self._data)
        return self._geom_label[geom_ids]

    def ee_pose(self) -> np.ndarray:
        """(5,) float64 measured pose: x, y, z (m, tool centre point), yaw (rad), gripper in [-1, 1]."""
        q = self._data.qpos
        opening = float(np.mean(q[self._finger_qpos]))
        grip = float(np.clip(1.0 - 2.0 * opening / FINGER_TRAVEL, -1.0, 1.0))
        return np.array([q[0], q[1], q[2], q[3], grip])

    def target_pose(self) -> np.ndarray:
        """(5,) float64 servo target: where the controller is driving the gripper."""
        c = self._data.ctrl
        return np.array([c[0], c[1], c[2], c[3], 1.0 - 2.0 * float(c[4]) / FINGER_TRAVEL])

    def object_positions(self) -> dict[str, np.ndarray]:
        """Object centre positions (x, y, z), metres, world frame, in ``object_names`` order."""
        q = self._data.qpos
        return {name: q[a : a + 3].copy() for name, a in self._object_qpos.items()}

    def object_yaws(self) -> dict[str, float]:
        """Object heading about the vertical (rad), from each free joint's quaternion."""
        out = {}
        for name, a in self._object_qpos.items():
            w, x, y, z = self._data.qpos[a + 3 : a + 7]
            out[name] = float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        return out

    @property
    def time(self) -> float:
        """Simulated seconds since the last reset/place."""
        return float(self._data.time)

    # --- state ------------------------------------------------------------------------------------

    def get_state(self) -> bytes:
        """The full simulator state as bytes (a few hundred bytes: fits any bridge message)."""
        values = np.empty(self._state_size, dtype=np.float64)
        mujoco.mj_getState(self._model, self._data, values, _STATE_SPEC)
        return _HEADER.pack(_STATE_MAGIC, self._fingerprint, values.size) + values.tobytes()

    def set_state(self, state: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Restore a state from :meth:`get_state` of a simulator built with an equal ``SimConfig``."""
        raw = state.tobytes() if isinstance(state, np.ndarray) else bytes(state)
        if len(raw) < _HEADER.size:
            raise SimError(f"not a simulator state: {len(raw)} bytes")
        magic, fingerprint, n = _HEADER.unpack_from(raw)
        if magic != _STATE_MAGIC:
            raise SimError("not a simulator state (bad header); states come from TabletopSim.get_state()")
        if fingerprint != self._fingerprint or n != self._state_size:
            raise SimError(
                "this state was saved by a simulator with a different scene (e.g. sim.num_objects); "
                "restore it into a TabletopSim built with the same SimConfig"
            )
        if len(raw) != _HEADER.size + 8 * n:
            raise SimError(f"truncated simulator state: {len(raw)} bytes, expected {_HEADER.size + 8 * n}")
        values = np.frombuffer(raw, dtype=np.float64, offset=_HEADER.size)
        mujoco.mj_setState(self._model, self._data, values, _STATE_SPEC)
        mujoco.mj_forward(self._model, self._data)

    def clone(self) -> TabletopSim:
        """A private copy in the same state (e.g. an oracle predictor's), with its own renderer."""
        other = TabletopSim(self.config, self.safety)
        other.set_state(self.get_state())
        return other

    def close(self) -> None:
        """Free the GL context. Safe to call twice; the physics stays usable (rendering restarts)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self) -> None:
        # Free the GL context while its library is still loaded; never raise from a finaliser.
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> TabletopSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
