"""Off-screen rendering of a MuJoCo model through EGL, with OSMesa as the fallback.

MuJoCo's own ``mujoco.Renderer`` picks its OpenGL platform once, from ``MUJOCO_GL``, when ``mujoco`` is
first imported, and PyOpenGL likewise locks ``PYOPENGL_PLATFORM`` on its first import. A library cannot
control who imports ``mujoco`` first, so this module does not rely on that choice: it resolves the
backend itself (config ``render_backend``, then a user-set ``MUJOCO_GL``, then EGL probed in a child
process, then OSMesa), creates that platform's GL context directly, and draws with the low-level
``mjv_*``/``mjr_*`` calls. The resolved name is written back to ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM``
so that child processes (data-collection workers, the oracle) agree without probing again.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import Literal

import mujoco
import numpy as np

from ...configs.errors import UserError

Backend = Literal["egl", "osmesa"]

_PACKAGES: dict[str, str] = {"egl": "libegl1 libgl1-mesa-dri", "osmesa": "libosmesa6"}
_HEADLESS = ("egl", "osmesa")
# The backend this process committed to. PyOpenGL cannot switch platforms once it has loaded one,
# so every renderer in a process must use the same backend.
_process_backend: str | None = None
_egl_failure: str | None = None  # why EGL failed when auto mode fell back to OSMesa

# Runs the exact code path the renderer uses, so "the probe passed" means "rendering will work".
_PROBE = (
    "import mujoco\n"
    "from mujoco.egl import GLContext\n"
    "c = GLContext(16, 16)\n"
    "c.make_current()\n"
    "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody></mujoco>')\n"
    "mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)\n"
)


class RenderBackendError(UserError, RuntimeError):
    """No off-screen OpenGL backend could be started; the message names the Debian packages to install."""


def _install_hint(backends: tuple[str, ...]) -> str:
    parts = [f"{b.upper()}: sudo apt-get install -y {_PACKAGES[b]}" for b in backends]
    return "install the system libraries for off-screen rendering (" + "; or ".join(parts) + ")"


def _egl_works_in_child() -> tuple[bool, str]:
    """Try EGL in a child process: a failed EGL start would lock PyOpenGL in this one."""
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"probe did not run: {exc}"
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit status {proc.returncode}"


def resolve_backend(requested: Literal["auto", "egl", "osmesa"] = "auto") -> Backend:
    """The backend to use for ``SimConfig.render_backend``; raises :class:`RenderBackendError`.

    ``auto`` respects a user-set ``MUJOCO_GL`` (egl or osmesa only; anything else cannot render
    off-screen), then a set ``PYOPENGL_PLATFORM``, otherwise EGL if a child process can start it,
    else OSMesa. Once a process has rendered, it keeps its backend.
    """
    env_gl = os.environ.get("MUJOCO_GL", "").strip().lower()
    if _process_backend is not None:
        if requested not in ("auto", _process_backend):
            raise RenderBackendError(
                f"render_backend {requested!r} requested, but this process already renders with "
                f"{_process_backend!r} and OpenGL cannot switch platforms within a process; "
                f"use sim.render_backend=auto or {_process_backend}, or a separate process"
            )
        return _process_backend  # type: ignore[return-value]
    if requested != "auto":
        if env_gl and env_gl != requested:
            raise RenderBackendError(
                f"sim.render_backend is {requested!r} but the environment sets MUJOCO_GL={env_gl!r}; "
                f"unset MUJOCO_GL, set it to {requested!r}, or use sim.render_backend=auto"
            )
        return requested
    if env_gl:
        if env_gl not in _HEADLESS:
            raise RenderBackendError(
                f"MUJOCO_GL={env_gl!r} cannot render off-screen; set MUJOCO_GL=egl or MUJOCO_GL=osmesa, "
                "or unset it to let the simulator choose"
            )
        return env_gl  # type: ignore[return-value]
    platform = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if platform in _HEADLESS:
        # PyOpenGL is (or will be) locked to this platform; the other one cannot load here.
        return platform  # type: ignore[return-value]
    global _egl_failure
    ok, reason = _egl_works_in_child()
    if ok:
        return "egl"
    _egl_failure = reason
    return "osmesa"


def _create_gl_context(backend: str, width: int, height: int):
    """Import the platform module and create a GL context (raises whatever the platform raises)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    module = importlib.import_module(f"mujoco.{backend}")
    return module.GLContext(width, height)


