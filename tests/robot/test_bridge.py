"""The arm bridge end to end on real loopback sockets: ZmqArm <-> ArmServer(DryBackend)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from bridge_helpers import RawClient, client_bridge, dry_server, loopback_bridge
from maskvit_mpc.configs.schema import SafetyConfig
from maskvit_mpc.robot import server as server_mod
from maskvit_mpc.robot.arm import ArmError, ArmTimeout, EStopActive
from maskvit_mpc.robot.backends import DryBackend
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.protocol import RemoteError
from maskvit_mpc.robot.safety import ActionLimiter
from maskvit_mpc.robot.server import ArmServer, InsecureBindError


def test_round_trip_reports_applied_action_state_and_times():
    with dry_server() as (_, backend, ep), ZmqArm(client_bridge(ep)) as arm:
        t0 = time.time()
        result = arm.send_action(np.array([0.01, -0.02, 0.005, 0.1, 1.0]))
        assert result.seq == 0
        np.testing.assert_array_equal(result.applied, [0.01, -0.02, 0.005, 0.1, 1.0])
        np.testing.assert_array_equal(result.commanded, result.applied)
        assert not result.clipped
        assert t0 <= result.t_applied <= time.time()
        expected = backend.home + [0.01, -0.02, 0.005, 0.1, 0.0]
        expected[4] = 1.0  # the gripper command is absolute
        np.testing.assert_allclose(result.state.pose, expected)
        assert result.state.last_command_seq == 0
        assert result.state.info == {"steps": 1}
        np.testing.assert_allclose(arm.read_state().pose, result.state.pose)
        assert arm.send_action(np.zeros(5)).seq == 1


def test_clipping_is_reported_back():
    safety = SafetyConfig()
    with dry_server(safety) as (_, _, ep), ZmqArm(client_bridge(ep)) as arm:
        result = arm.send_action(np.array([1.0, -1.0, 0.0, 5.0, 3.0]))
        assert result.clipped
        np.testing.assert_allclose(result.commanded, [1.0, -1.0, 0.0, 5.0, 3.0])
        np.testing.assert_allclose(result.applied, [0.05, -0.05, 0.0, 0.3, 1.0])
        # Walk into the workspace wall: x stops at the box edge and the last step is cut short.
        for _ in range(10):
            result = arm.send_action(np.array([0.05, 0.0, 0.0, 0.0, 0.0]))
        assert result.clipped
        assert result.applied[0] == 0.0
        assert result.state.pose[0] == pytest.approx(safety.workspace.x.high)


def test_new_client_continues_the_servers_sequence_numbers():
    with dry_server() as (_, _, ep):
        bridge = client_bridge(ep)
        with ZmqArm(bridge) as arm:
            for _ in range(3):
                arm.send_action(np.zeros(5))
        with ZmqArm(bridge) as arm:
            assert arm.send_action(np.zeros(5)).seq == 3


def test_watchdog_stops_the_arm_without_heartbeats():
    safety = SafetyConfig(watchdog_timeout_s=0.3)
    with dry_server(safety) as (_, backend, ep), ZmqArm(client_bridge(ep), heartbeat=False) as arm:
        arm.send_action(np.array([0.01, 0, 0, 0, 0]))
        assert not arm.read_state().watchdog_stopped
        time.sleep(1.0)  # > timeout, with margin for a loaded machine
        state = arm.read_state()
        assert state.watchdog_stopped
        assert backend.stops == 1  # fired once, not again and again
        time.sleep(0.5)
        assert backend.stops == 1
        # The next command resumes motion and clears the flag.
        result = arm.send_action(np.array([0.01, 0, 0, 0, 0]))
        assert not result.state.watchdog_stopped
        assert not result.clipped


def test_heartbeats_keep_the_watchdog_quiet():
    # Heartbeats every 0.05 s against a 1 s timeout: a 20x margin for a loaded test machine.
    safety = SafetyConfig(watchdog_timeout_s=1.0)
    bridge_fields = {"heartbeat_period_s": 0.05}
    with (
        dry_server(safety) as (_, backend, ep),
        ZmqArm(client_bridge(ep, **bridge_fields), heartbeat=True) as arm,
    ):
        arm.send_action(np.array([0.01, 0, 0, 0, 0]))
        time.sleep(2.5)  # longer than two timeouts of "planning", with heartbeats flowing
        state = arm.read_state()
        assert not state.watchdog_stopped
        assert backend.stops == 0
        assert arm.heartbeat_failures == 0
        assert arm.last_heartbeat_state is not None


def test_explicit_heartbeats_feed_the_watchdog():
    safety = SafetyConfig(watchdog_timeout_s=1.0)
    with dry_server(safety) as (_, backend, ep), ZmqArm(client_bridge(ep), heartbeat=False) as arm:
        arm.send_action(np.zeros(5))
        for _ in range(12):
            time.sleep(0.2)
            arm.heartbeat()
        assert not arm.read_state().watchdog_stopped
        assert backend.stops == 0


def test_estop_latches_until_explicit_reset():
    with dry_server() as (_, backend, ep), ZmqArm(client_bridge(ep)) as arm:
        pose = arm.send_action(np.array([0.02, 0, 0, 0, 0])).state.pose
        state = arm.estop()
        assert state.estopped
        assert backend.stops == 1
        with pytest.raises(EStopActive, match="reset_estop"):
            arm.send_action(np.array([0.02, 0, 0, 0, 0]))
        with pytest.raises(EStopActive):
            arm.reset_episode({"seed": 1})
        # Neither a stop, a heartbeat nor a new client clears the latch.
        assert arm.stop().estopped
        assert arm.heartbeat().estopped
        with ZmqArm(client_bridge(ep)) as other:
            assert other.read_state().estopped
            with pytest.raises(EStopActive):
                other.send_action(np.zeros(5))
        np.testing.assert_array_equal(arm.read_state().pose, pose)  # nothing moved
        assert not arm.reset_estop().estopped
        result = arm.send_action(np.array([0.02, 0, 0, 0, 0]))
        assert result.state.pose[0] == pytest.approx(pose[0] + 0.02)


def test_stale_and_duplicate_sequence_numbers_are_refused():
    with dry_server() as (_, backend, ep):
        raw = RawClient(ep.command)
        try:
            ok = raw.request("command", seq=5, action=[0.01, 0, 0, 0, 0])
            assert ok["type"] == "applied" and ok["seq"] == 5
            dup = raw.request("command", seq=5, action=[0.01, 0, 0, 0, 0])
            assert dup["type"] == "error" and dup["code"] == "DUPLICATE_SEQ"
            assert dup["previous"]["seq"] == 5  # the same request again: its first answer comes back
            other = raw.request("command", seq=5, action=[0.02, 0, 0, 0, 0])
            assert other["code"] == "DUPLICATE_SEQ" and "previous" not in other
            stale = raw.request("command", seq=2, action=[0.01, 0, 0, 0, 0])
            assert stale["type"] == "error" and stale["code"] == "STALE_SEQ"
            assert "seq 2" in stale["message"]
            assert stale["state"]["last_command_seq"] == 5
            assert backend.steps == 1  # only the first one moved the arm
            assert raw.request("command", seq=9, action=[0, 0, 0, 0, 0])["type"] == "applied"  # gaps are fine
        finally:
            raw.close()


def test_retry_after_lost_reply_is_not_applied_twice(monkeypatch):
    """The first reply is dropped (slow server); the client's retry must not move the arm again."""
    with dry_server() as (server, backend, ep):
        original = server._serve_one
        dropped = threading.Event()

        def drop_first_command_reply(router, parts):
            if not dropped.is_set() and b"command" in parts[-1]:
                dropped.set()
                server._handle(parts[-1])  # applied, but the reply is lost
                return
            original(router, parts)

        monkeypatch.setattr(server, "_serve_one", drop_first_command_reply)
        bridge = client_bridge(ep, request_timeout_s=0.5, retries=2)
        with ZmqArm(bridge) as arm:
            result = arm.send_action(np.array([0.03, 0, 0, 0, 0]))
        assert dropped.is_set()
        assert result.seq == 0 and backend.steps == 1
        np.testing.assert_allclose(result.applied, [0.03, 0, 0, 0, 0])


