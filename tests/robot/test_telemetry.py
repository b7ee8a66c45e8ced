"""Telemetry for the dashboard: message encoding, throttling, never blocking, retained topics, pause channel."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from maskvit_mpc.robot.camera import Camera
from maskvit_mpc.robot.telemetry import (
    TELEMETRY_VERSION,
    JpegImage,
    RateLimiter,
    RunControl,
    RunMonitor,
    TelemetryError,
    TelemetryPublisher,
    control_request,
    decode_jpeg,
    decode_message,
    encode_message,
)
from maskvit_mpc.robot.types import Frame


def _image(h: int = 32, w: int = 48, colour=(200, 30, 40)) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = colour
    return img


class _Subscriber:
    """A real SUB socket on a publisher's endpoint that collects decoded messages."""

    def __init__(self, endpoint: str, topic: bytes = b"", rcvhwm: int = 1000) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.linger = 0
        self.socket.rcvhwm = rcvhwm
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)

    def receive(self, timeout_s: float = 3.0, until=None) -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000) + 1):
                break
            out.append(decode_message(self.socket.recv_multipart()))
            if until is not None and until(out):
                break
        return out

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def _wait_subscribed(publisher: TelemetryPublisher, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not publisher.subscribed and time.monotonic() < deadline:
        publisher.retain("status", ping=True)  # wakes the sender thread, which reads subscriptions
        time.sleep(0.01)
    assert publisher.subscribed, "the subscription never reached the publisher"


# --- encoding --------------------------------------------------------------------------------


def test_message_round_trip_with_jpeg_numpy_and_nan():
    img = _image()
    parts = encode_message(
        "plan",
        {"step": 3, "actions": np.ones((2, 5)), "cost": float("nan"), "predicted": [JpegImage(img)]},
        run="abcd",
    )
    topic, body = decode_message(parts)
    assert topic == "plan" and body["type"] == "plan" and body["v"] == TELEMETRY_VERSION
    assert body["run"] == "abcd" and body["step"] == 3
    assert body["actions"] == [[1.0] * 5, [1.0] * 5]
    assert body["cost"] is None  # NaN cannot reach a browser as JSON
    decoded = decode_jpeg(body["predicted"][0])
    assert decoded.shape == img.shape
    assert np.abs(decoded.astype(int) - img.astype(int)).mean() < 8  # JPEG is lossy, colours survive


@pytest.mark.parametrize(
    "parts, match",
    [
        ([b"frame"], "2 parts"),
        ([b"nope", msgpack.packb({"v": 1, "type": "nope"})], "unknown telemetry topic"),
        ([b"frame", b"\xc1"], "not a msgpack"),
        ([b"frame", msgpack.packb([1, 2])], "is a map"),
        ([b"frame", msgpack.packb({"v": 2, "type": "frame"})], "version"),
        ([b"frame", msgpack.packb({"v": 1, "type": "plan"})], "carries a message of type"),
    ],
)
def test_decode_refuses_malformed_messages(parts, match):
    with pytest.raises(TelemetryError, match=match):
        decode_message(parts)


def test_decode_refuses_oversized_messages():
    parts = encode_message("frame", {"jpeg": b"x" * 2000})
    with pytest.raises(TelemetryError, match="exceeds"):
        decode_message(parts, max_bytes=1000)


def test_encode_refuses_unknown_topic_and_bad_images():
    with pytest.raises(TelemetryError, match="unknown telemetry topic"):
        encode_message("frames", {})
    with pytest.raises(TelemetryError, match=r"\(H, W, 3\) uint8"):
        encode_message("frame", {"jpeg": JpegImage(np.zeros((4, 4), np.float32))})


# --- throttling -----------------------------------------------------------------------------


def test_rate_limiter_lets_through_at_most_max_hz():
    now = [0.0]
    limiter = RateLimiter(10.0, clock=lambda: now[0])
    passed = []
    for i in range(100):  # 1 s of calls every 10 ms
        now[0] = i * 0.01
        passed.append(limiter.allow())
    assert sum(passed) == 10
    assert limiter.refused == 90
    now[0] = 5.0  # after a long gap: one passes, the backlog is not replayed
    assert limiter.allow() and not limiter.allow()


def test_rate_limiter_zero_means_never():
    limiter = RateLimiter(0.0)
    assert not any(limiter.allow() for _ in range(5))


def test_frames_are_throttled_on_the_wire():
    publisher = TelemetryPublisher(max_frame_hz=5.0)
    sub = _Subscriber(publisher.endpoint, b"frame")
    try:
        _wait_subscribed(publisher)
        t0 = time.monotonic()
        queued = [publisher.frame(Frame(_image(), time.time(), i)) for i in range(200)]
        elapsed = time.monotonic() - t0
        received = sub.receive(timeout_s=0.5)
        allowed = 1 + int(elapsed * 5.0) + 1
        assert 1 <= sum(queued) <= allowed
        assert 1 <= len(received) <= allowed
        assert received[0][1]["seq"] == 0  # the first frame of a burst goes out
    finally:
        sub.close()
        publisher.close()


# --- cost when nobody listens, and never blocking -------------------------------------------


def test_nothing_is_encoded_when_nobody_listens():
    publisher = TelemetryPublisher(max_frame_hz=1000.0)
    try:
        for i in range(20):
            publisher.frame(Frame(_image(), time.time(), i))
            time.sleep(0.002)
        assert publisher.flush(2.0)
        assert publisher.encoded_images == 0
        assert publisher.unheard > 0 and publisher.sent == 0
    finally:
        publisher.close()


def test_a_stalled_subscriber_never_blocks_the_publisher():
    publisher = TelemetryPublisher(max_frame_hz=1e6)
    sub = _Subscriber(publisher.endpoint, rcvhwm=1)  # subscribes, then never reads
    try:
        _wait_subscribed(publisher)
        big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # ~300 kB JPEGs
        times = []
        for i in range(300):
            t0 = time.perf_counter()
            publisher.frame(Frame(big, time.time(), i))
            times.append(time.perf_counter() - t0)
        # Blocking would mean seconds (a full ZeroMQ queue); the sender thread's GIL share is all we pay.
        assert np.median(times) < 0.001 and max(times) < 0.05, f"publish took up to {max(times) * 1e3:.1f} ms"
        assert publisher.flush(20.0)
        # Backpressure became drops (in the bounded queue or at the ZeroMQ high-water mark), not waiting.
        assert publisher.sent + publisher.dropped < 300
    finally:
        sub.close()
        publisher.close()


# --- retained topics ------------------------------------------------------------------------


def test_a_late_subscriber_gets_the_retained_status_and_episode():
    publisher = TelemetryPublisher(republish_period_s=0.2)
    try:
        publisher.retain("status", phase="planning", step=4)
        publisher.retain("status", step=5)  # merged into the previous value
        publisher.retain("episode", goal=JpegImage(_image()), max_steps=15)
        time.sleep(0.2)  # published to nobody
        sub = _Subscriber(publisher.endpoint)
        try:
            got = sub.receive(until=lambda msgs: {"status", "episode"} <= {t for t, _ in msgs})
        finally:
            sub.close()
        latest = {topic: body for topic, body in got}
        assert latest["status"]["phase"] == "planning" and latest["status"]["step"] == 5
        assert decode_jpeg(latest["episode"]["goal"]).shape == (32, 48, 3)
        assert latest["status"]["run"] == publisher.run_id
    finally:
        publisher.close()


def test_streamed_and_retained_topics_are_not_interchangeable():
    publisher = TelemetryPublisher()
    try:
        with pytest.raises(TelemetryError, match="not a streamed topic"):
            publisher.publish("status", phase="x")
        with pytest.raises(TelemetryError, match="not a retained topic"):
            publisher.retain("frame", seq=1)
    finally:
        publisher.close()


# --- pause / resume -------------------------------------------------------------------------


def test_control_channel_pauses_and_resumes():
    control = RunControl()
    try:
        assert control_request(control.endpoint, "get")["paused"] is False
        reply = control_request(control.endpoint, "pause")
        assert reply["ok"] and reply["paused"] and control.paused
        assert control_request(control.endpoint, "pause")["paused"]  # idempotent
        reply = control_request(control.endpoint, "resume")
        assert reply["ok"] and not reply["paused"] and not control.paused
        bad = control_request(control.endpoint, "explode")
        assert not bad["ok"] and "unknown request" in bad["message"]
    finally:
        control.close()


def test_control_request_times_out_when_nobody_answers():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)  # bound, but never answers
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer"):
            control_request(f"tcp://127.0.0.1:{port}", "pause", timeout_s=0.3)
        assert time.monotonic() - t0 < 1.0
    finally:
        router.close()
        ctx.term()


