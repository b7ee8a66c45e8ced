"""calibrate-workspace: corners entered or recorded through a real arm server, and the server enforcing them."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from maskvit_mpc.calibration.workspace import WorkspaceError, bounds_from_points, jog_session, main
from maskvit_mpc.configs.schema import BridgeConfig, SafetyConfig, WorkspaceBounds
from maskvit_mpc.robot.backends import DryBackend
from maskvit_mpc.robot.calibration_files import CalibrationFileError, load_workspace
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.server import READY_MARKER, ArmServer


@pytest.fixture
def dry_server():
    """A dry arm server on a free loopback port with a generous box, as one would start for calibration."""
    safety = SafetyConfig(
        workspace=WorkspaceBounds(
            x={"low": -0.6, "high": 0.6}, y={"low": -0.6, "high": 0.6}, z={"low": 0.0, "high": 0.6}
        )
    )
    bridge = BridgeConfig(
        command_port=0, camera_port=0, request_timeout_s=2.0, retries=1, client_heartbeat=False
    )
    backend = DryBackend(safety, image_size=16)
    with ArmServer(backend, safety, bridge).running() as endpoints:
        yield bridge.model_copy(update={"command_port": int(endpoints.command.rsplit(":", 1)[1])}), backend


def test_jogging_records_the_poses_the_arm_reached(dry_server):
    bridge, backend = dry_server
    start = backend.pose()[:3].copy()
    commands = [
        "x+ 0.12",
        "y- 0.07",
        "r",
        "z+",
        "r",
        "bogus",
        "x- 0.30",
        "y+ 0.2",
        "r",
        "u",
        "y+ 0.01",
        "r",
        "p",
        "d",
    ]
    out = io.StringIO()
    with ZmqArm(bridge) as arm:
        points = jog_session(arm, commands, out, step_m=0.03, max_step_m=0.05)
    expected = [
        start + [0.12, -0.07, 0.0],
        start + [0.12, -0.07, 0.03],
        start + [-0.18, 0.14, 0.03],  # the point recorded before it was undone
    ]
    np.testing.assert_allclose(points, expected, atol=1e-9)
    text = out.getvalue()
    assert "commands: x+ x- y+ y- z+ z-" in text and "dropped the last point" in text


def test_quitting_records_nothing(dry_server):
    bridge, _ = dry_server
    with ZmqArm(bridge) as arm:
        assert jog_session(arm, ["x+", "r", "q"], io.StringIO()) is None


def test_record_mode_writes_the_box_the_server_then_enforces(dry_server, tmp_path, monkeypatch, capsys):
    bridge, backend = dry_server
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("x+ 0.1\ny+ 0.1\nz- 0.1\nr\nx- 0.3\ny- 0.3\nz+ 0.2\nr\nd\n")
    )
    out = tmp_path / "workspace.yaml"
    args = [
        "--record",
        "--margin",
        "0.01",
        "--out",
        str(out),
        "--set",
        f"bridge.command_port={bridge.command_port}",
    ]
    assert main(args) == 0
    assert "written" in capsys.readouterr().out
    ws = load_workspace(out)
    home = DryBackend(SafetyConfig(workspace=WorkspaceBounds(z={"low": 0.0, "high": 0.6}))).home
    assert ws.source == "recorded" and ws.margin_m == 0.01 and len(ws.points_m) == 2
    assert ws.workspace.x.low == pytest.approx(home[0] - 0.2 + 0.01)
    assert ws.workspace.x.high == pytest.approx(home[0] + 0.1 - 0.01)
    assert ws.workspace.z.low == pytest.approx(home[2] - 0.1 + 0.01)
    assert ws.workspace.z.high == pytest.approx(home[2] + 0.1 - 0.01)

    # arm-server --workspace-file: the real command, in its own process, enforces the recorded box
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maskvit_mpc.robot.server",
            "--backend",
            "dry",
            "--port",
            "0",
            "--camera-port",
            "0",
        ]
        + ["--workspace-file", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY_MARKER), line
        port = int(json.loads(line[len(READY_MARKER) :])["command"].rsplit(":", 1)[1])
        with ZmqArm(BridgeConfig(command_port=port, client_heartbeat=False)) as arm:
            served = arm.server_info["workspace"]
            applied = arm.send_action(np.array([0.05, 0.05, 0.05, 0.0, -1.0]))
            applied = arm.send_action(np.array([0.05, 0.05, 0.05, 0.0, -1.0]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert served["x"] == pytest.approx([ws.workspace.x.low, ws.workspace.x.high])
    assert served["z"] == pytest.approx([ws.workspace.z.low, ws.workspace.z.high])
    assert applied.state.pose[0] <= ws.workspace.x.high + 1e-9 and applied.clipped


def test_entered_corners_make_a_box(tmp_path, capsys):
    out = tmp_path / "ws.yaml"
    args = ["--corner", "0.25", "-0.20", "0.02", "--corner", "0.55", "0.20", "0.05", "--z", "0.02", "0.30"]
    assert main([*args, "--out", str(out)]) == 0
    ws = load_workspace(out)
    assert ws.source == "entered"
    assert (ws.workspace.x.low, ws.workspace.x.high) == (0.25, 0.55)
    assert (ws.workspace.y.low, ws.workspace.y.high) == (-0.2, 0.2)
    assert (ws.workspace.z.low, ws.workspace.z.high) == (0.02, 0.30)
    assert ws.workspace.yaw == WorkspaceBounds().yaw  # from the config: corners say nothing about it


def test_flat_corners_are_refused_with_a_hint(tmp_path, capsys):
    args = [
        "--corner",
        "0.25",
        "-0.2",
        "0.02",
        "--corner",
        "0.55",
        "0.2",
        "0.02",
        "--out",
        str(tmp_path / "w.yaml"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "span 0.0 cm in z" in err and "--z LOW HIGH" in err
    assert not (tmp_path / "w.yaml").exists()


def test_a_margin_that_eats_the_box_is_refused():
    with pytest.raises(WorkspaceError, match="span -2.0 cm in x"):
        bounds_from_points([[0.0, 0.0, 0.0], [0.1, 0.3, 0.3]], margin_m=0.06)
    with pytest.raises(WorkspaceError, match="at least 2 corners"):
        bounds_from_points([[0.0, 0.0, 0.0]])


def test_workspace_files_are_validated_when_loaded(tmp_path):
    bad = {
        "kind": "workspace_bounds",
        "id": "w",
        "source": "entered",
        "workspace": {"x": {"low": 0.5, "high": 0.2}},
    }
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(
        CalibrationFileError, match=r"workspace.x: Value error, low \(0.5\) must not exceed high"
    ):
        load_workspace(tmp_path / "w.yaml")


def test_arm_server_refuses_a_bad_workspace_file(tmp_path):
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"kind": "camera_intrinsics"}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskvit_mpc.robot.server",
            "--backend",
            "dry",
            "--workspace-file",
            str(tmp_path / "w.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "holds kind 'camera_intrinsics', expected 'workspace_bounds'" in result.stderr