def test_errors_come_back_as_messages():
    with dry_server() as (_, _, ep):
        raw = RawClient(ep.command)
        try:
            assert raw.send_bytes(b"\xc1not msgpack")["code"] == "BAD_MESSAGE"
            assert raw.send_bytes(b"\x93\x01\x02\x03")["code"] == "BAD_MESSAGE"  # a list, not a map
            assert raw.request("warp_drive")["code"] == "UNKNOWN_TYPE"
            reply = raw.send_bytes(b"\x82\xa1v\x07\xa2id\x01")
            assert reply["code"] == "BAD_VERSION" and reply["id"] == 1
            assert raw.request("command", seq=1, action=[0, 0, 0])["code"] == "BAD_ACTION"
            assert raw.request("command", seq=1, action=[float("nan"), 0, 0, 0, 0])["code"] == "BAD_ACTION"
            assert raw.request("command", seq=1, action=[0, 0, float("inf"), 0, 0])["code"] == "BAD_ACTION"
            assert raw.request("command", action=[0, 0, 0, 0, 0])["code"] == "BAD_MESSAGE"  # no seq
            assert raw.request("reset_episode", seq=1, options={"task": "fly"})["code"] == "BAD_OPTIONS"
            assert raw.request("get_sim_state")["code"] == "UNSUPPORTED"
            assert raw.send_parts([b"x", b"y", b"z"])["code"] == "BAD_MESSAGE"
            assert raw.request("get_state")["type"] == "state"  # still serving
        finally:
            raw.close()


