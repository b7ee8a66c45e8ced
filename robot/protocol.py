"""Wire format of the arm bridge, version 1 (the prose and the reasons are in ``robot/PROTOCOL.md``).

Every request and reply is one msgpack map. Requests carry ``v`` (protocol version), ``type``, ``id``
(chosen by the client, echoed in the reply) and ``t`` (send time, seconds since the epoch). Commands and
episode resets also carry ``seq``, the arm-command sequence number, strictly increasing per server.
Camera frames travel on a separate PUB socket as three frames: topic, msgpack header, raw pixels.

This module only converts between Python values and bytes and checks shapes and types; the safety
rules (clipping, watchdog, e-stop, sequence numbers) live in :mod:`.safety` and :mod:`.server`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from enum import Enum
from typing import Any

import msgpack
import numpy as np

from .arm import ArmError
from .types import ACTION_DIM, AppliedAction, ArmState, Frame

PROTOCOL_VERSION = 1
FRAME_TOPIC = b"frame"


class MsgType(str, Enum):
    """Request types (client -> server) and reply types (server -> client)."""

    # requests
    HELLO = "hello"
    COMMAND = "command"
    HEARTBEAT = "heartbeat"
    GET_STATE = "get_state"
    STOP = "stop"
    ESTOP = "estop"
    RESET_ESTOP = "reset_estop"
    RESET_EPISODE = "reset_episode"
    GET_SIM_STATE = "get_sim_state"
    GET_SEGMENTATION = "get_segmentation"
    # replies
    WELCOME = "welcome"
    APPLIED = "applied"
    STATE = "state"
    SIM_STATE = "sim_state"
    SEGMENTATION = "segmentation"
    ERROR = "error"


REQUEST_TYPES = frozenset(
    {
        MsgType.HELLO,
        MsgType.COMMAND,
        MsgType.HEARTBEAT,
        MsgType.GET_STATE,
        MsgType.STOP,
        MsgType.ESTOP,
        MsgType.RESET_ESTOP,
        MsgType.RESET_EPISODE,
        MsgType.GET_SIM_STATE,
        MsgType.GET_SEGMENTATION,
    }
)
SEQUENCED_TYPES = frozenset({MsgType.COMMAND, MsgType.RESET_EPISODE})  # they move the arm: carry ``seq``


class ErrorCode(str, Enum):
    """The ``code`` of an error reply. PROTOCOL.md says when each is sent."""

    BAD_MESSAGE = "BAD_MESSAGE"  # not msgpack, not a map, a field missing or of the wrong type
    TOO_LARGE = "TOO_LARGE"  # request above SafetyConfig.max_message_bytes
    BAD_VERSION = "BAD_VERSION"  # ``v`` is not a version this server speaks
    UNKNOWN_TYPE = "UNKNOWN_TYPE"  # ``type`` is not a request type
    BAD_ACTION = "BAD_ACTION"  # not 5 finite numbers
    STALE_SEQ = "STALE_SEQ"  # seq below the last accepted one
    DUPLICATE_SEQ = "DUPLICATE_SEQ"  # seq equal to the last accepted one
    STALE_COMMAND = "STALE_COMMAND"  # sent longer ago than SafetyConfig.max_command_age_s
    ESTOP_ACTIVE = "ESTOP_ACTIVE"  # motion refused until reset_estop
    BAD_OPTIONS = "BAD_OPTIONS"  # reset_episode options the backend cannot use
    UNSUPPORTED = "UNSUPPORTED"  # a request this backend does not offer (sim-only on a real arm)
    BACKEND_ERROR = "BACKEND_ERROR"  # the backend raised; the server stopped the arm
    INTERNAL = "INTERNAL"  # a bug in the server; it keeps serving


class ProtocolError(Exception):
    """A request the server answers with an error reply (raised and caught inside the server)."""

    def __init__(self, code: ErrorCode, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra  # more reply fields (DUPLICATE_SEQ: the first reply to that seq)


class RemoteError(ArmError):
    """The controller answered a request with an error reply; ``code`` is its :class:`ErrorCode`."""

    def __init__(self, code: str, message: str, reply: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"arm controller refused the request [{code}]: {message}")
        self.code = code
        self.reply = dict(reply or {})


def new_stream_id() -> str:
    """A random id per publisher start: subscribers drop their history when it changes."""
    return secrets.token_hex(4)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``; port 0 asks ZeroMQ for a free port (the ``*`` wildcard, servers only)."""
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{port if port else '*'}"


# --- bytes <-> maps ------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """One msgpack map from ``payload``; raises :class:`ProtocolError` for anything else."""
    if len(payload) > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"message of {len(payload)} bytes exceeds the {max_bytes} limit"
        )
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types (ValueError, StackError, ...)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"a message must be a map, got {type(message).__name__}")
    return message


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_request(message: Mapping[str, Any]) -> tuple[MsgType, int | None]:
    """Check the envelope (version, type, id, t); returns the type and the request id."""
    req_id = message.get("id")
    if req_id is not None and not _is_int(req_id):
        req_id = None
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {message.get('v')!r} not supported; this server speaks 1",
        )
    kind = message.get("type")
    try:
        msg_type = MsgType(kind) if isinstance(kind, str) else None
    except ValueError:
        msg_type = None
    if msg_type is None or msg_type not in REQUEST_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind!r}")
    if not _is_int(message.get("id")):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 'id' must be an integer")
    t = message.get("t")
    if not _is_number(t) or not math.isfinite(t):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "field 't' must be a finite send time (seconds)")
    if msg_type in SEQUENCED_TYPES and not (_is_int(message.get("seq")) and 0 <= message["seq"] < 2**63):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{msg_type.value} needs an integer 'seq' in [0, 2**63)")
    return msg_type, req_id


