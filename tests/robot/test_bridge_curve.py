"""CurveZMQ: an authenticated round trip works; unauthenticated and unknown clients get no answer."""

from __future__ import annotations

import numpy as np
import pytest
from bridge_helpers import client_bridge, dry_server, loopback_bridge
from maskvit_mpc.configs.schema import SafetyConfig
from maskvit_mpc.robot import server as server_mod
from maskvit_mpc.robot.arm import ArmTimeout
from maskvit_mpc.robot.backends import DryBackend
from maskvit_mpc.robot.camera import CameraTimeout
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.curve import CurveKeyError, generate_keys
from maskvit_mpc.robot.server import ArmServer
from maskvit_mpc.robot.zmq_camera import ZmqCamera


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("keys") / "lab")


def test_gen_keys_cli_writes_both_pairs_and_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "k"
    assert server_mod.main(["--gen-keys", str(folder)]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "authorized_clients",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert (folder / "authorized_clients" / "client.key").read_text() == (folder / "client.key").read_text()
    assert (folder / "server.key_secret").stat().st_mode & 0o077 == 0  # secrets are private
    assert server_mod.main(["--gen-keys", str(folder)]) == 2  # refuses: would overwrite secrets
    assert "already holds" in capsys.readouterr().err


def test_authenticated_round_trip_and_camera(keys):
    bridge = loopback_bridge(curve_keys_dir=str(keys))
    with dry_server(bridge=bridge) as (_, backend, ep):
        client = client_bridge(ep, curve_keys_dir=str(keys))
        with ZmqArm(client) as arm, ZmqCamera(client) as camera:
            result = arm.send_action(np.array([0.01, 0, 0, 0, 1.0]))
            assert result.seq == 0 and backend.steps == 1
            assert camera.read(timeout_s=5.0, after_command_seq=0).last_command_seq == 0


def test_unauthenticated_client_gets_no_answer(keys):
    with dry_server(bridge=loopback_bridge(curve_keys_dir=str(keys))) as (_, backend, ep):
        plain = ZmqArm(client_bridge(ep, request_timeout_s=0.3, retries=0))  # no keys at all
        with pytest.raises(ArmTimeout):
            plain.connect()
        plain_camera = ZmqCamera(client_bridge(ep))
        with plain_camera, pytest.raises(CameraTimeout, match="no frame"):
            plain_camera.read(timeout_s=0.5)
        assert backend.steps == 0


def test_client_with_unknown_keys_is_refused(keys, tmp_path):
    stranger = generate_keys(tmp_path / "stranger")  # valid CURVE keys, not authorized by the server
    (stranger / "server.key").write_text((keys / "server.key").read_text())  # it even knows the server key
    with dry_server(bridge=loopback_bridge(curve_keys_dir=str(keys))) as (_, backend, ep):
        arm = ZmqArm(client_bridge(ep, curve_keys_dir=str(stranger), request_timeout_s=0.3, retries=0))
        with pytest.raises(ArmTimeout):
            arm.connect()
        assert backend.steps == 0


def test_network_bind_with_keys_is_allowed_and_missing_keys_are_clear(keys, tmp_path):
    safety = SafetyConfig()
    ArmServer(DryBackend(safety), safety, loopback_bridge(host="0.0.0.0", curve_keys_dir=str(keys)))
    server = ArmServer(DryBackend(safety), safety, loopback_bridge(curve_keys_dir=str(tmp_path / "none")))
    with pytest.raises(CurveKeyError, match="gen-keys|authorized_clients"):
        server.start()
    server.close()


def test_incomplete_key_folders_fail_cleanly(keys, tmp_path):
    """A missing key file is a clear error on both sides, and nothing hangs on the way out."""
    partial = tmp_path / "partial"
    (partial / "authorized_clients").mkdir(parents=True)
    safety = SafetyConfig()
    server = ArmServer(DryBackend(safety), safety, loopback_bridge(curve_keys_dir=str(partial)))
    with pytest.raises(CurveKeyError, match="server.key_secret"), server.running():
        pass
    arm = ZmqArm(loopback_bridge(command_port=9, curve_keys_dir=str(partial)))
    with pytest.raises(CurveKeyError, match="client.key_secret"):
        arm.connect()
    camera = ZmqCamera(loopback_bridge(camera_port=9, curve_keys_dir=str(partial)))
    with pytest.raises(CurveKeyError):
        camera.connect()
    camera.disconnect()
