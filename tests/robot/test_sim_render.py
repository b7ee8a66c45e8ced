"""Render-backend selection: EGL, OSMesa fallback, a user's MUJOCO_GL, and errors naming the packages."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.configs.schema import SimConfig
from maskvit_mpc.robot.sim import RenderBackendError, TabletopSim, rendering


@pytest.fixture
def fresh_process(monkeypatch):
    """As if no renderer had started in this process and the user set no GL variables."""
    monkeypatch.setattr(rendering, "_process_backend", None)
    monkeypatch.setattr(rendering, "_egl_failure", None)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)


def _broken(backend: str, width: int, height: int):
    raise ImportError(f"lib{backend}.so: cannot open shared object file")


def test_egl_failure_names_the_egl_packages(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_create_gl_context", _broken)
    with pytest.raises(RenderBackendError) as info:
        TabletopSim(SimConfig(image_size=16, render_backend="egl")).render()
    message = str(info.value)
    assert "libegl1" in message and "libgl1-mesa-dri" in message and "apt-get install" in message
    assert "cannot open shared object file" in message  # the underlying cause is kept
    assert isinstance(info.value, UserError)


def test_osmesa_failure_names_libosmesa6(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_create_gl_context", _broken)
    with pytest.raises(RenderBackendError, match="libosmesa6"):
        TabletopSim(SimConfig(image_size=16, render_backend="osmesa")).render()


def test_auto_with_neither_backend_names_both(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_egl_works_in_child", lambda: (False, "EGL_NOT_INITIALIZED"))
    monkeypatch.setattr(rendering, "_create_gl_context", _broken)
    with pytest.raises(RenderBackendError) as info:
        TabletopSim(SimConfig(image_size=16)).render()
    message = str(info.value)
    for package in ("libegl1", "libgl1-mesa-dri", "libosmesa6"):
        assert package in message
    assert "EGL_NOT_INITIALIZED" in message


def test_auto_prefers_egl_then_osmesa(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_egl_works_in_child", lambda: (True, ""))
    assert rendering.resolve_backend("auto") == "egl"
    monkeypatch.setattr(rendering, "_egl_works_in_child", lambda: (False, "no display"))
    assert rendering.resolve_backend("auto") == "osmesa"


def test_a_user_set_mujoco_gl_is_respected(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_egl_works_in_child", lambda: pytest.fail("must not probe"))
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert rendering.resolve_backend("auto") == "osmesa"
    with pytest.raises(RenderBackendError, match="MUJOCO_GL='osmesa'"):
        rendering.resolve_backend("egl")
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    with pytest.raises(RenderBackendError, match="cannot render off-screen"):
        rendering.resolve_backend("auto")


def test_a_process_cannot_switch_backends(fresh_process, monkeypatch):
    monkeypatch.setattr(rendering, "_process_backend", "egl")
    assert rendering.resolve_backend("auto") == "egl"
    with pytest.raises(RenderBackendError, match="cannot switch"):
        rendering.resolve_backend("osmesa")


def test_the_renderer_starts_for_real_here():
    sim = TabletopSim(SimConfig(image_size=16))
    assert sim.render().shape == (16, 16, 3)
    assert sim.render_backend in ("egl", "osmesa")
    sim.close()
    sim.close()  # idempotent
    assert sim.render().shape == (16, 16, 3)  # rendering restarts after close


_RENDER_ONE = (
    "from maskvit_mpc.configs.schema import SimConfig\n"
    "from maskvit_mpc.robot.sim import TabletopSim\n"
    "s = TabletopSim(SimConfig(image_size=16))\n"
    "assert s.render().shape == (16, 16, 3)\n"
    "print(s.render_backend)\n"
)


@pytest.mark.skipif(ctypes.util.find_library("OSMesa") is None, reason="libosmesa6 not installed")
def test_auto_falls_back_to_osmesa_when_egl_is_broken():
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = "/nonexistent/egl_vendor.json"  # glvnd finds no EGL driver
    out = subprocess.run(
        [sys.executable, "-c", _RENDER_ONE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "osmesa"
