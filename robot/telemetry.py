"""Live telemetry of a run (``mpc-run``, ``collect-finetune-data``) for the operator dashboard.

A run publishes on a ZeroMQ XPUB socket it binds (loopback by default); ``mpc-dashboard`` subscribes.
Control must never wait for a viewer, so:

* the control thread only drops references into a bounded queue (oldest dropped when full) after a
  rate check; a background thread does the JPEG encoding and the sending;
* sends are non-blocking with a small high-water mark: a slow or dead dashboard loses messages, the
  run never notices;
* frames and plans are throttled to a maximum rate, and nothing is encoded for a topic nobody is
  subscribed to (XPUB reports subscriptions), so a run that nobody watches pays a queue append.

Messages (version 1) are two parts: the topic and one msgpack map with ``v``, ``type`` (= topic),
``t`` (wall clock of the run's host), ``run`` (random per publisher start) and the topic's fields;
images are JPEG bytes. Topics, fields in ``docs/dashboard.md``:

* streamed: ``frame`` (camera image), ``plan`` (costs per optimiser iteration, the chosen actions, the
  best plan's predicted frames), ``step`` (what was sent and applied, the frame after it);
* retained, re-sent every ``republish_period_s`` so a dashboard started late catches up: ``status``
  (phase, pause, endpoints, latencies), ``episode`` (goal image, task, progress limits), ``collect``.

:class:`RunControl` is the small command channel back: the dashboard asks the run to pause or resume
(a ROUTER the run binds; requests and replies are msgpack maps). A paused run stops the arm (a normal,
unlatched stop) and waits at its next :meth:`RunMonitor.hold` before sending any action.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np
import zmq
from PIL import Image

from .camera import Camera
from .protocol import is_loopback
from .types import Frame

log = logging.getLogger(__name__)

TELEMETRY_VERSION = 1
DEFAULT_TELEMETRY_PORT = 5560  # mpc-dashboard's default --telemetry is tcp://127.0.0.1:5560
STREAM_TOPICS = ("frame", "plan", "step")
RETAINED_TOPICS = ("status", "episode", "collect")
TOPICS = STREAM_TOPICS + RETAINED_TOPICS
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a plan of 64 JPEG frames at 640x480 stays far below this
_SNDHWM = 8  # messages queued per subscriber before ZeroMQ drops: a few frames of lag at most
_QUEUE = 32  # messages waiting for the sender thread before the oldest is dropped


class TelemetryError(ValueError):
    """A telemetry message that is not version 1, not a map, too large or of an unknown topic."""


# --- encoding ------------------------------------------------------------------------------------


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    """(H, W, 3) uint8 RGB as JPEG bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TelemetryError(f"an image is (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes as (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


class JpegImage:
    """Marks an array in a message's fields to be sent as JPEG; encoded off the control thread."""

    __slots__ = ("rgb",)

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb


def _wire(value: Any, quality: int) -> Any:
    """Fields as msgpack values: JpegImage -> JPEG bytes, numpy -> lists and floats."""
    if isinstance(value, JpegImage):
        return encode_jpeg(value.rgb, quality)
    if isinstance(value, Mapping):
        return {str(k): _wire(v, quality) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v, quality) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # NaN and inf are not JSON, and the page shows "n/a" for them
    return value


def encode_message(topic: str, fields: Mapping[str, Any], run: str = "", quality: int = 80) -> list[bytes]:
    """The two parts of one telemetry message."""
    if topic not in TOPICS:
        raise TelemetryError(f"unknown telemetry topic {topic!r}; one of {', '.join(TOPICS)}")
    body = {
        **_wire(dict(fields), quality),
        "v": TELEMETRY_VERSION,
        "type": topic,
        "t": time.time(),
        "run": run,
    }
    return [topic.encode(), msgpack.packb(body, use_bin_type=True)]


def decode_message(parts: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, dict[str, Any]]:
    """(topic, fields) of one message; raises :class:`TelemetryError` for anything else."""
    if len(parts) != 2:
        raise TelemetryError(f"a telemetry message has 2 parts (topic, map), got {len(parts)}")
    topic = parts[0].decode(errors="replace")
    if topic not in TOPICS:
        raise TelemetryError(f"unknown telemetry topic {topic!r}")
    if len(parts[1]) > max_bytes:
        raise TelemetryError(f"message of {len(parts[1])} bytes exceeds the {max_bytes} limit")
    try:
        body = msgpack.unpackb(parts[1], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise TelemetryError(f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise TelemetryError(f"a telemetry message is a map, got {type(body).__name__}")
    if body.get("v") != TELEMETRY_VERSION:
        raise TelemetryError(f"telemetry version {body.get('v')!r}, this reader knows {TELEMETRY_VERSION}")
    if body.get("type") != topic:
        raise TelemetryError(f"topic {topic!r} carries a message of type {body.get('type')!r}")
    return topic, body


class RateLimiter:
    """Lets an event through at most ``max_hz`` times per second (``max_hz <= 0``: never)."""

    def __init__(self, max_hz: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = 1.0 / max_hz if max_hz > 0 else float("inf")
        self.clock = clock
        self._next = -float("inf")
        self.allowed = 0
        self.refused = 0

    def allow(self) -> bool:
        now = self.clock()
        if now < self._next or self.period == float("inf"):
            self.refused += 1
            return False
        # From now, not from the last slot: a burst after a pause is not replayed.
        self._next = now + self.period
        self.allowed += 1
        return True


# --- the publisher -------------------------------------------------------------------------------


class TelemetryPublisher:
    """Publishes telemetry on an XPUB socket bound to ``endpoint``; see the module docstring.

    ``publish`` and ``retain`` are safe from any thread and never block. ``max_frame_hz`` throttles
    ``frame``; ``max_plan_hz`` throttles ``plan`` and the images of ``step``.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:0",
        *,
        max_frame_hz: float = 10.0,
        max_plan_hz: float = 5.0,
        jpeg_quality: int = 80,
        republish_period_s: float = 0.5,
        context: zmq.Context | None = None,
    ) -> None:
        host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if endpoint.startswith("tcp://") and not is_loopback(host):
            log.warning("telemetry on %s is readable by anyone on that network (camera images)", endpoint)
        self.run_id = secrets.token_hex(4)
        self.quality = jpeg_quality
        self.republish_period_s = republish_period_s
        self.limits = {
            "frame": RateLimiter(max_frame_hz),
            "plan": RateLimiter(max_plan_hz),
            "step_image": RateLimiter(max_plan_hz),  # its own budget: the live frame just used the frame one
        }
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.linger = 0
        self._socket.sndhwm = _SNDHWM
        if endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            from ..configs.errors import UserError

            raise UserError(
                f"cannot publish telemetry on {endpoint} ({exc}); another run may hold that port: choose "
                "another --telemetry-port (0 picks a free one)"
            ) from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=_QUEUE)
        self._retained: dict[str, dict[str, Any]] = {}
        self._retained_dirty: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._subscriptions: set[bytes] = set()
        self.sent = 0  # messages handed to ZeroMQ
        self.dropped = 0  # messages ZeroMQ refused (queue full) or that failed to encode
        self.unheard = 0  # messages skipped because nobody subscribed to their topic
        self.encoded_images = 0
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    # --- producer side (any thread, never blocks) ------------------------------------------------

    def publish(self, topic: str, **fields: Any) -> bool:
        """Queue one streamed message; False when throttled (``frame``, ``plan``) and dropped."""
        if topic not in STREAM_TOPICS:
            raise TelemetryError(f"{topic!r} is not a streamed topic ({', '.join(STREAM_TOPICS)})")
        limiter = self.limits.get(topic)
        if limiter is not None and not limiter.allow():
            return False
        self._queue.append((topic, fields))
        self._wake.set()
        return True

    def frame(self, frame: Frame) -> bool:
        """Queue a camera frame (throttled to ``max_frame_hz``)."""
        return self.publish(
            "frame",
            seq=frame.seq,
            t_capture=frame.t_capture,
            age_s=time.time() - frame.t_capture,
            height=int(frame.rgb.shape[0]),
            width=int(frame.rgb.shape[1]),
            jpeg=JpegImage(frame.rgb),
        )

    def retain(self, topic: str, replace: bool = False, **fields: Any) -> None:
        """Update a retained topic (merged into its last value unless ``replace``) and publish it."""
        if topic not in RETAINED_TOPICS:
            raise TelemetryError(f"{topic!r} is not a retained topic ({', '.join(RETAINED_TOPICS)})")
        with self._lock:
            current = {} if replace else dict(self._retained.get(topic, {}))
            current.update(fields)
            self._retained[topic] = current
            self._retained_dirty.add(topic)
        self._wake.set()

    def retained(self, topic: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._retained.get(topic, {}))

    def step_image_allowed(self) -> bool:
        """Whether a step may carry the frame after its action now (at most ``max_plan_hz``)."""
        return self.limits["step_image"].allow()

    @property
    def subscribed(self) -> bool:
        """Whether any subscriber is connected (as far as the sender thread has seen)."""
        return bool(self._subscriptions)

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until the queue and retained updates are sent (tests, shutdown); True when done."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._queue and not self._retained_dirty and not self._busy
            if idle:
                return True
            time.sleep(0.005)
        return False

    def close(self, flush_s: float = 0.3) -> None:
        if self._stop.is_set():
            return
        self.flush(flush_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)

    # --- the sender thread ---------------------------------------------------------------------

    _busy = False

    def _wanted(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._subscriptions)

    def _read_subscriptions(self) -> None:
        while True:
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self._subscriptions.add(event[1:])
                with self._lock:  # a new viewer gets the retained state at once
                    self._retained_dirty.update(self._retained)
            elif event[:1] == b"\x00":
                self._subscriptions.discard(event[1:])

    def _send(self, topic: str, fields: Mapping[str, Any]) -> None:
        if not self._wanted(topic.encode()):
            self.unheard += 1
            return
        try:
            parts = encode_message(topic, fields, self.run_id, self.quality)
        except Exception:
            log.exception("telemetry message %s could not be encoded; dropped", topic)
            self.dropped += 1
            return
        self.encoded_images += _count_images(fields)
        try:
            self._socket.send_multipart(parts, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def _run(self) -> None:
        next_republish = time.monotonic()
        try:
            while not self._stop.is_set():
                self._wake.wait(max(0.0, min(0.05, next_republish - time.monotonic())))
                self._wake.clear()
                self._busy = True
                self._read_subscriptions()
                while self._queue:
                    try:
                        topic, fields = self._queue.popleft()
                    except IndexError:
                        break
                    self._send(topic, fields)
                if time.monotonic() >= next_republish:
                    next_republish = time.monotonic() + self.republish_period_s
                    with self._lock:
                        self._retained_dirty.update(self._retained)
                with self._lock:
                    dirty = {t: dict(self._retained[t]) for t in self._retained_dirty}
                    self._retained_dirty.clear()
                for topic, fields in dirty.items():
                    self._send(topic, fields)
                self._busy = False
        except Exception:
            log.exception("telemetry thread stopped; the run goes on without a dashboard")
        finally:
            self._busy = False
            self._socket.close(linger=100)


def _count_images(value: Any) -> int:
    if isinstance(value, JpegImage):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_images(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_images(v) for v in value)
    return 0


# --- pause / resume: the command channel from the dashboard ----------------------------------------


class RunControl:
    """A ROUTER bound on loopback that answers ``pause``, ``resume`` and ``get`` requests.

    Requests are msgpack maps ``{v, type, id}``; replies ``{v, type: "control", id, ok, paused,
    message}``. The socket lives in a background thread, so a pause is acknowledged at once even while
    the run is planning; the run acts on it at its next :meth:`wait_if_paused`.

    Access is by address only (loopback): the token that guards ``resume`` is checked by the dashboard,
    which is what a browser reaches. A local process can reach the arm server directly anyway.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:0", context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        self._socket.setsockopt(zmq.MAXMSGSIZE, 4096)
        self._socket.bind(endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._paused = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()
        self._stop = threading.Event()
        self.on_change: Callable[[bool], None] | None = None
        self._thread = threading.Thread(target=self._serve, name="run-control", daemon=True)
        self._thread.start()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        if paused:
            self._resumed.clear()
            self._paused.set()
        else:
            self._paused.clear()
            self._resumed.set()
        log.warning("run %s by the operator", "PAUSED" if paused else "resumed")
        if self.on_change is not None:
            self.on_change(paused)

    def wait_resumed(self, timeout_s: float | None = None) -> bool:
        return self._resumed.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._resumed.set()  # nobody waits forever on a closed channel

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(50):
                    continue
                try:
                    parts = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                reply = self._handle(parts[-1])
                with contextlib.suppress(zmq.ZMQError):  # the asker is gone
                    self._socket.send_multipart([parts[0], *parts[1:-1], msgpack.packb(reply)], zmq.NOBLOCK)
        except Exception:
            log.exception("run control channel stopped")
        finally:
            self._socket.close(linger=0)

    def _handle(self, payload: bytes) -> dict[str, Any]:
        req_id = None
        try:
            message = msgpack.unpackb(payload, raw=False)
            if not isinstance(message, dict):
                raise ValueError("a request is a map")
            req_id = message.get("id")
            if message.get("v") != TELEMETRY_VERSION:
                raise ValueError(f"version {message.get('v')!r}, expected {TELEMETRY_VERSION}")
            kind = message.get("type")
            if kind == "pause":
                self.set_paused(True)
            elif kind == "resume":
                self.set_paused(False)
            elif kind != "get":
                raise ValueError(f"unknown request {kind!r}; pause, resume or get")
            ok, text = True, ""
        except Exception as exc:
            ok, text = False, str(exc)
        return {
            "v": TELEMETRY_VERSION,
            "type": "control",
            "id": req_id,
            "ok": ok,
            "paused": self.paused,
            "message": text,
        }


def control_request(
    endpoint: str, kind: str, timeout_s: float = 1.0, context: zmq.Context | None = None
) -> dict[str, Any]:
    """Send one ``pause`` / ``resume`` / ``get`` to a :class:`RunControl`; raises TimeoutError."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        req_id = secrets.randbits(31)
        sock.send(msgpack.packb({"v": TELEMETRY_VERSION, "type": kind, "id": req_id, "t": time.time()}))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            reply = msgpack.unpackb(sock.recv(), raw=False)
            if isinstance(reply, dict) and reply.get("id") == req_id:
                return reply
        raise TimeoutError(f"the run's control channel {endpoint} did not answer {kind!r} in {timeout_s} s")
    finally:
        sock.close(linger=0)


# --- what a run holds ------------------------------------------------------------------------------


class MonitoredCamera(Camera):
    """A camera whose every read frame is also published (throttled) and timed for the status."""

    def __init__(self, camera: Camera, monitor: RunMonitor) -> None:
        self.camera = camera
        self.monitor = monitor
        self._reads: collections.deque[float] = collections.deque(maxlen=20)

    def connect(self) -> None:
        self.camera.connect()

    def disconnect(self) -> None:
        self.camera.disconnect()

    @property
    def is_connected(self) -> bool:
        return self.camera.is_connected

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        frame = self.camera.read(timeout_s=timeout_s, after_command_seq=after_command_seq)
        now = time.monotonic()
        self._reads.append(now)
        span = self._reads[-1] - self._reads[0]
        self.monitor.publisher.frame(frame)
        self.monitor.camera_stats = {
            "seq": frame.seq,
            "age_ms": 1000.0 * (time.time() - frame.t_capture),
            "reads_per_s": (len(self._reads) - 1) / span if span > 0 else None,
        }
        return frame

    def __getattr__(self, name: str) -> Any:  # driver extras (endpoint, bad_frames, ...)
        return getattr(self.camera, name)


class RunMonitor:
    """Telemetry publisher + pause channel of one run (``mpc-run``, ``collect-finetune-data``).

    ``kind`` names the run; ``arm_endpoint`` is the arm server's command socket, announced so the
    dashboard can send its E-STOP straight there.
    """

    def __init__(
        self,
        kind: str,
        telemetry_endpoint: str = "tcp://127.0.0.1:0",
        arm_endpoint: str | None = None,
        **publisher_options: Any,
    ) -> None:
        self.kind = kind
        self.publisher = TelemetryPublisher(telemetry_endpoint, **publisher_options)
        try:
            host = telemetry_endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
            self.control = RunControl(f"tcp://{host}:0")
        except BaseException:
            self.publisher.close()
            raise
        self.control.on_change = lambda paused: self.status(paused=paused)
        self.camera_stats: dict[str, Any] = {}
        self.status(
            kind=kind,
            phase="starting",
            paused=False,
            pid=os.getpid(),
            arm=arm_endpoint,
            control=self.control.endpoint,
            started=time.time(),
        )

    @property
    def endpoint(self) -> str:
        return self.publisher.endpoint

    def watch(self, camera: Camera) -> MonitoredCamera:
        """``camera`` with its frames published."""
        return MonitoredCamera(camera, self)

    def status(self, **fields: Any) -> None:
        """Update the retained status (phase, step, latencies ...)."""
        if self.camera_stats:
            fields.setdefault("camera", dict(self.camera_stats))
        self.publisher.retain("status", **fields)

    def hold(self, on_pause: Callable[[], Any] | None = None) -> bool:
        """Block while the operator has the run paused; True when it did.

        ``on_pause`` (stop the arm) runs once when the pause is noticed; errors in it are logged, never
        raised, so an e-stopped or unreachable arm does not end a paused run.
        """
        if not self.control.paused:
            return False
        previous = self.publisher.retained("status").get("phase", "running")
        self.status(phase="paused", paused=True)
        if on_pause is not None:
            try:
                on_pause()
            except Exception as exc:
                log.warning("stopping the arm for the pause failed: %s", exc)
        log.warning("paused by the operator; waiting for resume")
        while not self.control.wait_resumed(0.5):
            pass
        self.status(phase=previous, paused=False)
        return True

    def close(self, **final_status: Any) -> None:
        self.status(phase="finished", **final_status)
        self.control.close()
        self.publisher.close()