def test_hold_blocks_while_paused_and_stops_the_arm_once():
    monitor = RunMonitor("test")
    stops = []
    try:
        assert monitor.hold(on_pause=lambda: stops.append(1)) is False  # not paused: no wait
        control_request(monitor.control.endpoint, "pause")
        result: list[bool] = []
        thread = threading.Thread(
            target=lambda: result.append(monitor.hold(on_pause=lambda: stops.append(1)))
        )
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and not result  # still holding
        assert monitor.publisher.retained("status")["phase"] == "paused"
        control_request(monitor.control.endpoint, "resume")
        thread.join(timeout=2.0)
        assert result == [True] and stops == [1]
        assert monitor.publisher.retained("status")["paused"] is False
    finally:
        monitor.close()


def test_hold_survives_a_failing_stop():
    monitor = RunMonitor("test")
    try:
        monitor.control.set_paused(True)
        threading.Timer(0.2, monitor.control.set_paused, args=(False,)).start()

        def refuse() -> None:
            raise RuntimeError("controller unreachable")

        assert monitor.hold(on_pause=refuse) is True
    finally:
        monitor.close()


# --- the run side ---------------------------------------------------------------------------


class _ListCamera(Camera):
    """Frames from a list (what the wrapper sees of any driver)."""

    def __init__(self) -> None:
        self.seq = 0
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    @property
    def is_connected(self) -> bool:
        return self.connected

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        self.seq += 1
        return Frame(_image(colour=(0, 0, 10 * self.seq)), time.time() - 0.05, self.seq)