def test_oversized_messages_are_refused_and_huge_ones_dropped():
    safety = SafetyConfig(max_message_bytes=1024)
    with dry_server(safety) as (_, backend, ep):
        raw = RawClient(ep.command)
        try:
            reply = raw.request("command", seq=1, action=[0, 0, 0, 0, 0], pad="x" * 2000)
            assert reply["code"] == "TOO_LARGE"
            # Far above the limit ZeroMQ itself drops the peer: no answer, and the server lives on.
            assert raw.send_bytes(b"\x00" * 100_000, timeout_s=0.5) is None
        finally:
            raw.close()
        with ZmqArm(client_bridge(ep)) as arm:
            assert arm.send_action(np.zeros(5)).seq == 0
        assert backend.steps == 1


def test_stale_command_age_is_refused_when_enabled():
    with dry_server(SafetyConfig(max_command_age_s=0.5)) as (_, _, ep):
        raw = RawClient(ep.command)
        try:
            sent_long_ago = {
                "v": 1,
                "type": "command",
                "id": 1,
                "t": time.time() - 10,
                "seq": 0,
                "action": [0] * 5,
            }
            old = raw.send_bytes(msgpack.packb(sent_long_ago))
            assert old["code"] == "STALE_COMMAND"
            assert raw.request("command", seq=1, action=[0] * 5)["type"] == "applied"
        finally:
            raw.close()


def test_dry_reset_episode_sets_pose_and_counts_as_a_command():
    with dry_server() as (_, backend, ep), ZmqArm(client_bridge(ep)) as arm:
        arm.send_action(np.array([0.05, 0, 0, 0, 0]))
        state = arm.reset_episode({"seed": 3})
        np.testing.assert_allclose(state.pose, backend.home)
        assert state.last_command_seq == 1
        state = arm.reset_episode({"pose": [9.0, 0.1, 0.1, 0.0, 1.0]})  # clamped into the box
        np.testing.assert_allclose(state.pose, [0.3, 0.1, 0.1, 0.0, 1.0])
        with pytest.raises(RemoteError, match="BAD_OPTIONS"):
            arm.reset_episode({"state": b"abc"})
        with pytest.raises(RemoteError) as err:
            arm.sim_state()
        assert err.value.code == "UNSUPPORTED"


def test_client_times_out_in_bounded_time_when_nobody_answers():
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)  # accepts connections, never answers: a hung controller
    silent.linger = 0
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    bridge = loopback_bridge(command_port=port, request_timeout_s=0.2, retries=2)
    try:
        arm = ZmqArm(bridge)
        t0 = time.monotonic()
        with pytest.raises(ArmTimeout, match="did not answer"):
            arm.connect()
        elapsed = time.monotonic() - t0
        assert 0.55 <= elapsed < 0.6 + 1.0
    finally:
        silent.close()
        ctx.term()