def open_gl_context(requested: Literal["auto", "egl", "osmesa"], width: int, height: int):
    """``(context, backend)``: a GL context of the resolved backend; raises :class:`RenderBackendError`."""
    global _process_backend
    backend = resolve_backend(requested)
    try:
        context = _create_gl_context(backend, width, height)
    except Exception as exc:  # noqa: BLE001 - whatever the GL platform raises, the fix is the same
        failures = [f"{backend.upper()} failed: {type(exc).__name__}: {exc}"]
        tried: tuple[str, ...] = (backend,)
        if backend == "osmesa" and _egl_failure is not None:
            # Auto mode came here because EGL failed first: name both ways out.
            failures.insert(0, f"EGL failed: {_egl_failure}")
            tried = ("egl", "osmesa")
        raise RenderBackendError(
            "no off-screen OpenGL backend works (" + "; ".join(failures) + "); " + _install_hint(tried)
        ) from exc
    _process_backend = backend
    os.environ.setdefault("MUJOCO_GL", backend)
    return context, backend


class OffscreenRenderer:
    """Renders one fixed camera of one model into square RGB or segmentation images.

    One instance per simulator, reused for every frame. The GL context is made current only for the
    duration of a render, so a simulator may be created in one thread and used from another.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        size: int,
        camera: str,
        backend: Literal["auto", "egl", "osmesa"] = "auto",
        shadows: bool = False,
        multisamples: int = 4,
    ) -> None:
        # The off-screen framebuffer is sized from the model; keep it no larger than the image so a
        # 64x64 render does not clear a 256x256 buffer.
        model.vis.global_.offwidth = size
        model.vis.global_.offheight = size
        model.vis.quality.offsamples = multisamples
        self._model = model
        self._size = size
        self._gl, self.backend = open_gl_context(backend, size, size)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self._camera.fixedcamid < 0:
            raise RenderBackendError(f"camera {camera!r} is not in the model")
        self._option = mujoco.MjvOption()
        self._scene = mujoco.MjvScene(model, maxgeom=max(64, 2 * model.ngeom))
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self._rect = mujoco.MjrRect(0, 0, size, size)
        with self._gl.as_current():
            self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._rgb = np.empty((size, size, 3), dtype=np.uint8)

    @property
    def size(self) -> int:
        return self._size

    def _draw(self, data: mujoco.MjData, segmentation: bool) -> np.ndarray:
        if self._context is None:
            raise RenderBackendError("render called after close()")
        mujoco.mjv_updateScene(
            self._model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = segmentation
        self._scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = segmentation
        with self._gl.as_current():
            mujoco.mjr_render(self._rect, self._scene, self._context)
            mujoco.mjr_readPixels(self._rgb, None, self._rect, self._context)
        return self._rgb[::-1]  # OpenGL's first row is the bottom of the image

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """(S, S, 3) uint8 RGB from the fixed camera; a new array each call."""
        return np.ascontiguousarray(self._draw(data, segmentation=False))

    def render_geom_ids(self, data: mujoco.MjData) -> np.ndarray:
        """(S, S) int32: the model geom id seen at each pixel, -1 where no geom is."""
        rgb = self._draw(data, segmentation=True).astype(np.int32)
        segid = rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)  # 0: nothing, else scene index + 1
        lookup = np.full(self._scene.ngeom + 1, -1, dtype=np.int32)
        for i in range(self._scene.ngeom):
            geom = self._scene.geoms[i]
            if geom.segid >= 0 and geom.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lookup[geom.segid + 1] = geom.objid
        return lookup[np.clip(segid, 0, self._scene.ngeom)]

    def close(self) -> None:
        if self._context is not None:
            with self._gl.as_current():
                self._context.free()
            self._context = None
            self._gl.free()