def test_monitored_camera_publishes_frames_and_latency():
    monitor = RunMonitor("test", arm_endpoint="tcp://127.0.0.1:5555")
    sub = _Subscriber(monitor.endpoint)
    try:
        _wait_subscribed(monitor.publisher)
        camera = monitor.watch(_ListCamera())
        with camera:
            assert camera.is_connected
            frames = [camera.read() for _ in range(3)]
        assert [f.seq for f in frames] == [1, 2, 3]
        monitor.status(phase="planning")
        got = sub.receive(until=lambda msgs: any(t == "frame" for t, _ in msgs))
        frame = next(body for topic, body in got if topic == "frame")
        assert frame["seq"] == 1 and frame["width"] == 48 and frame["age_s"] >= 0.05
        got = sub.receive(until=lambda msgs: any(t == "status" and "camera" in b for t, b in msgs))
        status = [body for topic, body in got if topic == "status" and "camera" in body][-1]
        assert status["camera"]["age_ms"] >= 50 and status["camera"]["seq"] == 3
        assert status["arm"] == "tcp://127.0.0.1:5555" and status["control"] == monitor.control.endpoint
    finally:
        sub.close()
        monitor.close()


def test_a_busy_telemetry_port_is_a_clear_error():
    first = TelemetryPublisher()
    try:
        from maskvit_mpc.configs.errors import UserError

        with pytest.raises(UserError, match="--telemetry-port"):
            TelemetryPublisher(first.endpoint)
    finally:
        first.close()