def test_client_times_out_when_the_server_dies_mid_session():
    bridge_fields = {"request_timeout_s": 0.25, "retries": 1}
    with dry_server() as (server, _, ep):
        arm = ZmqArm(client_bridge(ep, **bridge_fields))
        arm.connect()
        arm.send_action(np.zeros(5))
    # The server has stopped and closed its sockets.
    try:
        t0 = time.monotonic()
        with pytest.raises(ArmTimeout):
            arm.send_action(np.zeros(5))
        assert time.monotonic() - t0 < 0.5 + 1.0
        t0 = time.monotonic()
        with pytest.raises(ArmTimeout):
            arm.read_state()
        assert time.monotonic() - t0 < 0.5 + 1.0
    finally:
        arm.disconnect()


def test_client_reconnects_to_a_restarted_server():
    safety = SafetyConfig()
    backend = DryBackend(safety)
    first = ArmServer(backend, safety, loopback_bridge())
    with first.running() as ep:
        bridge = client_bridge(ep, request_timeout_s=0.3, retries=0)
        arm = ZmqArm(bridge)
        arm.connect()
        arm.send_action(np.zeros(5))
    with pytest.raises(ArmTimeout):
        arm.read_state()
    second = ArmServer(DryBackend(safety), safety, bridge)  # same port again
    with second.running():
        assert arm.read_state().last_command_seq == -1
    arm.disconnect()


def test_client_refuses_bad_actions_before_sending():
    with dry_server() as (_, backend, ep), ZmqArm(client_bridge(ep)) as arm:
        with pytest.raises(ArmError, match="5 finite numbers"):
            arm.send_action(np.zeros(4))
        with pytest.raises(ArmError):
            arm.send_action(np.array([np.nan, 0, 0, 0, 0]))
        assert backend.steps == 0


def test_network_bind_without_keys_is_refused():
    safety = SafetyConfig()
    with pytest.raises(InsecureBindError, match="curve_keys_dir"):
        ArmServer(DryBackend(safety), safety, loopback_bridge(host="0.0.0.0"))


def test_limiter_keeps_poses_inside_and_lets_parked_poses_return():
    limiter = ActionLimiter(SafetyConfig())
    parked = np.array([0.0, 0.0, 1.0, 0.0, 1.0])  # a task parks the gripper above the box
    down = limiter.limit(parked, np.array([0.0, 0.0, -0.5, 0.0, 1.0]))
    np.testing.assert_allclose(down.applied, [0, 0, -0.05, 0, 1.0])
    up = limiter.limit(parked, np.array([0.0, 0.0, 0.05, 0.0, 1.0]))
    assert up.applied[2] == 0.0 and up.clipped


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        server_mod.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--gen-keys" in out and "--backend" in out


def test_req_socket_with_empty_delimiter_is_answered():
    """A REQ client (which adds an empty delimiter part) gets a well-formed answer too."""
    with dry_server() as (_, _, ep):
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.connect(ep.command)
        try:
            req.send(msgpack.packb({"v": 1, "type": "get_state", "id": 7, "t": time.time()}))
            assert req.poll(5000)
            reply = msgpack.unpackb(req.recv())
            assert reply["type"] == "state" and reply["id"] == 7
        finally:
            req.close()
            ctx.term()


def test_bridge_modules_import_neither_torch_nor_mujoco():
    code = (
        "import sys, maskvit_mpc.robot.server, maskvit_mpc.robot.client, maskvit_mpc.robot.zmq_camera, "
        "maskvit_mpc.robot.launch; print('torch' in sys.modules, 'mujoco' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_heartbeat_thread_notices_a_dead_server_and_stops_with_disconnect():
    fields = {"heartbeat_period_s": 0.05, "request_timeout_s": 0.2, "retries": 0}
    with dry_server() as (_, _, ep):
        arm = ZmqArm(client_bridge(ep, **fields), heartbeat=True)
        arm.connect()
        deadline = time.monotonic() + 5.0
        while arm.last_heartbeat_state is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert arm.last_heartbeat_state is not None
    deadline = time.monotonic() + 5.0
    while arm.heartbeat_failures == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert arm.heartbeat_failures > 0
    t0 = time.monotonic()
    arm.disconnect()
    assert time.monotonic() - t0 < 0.2 + 1.5
    assert not any(t.name == "arm-heartbeat" for t in threading.enumerate())
