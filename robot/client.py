"""ZmqArm: the :class:`~.arm.Arm` a control loop holds, talking to ``arm-server`` over ZeroMQ.

Every call returns or raises within ``request_timeout_s x (retries + 1)`` (plus a few milliseconds):
each attempt waits ``request_timeout_s`` for the reply; after a timeout the DEALER socket is thrown
away (linger 0, so nothing queued on it is ever delivered late) and a fresh one re-sends the request.
A command re-sent after a lost reply carries the same sequence number, so the server never applies it
twice: it answers DUPLICATE_SEQ with its first reply, which this client returns as the result.

An optional background thread sends heartbeats on its own socket, so the server's watchdog does not
stop the arm while the control loop is planning; it stops when this process dies or loses the link.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from ..configs.schema import BridgeConfig
from . import curve
from .arm import Arm, ArmError, ArmTimeout, EStopActive
from .protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    MsgType,
    RemoteError,
    applied_from_wire,
    decode,
    encode,
    state_from_wire,
    tcp_endpoint,
    to_wire_value,
)
from .types import ACTION_DIM, AppliedAction, ArmState

log = logging.getLogger(__name__)

_MAX_REPLY_BYTES = 64 * 1024 * 1024  # replies are small; a segmentation map at 1024x1024 is 4 MB


class _Channel:
    """One DEALER connection with timeouts, request ids and socket recreation. Not thread-safe."""

    def __init__(self, context: zmq.Context, endpoint: str, bridge: BridgeConfig) -> None:
        self.context = context
        self.endpoint = endpoint
        self.bridge = bridge
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        try:
            sock.linger = 0
            sock.sndtimeo = 0
            if self.bridge.curve_keys_dir is not None:
                curve.make_client_socket(sock, self.bridge.curve_keys_dir)
            sock.connect(self.endpoint)
        except BaseException:
            sock.close(linger=0)  # an open socket would block Context.term() forever
            raise
        return sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def request(self, message: dict[str, Any], timeout_s: float, retries: int) -> dict[str, Any]:
        """Send ``message`` (v, id and t added) and return its reply; ``attempts`` says how many sends it took.

        Raises :class:`ArmTimeout` when none of the ``retries + 1`` attempts was answered in ``timeout_s``.
        """
        self.attempts = 0
        for attempt in range(retries + 1):
            self.attempts = attempt + 1
            if self._socket is None:
                self._socket = self._open()
            req_id = next(self._ids)
            payload = encode({**message, "v": PROTOCOL_VERSION, "id": req_id, "t": time.time()})
            deadline = time.monotonic() + timeout_s
            try:
                self._socket.send(payload, zmq.NOBLOCK)
                reply = self._wait(req_id, deadline)
            except zmq.ZMQError as exc:
                log.debug("request to %s failed: %s", self.endpoint, exc)
                reply = None
                time.sleep(max(0.0, deadline - time.monotonic()))
            if reply is not None:
                return reply
            log.warning(
                "arm controller at %s silent for %.2f s (attempt %d/%d)",
                self.endpoint,
                timeout_s,
                attempt + 1,
                retries + 1,
            )
            self.close()  # a fresh socket: a late reply to this attempt can never be mistaken for the next
        raise ArmTimeout(
            f"the arm controller at {self.endpoint} did not answer {message.get('type')!r} within "
            f"{timeout_s:.2f} s x {retries + 1} attempts; check that arm-server is running and reachable "
            "(bridge.host / bridge.command_port, CurveZMQ keys)"
        )

    def _wait(self, req_id: int, deadline: float) -> dict[str, Any] | None:
        sock = self._socket
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                return None
            raw = sock.recv(zmq.NOBLOCK)
            try:
                reply = decode(raw, _MAX_REPLY_BYTES)
            except Exception:
                log.warning("unreadable reply from %s ignored", self.endpoint)
                continue
            if reply.get("id") == req_id:
                return reply
            if reply.get("id") is None and reply.get("type") == MsgType.ERROR.value:
                return reply  # the server could not read our request's id
            log.debug("reply to an older request (%s) ignored", reply.get("id"))


class ZmqArm(Arm):
    """The arm behind ``arm-server`` at ``endpoint`` (default: ``bridge.host:bridge.command_port``)."""

    def __init__(
        self,
        bridge: BridgeConfig,
        endpoint: str | None = None,
        heartbeat: bool | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.bridge = bridge
        self.endpoint = endpoint or tcp_endpoint(bridge.host, bridge.command_port)
        self.heartbeat_enabled = bridge.client_heartbeat if heartbeat is None else heartbeat
        self._context = context
        self._own_context = context is None
        self._channel: _Channel | None = None
        self._lock = threading.Lock()
        self._seqs = itertools.count(0)  # next() is atomic: safe from several threads
        self.server_info: dict[str, Any] = {}
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self.heartbeat_failures = 0  # consecutive heartbeats without an answer
        self.last_heartbeat_state: ArmState | None = None

    @property
    def request_bound_s(self) -> float:
        """Longest any call can take before it raises ArmTimeout (plus scheduling slack)."""
        return self.bridge.request_timeout_s * (self.bridge.retries + 1)

    # --- lifecycle --------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and greet the server (raises ArmTimeout when nobody answers)."""
        if self._channel is not None:
            return
        if self._context is None or self._context.closed:
            self._context = zmq.Context()
            self._own_context = True
        self._channel = _Channel(self._context, self.endpoint, self.bridge)
        try:
            reply = self._request({"type": MsgType.HELLO.value})
        except BaseException:
            self.disconnect()
            raise
        self.server_info = dict(reply.get("server") or {})
        if self.server_info.get("protocol") != PROTOCOL_VERSION:
            self.disconnect()
            raise ArmError(
                f"arm-server speaks protocol {self.server_info.get('protocol')!r}, this client {PROTOCOL_VERSION}; "
                "install the same maskvit-mpc version on both hosts"
            )
        # Sequence numbers are per server: continue above whatever earlier clients sent.
        self._seqs = itertools.count(state_from_wire(reply["state"]).last_command_seq + 1)
        if self.heartbeat_enabled:
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="arm-heartbeat", daemon=True)
            self._hb_thread.start()

    def disconnect(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=self.request_bound_s + 1.0)
            self._hb_thread = None
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # --- requests ---------------------------------------------------------------------------------

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request with retries; error replies raise (EStopActive, RemoteError)."""
        if self._channel is None:
            raise ArmError("the arm is not connected; call connect() (or use it as a context manager)")
        with self._lock:
            reply = self._channel.request(message, self.bridge.request_timeout_s, self.bridge.retries)
            retried = self._channel.attempts > 1
        if reply.get("type") != MsgType.ERROR.value:
            return reply
        code, text = str(reply.get("code")), str(reply.get("message"))
        if code == ErrorCode.DUPLICATE_SEQ.value and retried and isinstance(reply.get("previous"), dict):
            return reply["previous"]  # our first attempt was applied; its reply had been lost
        if code == ErrorCode.ESTOP_ACTIVE.value:
            raise EStopActive(f"the arm's e-stop is latched ({text}); clear it with reset_estop() once safe")
        raise RemoteError(code, text, reply)

    def _take_seq(self) -> int:
        return next(
            self._seqs
        )  # a failed request leaves a gap: fine, the server only needs increasing numbers

    def send_action(self, action: np.ndarray) -> AppliedAction:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise ArmError(
                f"an action is {ACTION_DIM} finite numbers (dx, dy, dz, dyaw, gripper); got {action!r}"
            )
        reply = self._request({"type": MsgType.COMMAND.value, "seq": self._take_seq(), "action": a.tolist()})
        return applied_from_wire(reply)

    def _state_request(self, msg_type: MsgType, **fields: Any) -> ArmState:
        return state_from_wire(self._request({"type": msg_type.value, **fields})["state"])

    def read_state(self) -> ArmState:
        return self._state_request(MsgType.GET_STATE)

    def heartbeat(self) -> ArmState:
        """One heartbeat on the command connection (the background thread uses its own)."""
        return self._state_request(MsgType.HEARTBEAT)

    def stop(self) -> ArmState:
        return self._state_request(MsgType.STOP)

    def estop(self) -> ArmState:
        return self._state_request(MsgType.ESTOP)

    def reset_estop(self) -> ArmState:
        return self._state_request(MsgType.RESET_ESTOP)

    def reset_episode(self, options: Mapping[str, Any] | None = None) -> ArmState:
        """New episode. Sim options: ``{"seed": s, "task": "push"}``, ``{"state": bytes}`` or ``{"seed": s}``.

        The returned state's ``last_command_seq`` is the reset's own sequence number: read the camera
        with ``after_command_seq=state.last_command_seq`` to get the first frame of the episode.
        """
        opts = to_wire_value(dict(options or {}))
        return self._state_request(MsgType.RESET_EPISODE, seq=self._take_seq(), options=opts)

    def sim_state(self) -> bytes:
        """Sim only: the full simulator state (load it with ``TabletopSim.set_state``)."""
        return bytes(self._request({"type": MsgType.GET_SIM_STATE.value})["sim_state"])

    def segmentation(self) -> np.ndarray:
        """Sim only: (H, W) int32 labels of the current scene (0 background, 1 gripper, 2 + i objects)."""
        reply = self._request({"type": MsgType.GET_SEGMENTATION.value})
        h, w = (int(v) for v in reply["shape"])
        return np.frombuffer(reply["labels"], dtype=np.int32).reshape(h, w).copy()

    # --- heartbeat ---------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        channel = _Channel(self._context, self.endpoint, self.bridge)
        try:
            while not self._hb_stop.wait(self.bridge.heartbeat_period_s):
                try:
                    reply = channel.request(
                        {"type": MsgType.HEARTBEAT.value}, self.bridge.request_timeout_s, 0
                    )
                except ArmTimeout:
                    self.heartbeat_failures += 1
                    continue
                self.heartbeat_failures = 0
                if "state" in reply:
                    self.last_heartbeat_state = state_from_wire(reply["state"])
        except Exception:
            log.exception("heartbeat thread stopped")
        finally:
            channel.close()


class ZmqSimProbe:
    """Sim-only extras of a :class:`ZmqArm` under the names episode recording uses (``state``, ``segmentation``)."""

    def __init__(self, arm: ZmqArm) -> None:
        self.arm = arm

    def state(self) -> bytes:
        """The full simulator state (``TabletopSim.get_state`` bytes)."""
        return self.arm.sim_state()

    def segmentation(self) -> np.ndarray:
        """(H, W) int32 object labels of the current scene."""
        return self.arm.segmentation()
