"""ZmqCamera and FramePublisher on real loopback PUB/SUB sockets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from bridge_helpers import client_bridge, dry_server, loopback_bridge
from maskvit_mpc.robot.camera import CameraError, CameraTimeout
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.protocol import FRAME_TOPIC
from maskvit_mpc.robot.zmq_camera import FramePublisher, ZmqCamera


@pytest.fixture
def publisher():
    ctx = zmq.Context()
    pub = FramePublisher(ctx, "tcp://127.0.0.1:*", republish_period_s=0.05)
    yield pub
    pub.close()
    ctx.term()


def _image(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_late_subscriber_gets_the_latest_frame_by_republishing(publisher):
    sent = publisher.publish(_image(7), last_command_seq=-1, t_capture=123.5)
    time.sleep(0.2)  # published long before anyone subscribed: plain PUB/SUB would lose it
    with ZmqCamera(loopback_bridge(), endpoint=publisher.endpoint) as camera:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            publisher.maybe_republish()
            try:
                frame = camera.read(timeout_s=0.05)
                break
            except CameraTimeout:
                continue
        else:
            pytest.fail("no frame reached the late subscriber")
    assert frame.seq == sent.seq == 0
    assert frame.t_capture == 123.5 and frame.last_command_seq == -1
    np.testing.assert_array_equal(frame.rgb, _image(7))


def _pump(publisher: FramePublisher, camera: ZmqCamera) -> None:
    """Republish until the subscription is live (the first frame arrives)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        publisher.maybe_republish()
        try:
            camera.read(timeout_s=0.05)
            return
        except CameraTimeout:
            continue
    pytest.fail("subscription never came up")


def test_read_after_command_returns_the_first_frame_following_it(publisher):
    publisher.publish(_image(0), last_command_seq=-1)
    with ZmqCamera(loopback_bridge(), endpoint=publisher.endpoint) as camera:
        _pump(publisher, camera)
        for k in range(4):
            publisher.publish(_image(10 + k), last_command_seq=k)
        frame = camera.read(timeout_s=2.0, after_command_seq=1)
        assert frame.last_command_seq == 1 and frame.rgb[0, 0, 0] == 11  # the first after 1, not the newest
        assert camera.read(timeout_s=2.0, after_command_seq=3).rgb[0, 0, 0] == 13
        assert camera.read(timeout_s=2.0).rgb[0, 0, 0] == 13  # plain read: newest
        t0 = time.monotonic()
        with pytest.raises(CameraTimeout, match="after command 4"):
            camera.read(timeout_s=0.3, after_command_seq=4)
        assert time.monotonic() - t0 < 0.3 + 1.0
        publisher.publish(_image(14), last_command_seq=4)
        assert camera.read(timeout_s=2.0, after_command_seq=4).rgb[0, 0, 0] == 14


def test_stopped_camera_raises_camera_timeout():
    ctx = zmq.Context()
    pub = FramePublisher(ctx, "tcp://127.0.0.1:*", republish_period_s=0.05)
    try:
        pub.publish(_image(1), last_command_seq=-1)
        with ZmqCamera(loopback_bridge(), endpoint=pub.endpoint) as camera:
            _pump(pub, camera)
            pub.close()  # the camera stops
            time.sleep(0.1)
            t0 = time.monotonic()
            with pytest.raises(CameraTimeout, match="no frame"):
                camera.read(timeout_s=0.4)
            assert time.monotonic() - t0 < 0.4 + 1.0
    finally:
        ctx.term()


def test_restarted_publisher_replaces_the_history():
    ctx = zmq.Context()
    first = FramePublisher(ctx, "tcp://127.0.0.1:*", republish_period_s=0.05)
    endpoint = first.endpoint
    try:
        first.publish(_image(1), last_command_seq=50)
        with ZmqCamera(loopback_bridge(), endpoint=endpoint) as camera:
            _pump(first, camera)
            assert camera.read(timeout_s=1.0, after_command_seq=50).rgb[0, 0, 0] == 1
            first.close()
            ctx.term()  # waits until the port is released
            ctx = zmq.Context()
            second = FramePublisher(ctx, endpoint, republish_period_s=0.05)  # counters start over
            try:
                second.publish(_image(2), last_command_seq=0)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    second.maybe_republish()
                    try:
                        frame = camera.read(timeout_s=0.05, after_command_seq=0)
                    except CameraTimeout:
                        continue
                    if frame.rgb[0, 0, 0] == 2:
                        break
                else:
                    pytest.fail("frames of the restarted publisher never arrived")
                # The old stream's frame with command 50 is gone: nothing pretends to follow 50 now.
                with pytest.raises(CameraTimeout):
                    camera.read(timeout_s=0.2, after_command_seq=50)
            finally:
                second.close()
    finally:
        ctx.term()


def test_malformed_frames_are_skipped():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with ZmqCamera(loopback_bridge(), endpoint=f"tcp://127.0.0.1:{port}") as camera:
            deadline = time.monotonic() + 5.0
            while camera.bad_frames == 0 and time.monotonic() < deadline:
                pub.send_multipart([FRAME_TOPIC, b"\xc1", b"pixels"])
                pub.send_multipart([FRAME_TOPIC, b"only two"])
                time.sleep(0.02)
            assert camera.bad_frames > 0
            assert camera.is_connected
            with pytest.raises(CameraTimeout):
                camera.read(timeout_s=0.1)
    finally:
        pub.close()
        ctx.term()


def test_read_before_connect_is_a_clear_error():
    with pytest.raises(CameraError, match="connect"):
        ZmqCamera(loopback_bridge(), endpoint="tcp://127.0.0.1:9").read(timeout_s=0.1)


def test_frames_from_the_arm_server_follow_commands():
    with dry_server() as (_, _, ep):
        bridge = client_bridge(ep)
        with ZmqArm(bridge) as arm, ZmqCamera(bridge) as camera:
            first = camera.read(timeout_s=5.0)  # the start-up frame, re-published for late joiners
            assert first.last_command_seq == -1 and first.rgb.shape == (32, 32, 3)
            for _ in range(3):
                result = arm.send_action(np.array([0.05, 0.05, 0, 0, 1.0]))
                frame = camera.read(timeout_s=5.0, after_command_seq=result.seq)
                assert frame.last_command_seq == result.seq
                assert frame.t_capture >= result.t_applied - 1e-3
            assert not np.array_equal(frame.rgb, first.rgb)  # the synthetic view shows the motion
            state = arm.reset_episode({"seed": 0})
            after_reset = camera.read(timeout_s=5.0, after_command_seq=state.last_command_seq)
            np.testing.assert_array_equal(after_reset.rgb, first.rgb)  # back at home