def parse_action(value: Any) -> np.ndarray:
    """The 5-D action of a command as float64; non-finite values are refused, never clipped."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != ACTION_DIM
        or not all(_is_number(v) for v in value)
    ):
        raise ProtocolError(ErrorCode.BAD_ACTION, f"'action' must be a list of {ACTION_DIM} numbers")
    try:
        action = np.array([float(v) for v in value], dtype=np.float64)
    except OverflowError:  # integers beyond float range
        raise ProtocolError(ErrorCode.BAD_ACTION, "'action' holds a number out of float range") from None
    if not np.all(np.isfinite(action)):
        raise ProtocolError(ErrorCode.BAD_ACTION, "'action' must hold finite numbers (no NaN or inf)")
    return action


# --- values <-> wire maps -----------------------------------------------------------------------


def state_to_wire(state: ArmState) -> dict[str, Any]:
    return {
        "pose": [float(v) for v in state.pose],
        "t": float(state.t),
        "estopped": bool(state.estopped),
        "watchdog_stopped": bool(state.watchdog_stopped),
        "last_command_seq": int(state.last_command_seq),
        "info": state.info,
    }


def state_from_wire(wire: Mapping[str, Any]) -> ArmState:
    info = wire.get("info") or {}
    return ArmState(
        pose=np.asarray(wire["pose"], dtype=np.float64),
        t=float(wire["t"]),
        estopped=bool(wire["estopped"]),
        watchdog_stopped=bool(wire["watchdog_stopped"]),
        last_command_seq=int(wire["last_command_seq"]),
        info=_info_from_wire(info),
    )


def _info_from_wire(info: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(info)
    objects = out.get("objects")
    if isinstance(objects, dict):
        out["objects"] = {str(k): np.asarray(v, dtype=np.float64) for k, v in objects.items()}
    return out


def applied_to_wire(applied: AppliedAction) -> dict[str, Any]:
    return {
        "seq": int(applied.seq),
        "commanded": [float(v) for v in applied.commanded],
        "applied": [float(v) for v in applied.applied],
        "clipped": bool(applied.clipped),
        "t_applied": float(applied.t_applied),
        "state": state_to_wire(applied.state),
    }


def applied_from_wire(wire: Mapping[str, Any]) -> AppliedAction:
    return AppliedAction(
        seq=int(wire["seq"]),
        commanded=np.asarray(wire["commanded"], dtype=np.float64),
        applied=np.asarray(wire["applied"], dtype=np.float64),
        clipped=bool(wire["clipped"]),
        t_applied=float(wire["t_applied"]),
        state=state_from_wire(wire["state"]),
    )


def to_wire_value(value: Any) -> Any:
    """Numpy arrays and scalars as plain lists and numbers, recursively, so msgpack can pack them."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_wire_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire_value(v) for v in value]
    return value


# --- camera frames -------------------------------------------------------------------------------


def encode_frame(frame: Frame, stream: str) -> list[bytes]:
    """The three ZeroMQ message parts of one frame: topic, header, C-ordered uint8 pixels."""
    rgb = np.ascontiguousarray(frame.rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frames are (H, W, 3) uint8, got shape {rgb.shape}")
    header = {
        "v": PROTOCOL_VERSION,
        "stream": stream,
        "seq": int(frame.seq),
        "t_capture": float(frame.t_capture),
        "last_command_seq": int(frame.last_command_seq),
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "encoding": "rgb8",
    }
    return [FRAME_TOPIC, encode(header), rgb.tobytes()]


def decode_frame(parts: list[bytes], max_bytes: int) -> tuple[str, Frame]:
    """(stream id, frame) from the parts of one frame message; raises ValueError when malformed."""
    if len(parts) != 3 or parts[0] != FRAME_TOPIC:
        raise ValueError(f"a frame message has 3 parts starting with {FRAME_TOPIC!r}")
    try:
        header = decode(parts[1], max_bytes=4096)
    except ProtocolError as exc:
        raise ValueError(f"bad frame header: {exc.message}") from None
    if header.get("v") != PROTOCOL_VERSION or header.get("encoding") != "rgb8":
        raise ValueError(f"unsupported frame version/encoding {header.get('v')!r}/{header.get('encoding')!r}")
    h, w = header.get("height"), header.get("width")
    fields = (h, w, header.get("seq"), header.get("last_command_seq"))
    if not all(_is_int(x) for x in fields) or not (0 < h <= 8192 and 0 < w <= 8192):
        raise ValueError("frame header needs integer height, width, seq and last_command_seq")
    if not _is_number(header.get("t_capture")) or not isinstance(header.get("stream"), str):
        raise ValueError("frame header needs a numeric t_capture and a stream id")
    pixels = parts[2]
    if len(pixels) != h * w * 3 or len(pixels) > max_bytes:
        raise ValueError(f"frame of {len(pixels)} bytes does not match {h}x{w}x3")
    rgb = np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, 3).copy()
    frame = Frame(
        rgb=rgb,
        t_capture=float(header["t_capture"]),
        seq=int(header["seq"]),
        last_command_seq=int(header["last_command_seq"]),
    )
    return header["stream"], frame
