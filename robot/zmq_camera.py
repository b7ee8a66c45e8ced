"""Camera frames over ZeroMQ PUB/SUB: :class:`FramePublisher` (server side) and :class:`ZmqCamera`.

The sim arm server publishes a frame after every applied step and every reset, each stamped with its
capture time and the sequence number of the last applied command, so a control loop can wait for the
frame that shows the consequence of its own action (``read(after_command_seq=k)``).

PUB/SUB drops whatever was published before a subscription reached the publisher (the "slow joiner"),
so the publisher re-sends its latest frame every ``BridgeConfig.camera_republish_period_s``; a late
subscriber gets a frame within that period. A re-sent frame keeps its ``seq`` and ``t_capture``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

import numpy as np
import zmq

from ..configs.schema import BridgeConfig
from . import curve
from .camera import Camera, CameraError, CameraTimeout
from .protocol import FRAME_TOPIC, decode_frame, encode_frame, new_stream_id, tcp_endpoint
from .types import Frame

log = logging.getLogger(__name__)

_MAX_FRAME_BYTES = 64 * 1024 * 1024  # 4K RGB is 25 MB; anything larger is not a camera frame


class FramePublisher:
    """Publishes camera frames on a PUB socket and re-sends the latest one periodically."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        republish_period_s: float = 0.1,
        curve_keys_dir: str | os.PathLike | None = None,
    ) -> None:
        self.republish_period_s = republish_period_s
        self.stream = new_stream_id()
        self._socket = context.socket(zmq.PUB)
        self._socket.linger = 0
        self._socket.sndhwm = 8  # a slow subscriber loses old frames, never stalls the arm server
        try:
            if curve_keys_dir is not None:
                curve.make_server_socket(self._socket, curve_keys_dir)
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise CameraError(
                f"cannot publish frames on {endpoint} ({exc}); choose another bridge.camera_port (0 = free)"
            ) from None
        except BaseException:
            self._socket.close()  # an open socket would block Context.term() forever
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq = -1
        self._latest: list[bytes] | None = None
        self._last_sent = 0.0

    def publish(self, rgb: np.ndarray, last_command_seq: int, t_capture: float | None = None) -> Frame:
        """Send a new frame: (H, W, 3) uint8 ``rgb`` captured at ``t_capture`` (default: now)."""
        self._seq += 1
        frame = Frame(
            rgb=rgb,
            t_capture=time.time() if t_capture is None else t_capture,
            seq=self._seq,
            last_command_seq=last_command_seq,
        )
        self._latest = encode_frame(frame, self.stream)
        self._send()
        return frame

    def time_to_republish(self) -> float:
        if self._latest is None:
            return float("inf")
        return self.republish_period_s - (time.monotonic() - self._last_sent)

    def maybe_republish(self) -> bool:
        """Re-send the latest frame when the period has passed; True when it did."""
        if self._latest is None or self.time_to_republish() > 0:
            return False
        self._send()
        return True

    def _send(self) -> None:
        try:
            self._socket.send_multipart(self._latest, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB drops rather than blocks; kept for safety on exotic transports
            log.debug("frame dropped: publisher queue full")
        self._last_sent = time.monotonic()

    def close(self) -> None:
        self._socket.close(linger=0)


class ZmqCamera(Camera):
    """The frames of a :class:`FramePublisher` (the sim arm server) as a :class:`~.camera.Camera`.

    A background thread receives every frame and keeps the last ``history`` distinct ones, so
    ``read(after_command_seq=k)`` can return the *first* frame taken after command ``k`` even when
    later frames already arrived. ``read()`` without it returns the newest frame received since the
    previous ``read`` (a publisher re-sends its latest frame periodically, so a live camera always has
    one), and raises :class:`~.camera.CameraTimeout` when the publisher fell silent.
    """

    def __init__(
        self,
        bridge: BridgeConfig,
        endpoint: str | None = None,
        context: zmq.Context | None = None,
        history: int = 64,
    ) -> None:
        self.bridge = bridge
        self.endpoint = endpoint or tcp_endpoint(bridge.host, bridge.camera_port)
        self._context = context
        self._own_context = context is None
        self._history: collections.deque[Frame] = collections.deque(maxlen=history)
        self._stream: str | None = None
        self._received = 0  # frame messages received, re-sent ones included
        self._read_mark = 0  # value of _received at the previous plain read
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self.bad_frames = 0

    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def connect(self) -> None:
        if self.is_connected:
            return
        if self._context is None or self._context.closed:
            self._context = zmq.Context()
            self._own_context = True
        sock = self._context.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 16
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_FRAME_BYTES + 8192)
        try:
            if self.bridge.curve_keys_dir is not None:
                curve.make_client_socket(sock, self.bridge.curve_keys_dir)
            sock.setsockopt(zmq.SUBSCRIBE, FRAME_TOPIC)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise CameraError(f"cannot connect to the camera stream {self.endpoint}: {exc}") from None
        except Exception:
            sock.close()
            raise
        self._socket = sock
        self._stop.clear()
        with self._cond:
            self._history.clear()
            self._stream = None
            self._received = self._read_mark = 0
        self._thread = threading.Thread(target=self._receive, name="zmq-camera", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    def _receive(self) -> None:
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                    stream, frame = decode_frame(parts, _MAX_FRAME_BYTES)
                except zmq.Again:
                    continue
                except ValueError as exc:
                    self.bad_frames += 1
                    log.warning("bad frame from %s ignored: %s", self.endpoint, exc)
                    continue
                self._add(stream, frame)
        finally:
            sock.close(linger=0)

    def _add(self, stream: str, frame: Frame) -> None:
        with self._cond:
            if stream != self._stream:  # the publisher restarted: its counters started over
                self._history.clear()
                self._stream = stream
            newest = self._history[-1] if self._history else None
            if newest is None or frame.seq > newest.seq:
                self._history.append(frame)
            self._received += 1
            self._cond.notify_all()

    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame:
        if not self.is_connected:
            raise CameraError("the camera is not connected; call connect() (or use it as a context manager)")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                frame = self._find(after_command_seq)
                if frame is not None:
                    return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout(timeout_s, after_command_seq)
                self._cond.wait(left)

    def _find(self, after_command_seq: int | None) -> Frame | None:
        if after_command_seq is None:
            if self._received > self._read_mark and self._history:
                self._read_mark = self._received
                return self._history[-1]
            return None
        return next((f for f in self._history if f.last_command_seq >= after_command_seq), None)

    def _timeout(self, timeout_s: float, after_command_seq: int | None) -> CameraTimeout:
        newest = self._history[-1] if self._history else None
        if after_command_seq is not None and newest is not None:
            return CameraTimeout(
                f"no frame after command {after_command_seq} from {self.endpoint} within {timeout_s:.2f} s "
                f"(newest frame follows command {newest.last_command_seq}); was the command applied?"
            )
        return CameraTimeout(
            f"no frame from {self.endpoint} within {timeout_s:.2f} s; is the arm server (sim) or frame "
            "publisher running and bridge.camera_port right?"
        )
