"""``arm-server``: the arm controller. Hosts one :class:`~.arm.ArmBackend` behind the ZeroMQ bridge.

The server owns safety for every backend: it clips each action to the per-step limits and the
workspace box, stops the arm when neither a command nor a heartbeat arrives within the watchdog
timeout, keeps a latched e-stop that only an explicit reset clears, refuses stale and duplicate
sequence numbers and oversized or malformed messages, and answers every problem with an error reply
instead of dying. Backends that render (the sim) get their frames published on the camera socket after
every step and reset. The wire format is in ``robot/PROTOCOL.md`` and :mod:`.protocol`.

One thread serves everything: requests are handled in arrival order and a step finishes before the
next request is read, which is what a real arm's single command queue does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import BridgeConfig, SafetyConfig
from . import curve
from .arm import ArmBackend
from .backends import BackendOptionError, FrameSource, SimulatorAccess, UnsupportedRequest, make_backend
from .protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    MsgType,
    ProtocolError,
    decode,
    encode,
    is_loopback,
    parse_action,
    parse_request,
    state_to_wire,
    tcp_endpoint,
    to_wire_value,
)
from .safety import ActionLimiter, SequenceGuard, Watchdog, was_clipped
from .types import ArmState
from .zmq_camera import FramePublisher

log = logging.getLogger(__name__)

READY_MARKER = "ARM_SERVER_READY"  # first stdout line of a started server: marker + JSON endpoints
_POLL_S = 0.05  # longest the loop sleeps, so a stop request is seen quickly
_MAX_BATCH = 256  # requests handled per wake-up before the watchdog and the camera get a turn


class InsecureBindError(UserError):
    """A non-loopback address without CurveZMQ keys."""


@dataclass(frozen=True)
class ServerEndpoints:
    command: str  # e.g. tcp://127.0.0.1:5555
    camera: str | None  # None when the backend does not render


class ArmServer:
    """The controller around one backend. ``start`` binds; ``serve`` handles requests until stopped."""

    def __init__(
        self,
        backend: ArmBackend,
        safety: SafetyConfig,
        bridge: BridgeConfig,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            not is_loopback(bridge.host)
            and bridge.curve_keys_dir is None
            and not bridge.allow_insecure_network
        ):
            raise InsecureBindError(
                f"refusing to expose the arm on {bridge.host!r} without authentication: set "
                "bridge.curve_keys_dir (keys from `arm-server --gen-keys DIR`), or bind 127.0.0.1, or set "
                "bridge.allow_insecure_network=true on an isolated network"
            )
        self.backend = backend
        self.safety = safety
        self.bridge = bridge
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self.clock = clock
        self.limiter = ActionLimiter(safety)
        self.watchdog = Watchdog(safety.watchdog_timeout_s)
        self.sequence = SequenceGuard()
        self.estopped = False
        self.watchdog_stopped = False
        self._last_seq_key: bytes | None = None  # identifies the request that consumed the last seq
        self._last_seq_reply: dict[str, Any] | None = None
        self._router: zmq.Socket | None = None
        self._publisher: FramePublisher | None = None
        self._auth: Any = None
        self.endpoints: ServerEndpoints | None = None
        self._closed = False
        self.requests_handled = 0
        self.errors_sent = 0

    # --- sockets ----------------------------------------------------------------------------------

    def start(self) -> ServerEndpoints:
        """Bind the command socket (and the camera socket when the backend renders); publish a first frame."""
        keys = self.bridge.curve_keys_dir
        if keys is not None:
            self._auth = curve.start_authenticator(self.context, keys)
        router = self.context.socket(zmq.ROUTER)
        router.linger = 0
        # Hard guard against memory exhaustion: ZeroMQ drops a peer that sends more than this. Requests
        # between max_message_bytes and this still get a TOO_LARGE reply.
        router.setsockopt(zmq.MAXMSGSIZE, 4 * self.safety.max_message_bytes + 4096)
        try:
            if keys is not None:
                curve.make_server_socket(router, keys)
            router.bind(tcp_endpoint(self.bridge.host, self.bridge.command_port))
        except zmq.ZMQError as exc:
            router.close()
            raise UserError(
                f"cannot listen on {self.bridge.host}:{self.bridge.command_port} ({exc}); another arm-server may "
                "be running, or choose bridge.command_port (0 picks a free port)"
            ) from None
        except BaseException:
            router.close()  # an open socket would block Context.term() forever
            raise
        self._router = router
        camera = None
        if isinstance(self.backend, FrameSource):
            self._publisher = FramePublisher(
                self.context,
                tcp_endpoint(self.bridge.host, self.bridge.camera_port),
                republish_period_s=self.bridge.camera_republish_period_s,
                curve_keys_dir=keys,
            )
            camera = self._publisher.endpoint
            self._publish_frame()
        self.endpoints = ServerEndpoints(command=router.getsockopt_string(zmq.LAST_ENDPOINT), camera=camera)
        log.info(
            "arm server (%s backend, protocol v%d) on %s, camera %s%s",
            self.backend.name,
            PROTOCOL_VERSION,
            self.endpoints.command,
            camera or "off",
            ", CurveZMQ" if keys else "",
        )
        return self.endpoints

    def close(self) -> None:
        """Stop the arm, release the backend and the sockets. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._safe_stop()
        try:
            self.backend.close()
        except Exception:
            log.exception("backend close failed during shutdown")
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self.context.term()

    # --- the loop ---------------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Handle requests, run the watchdog and re-publish frames until ``stop`` is set."""
        if self._router is None:
            self.start()
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            wait = min(_POLL_S, max(0.0, self.watchdog.time_left()))
            if self._publisher is not None:
                wait = min(wait, max(0.0, self._publisher.time_to_republish()))
            if poller.poll(wait * 1000):
                for _ in range(_MAX_BATCH):
                    try:
                        parts = router.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    self._serve_one(router, parts)
            if self.watchdog.check():
                self._watchdog_stop()
            if self._publisher is not None:
                self._publisher.maybe_republish()

    @contextmanager
    def running(self) -> Iterator[ServerEndpoints]:
        """Serve from a background thread (tests, benchmarks); stops and closes at exit."""
        try:
            endpoints = self.start()
        except BaseException:
            self.close()
            raise
        stop = threading.Event()
        thread = threading.Thread(target=self.serve, args=(stop,), name="arm-server", daemon=True)
        thread.start()
        try:
            yield endpoints
        finally:
            stop.set()
            thread.join(timeout=5.0)
            self.close()

    def _serve_one(self, router: zmq.Socket, parts: list[bytes]) -> None:
        identity, envelope, payload = parts[0], parts[1:-1], parts[-1]
        after: Callable[[], None] | None = None
        if len(parts) < 2 or len(envelope) > 1 or (envelope and envelope[0] != b""):
            reply = self._error(None, ErrorCode.BAD_MESSAGE, "send one message part (a DEALER socket)")
            envelope = []
        else:
            reply, after = self._handle(payload)
        try:
            router.send_multipart([identity, *envelope, encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the peer is gone or its queue is full: it will time out and retry
            log.debug("reply dropped: %s", exc)
        self.requests_handled += 1
        if after is not None:
            after()

    def _handle(self, payload: bytes) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """The reply to one request, and what to do once the reply is sent (publish a frame)."""
        req_id = None
        try:
            message = decode(payload, self.safety.max_message_bytes)
            req_id = message.get("id") if type(message.get("id")) is int else None
            msg_type, req_id = parse_request(message)
            return self._dispatch(msg_type, message, req_id)
        except ProtocolError as exc:
            if exc.code not in (ErrorCode.ESTOP_ACTIVE,):
                log.warning("request refused [%s]: %s", exc.code.value, exc.message)
            return self._error(req_id, exc.code, exc.message, extra=exc.extra), None
        except Exception as exc:
            log.exception("internal error while handling a request")
            self._safe_stop()
            return self._error(req_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), None

    def _dispatch(
        self, msg_type: MsgType, message: dict[str, Any], req_id: int
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        if msg_type is MsgType.COMMAND:
            return self._command(message, req_id), self._publish_frame
        if msg_type is MsgType.RESET_EPISODE:
            return self._reset_episode(message, req_id), self._publish_frame
        if msg_type is MsgType.HEARTBEAT:
            self.watchdog.feed()
        elif msg_type is MsgType.STOP:
            self.watchdog.armed = False
            self.backend.stop()
        elif msg_type is MsgType.ESTOP:
            self.estopped = True
            self.watchdog.armed = False
            self._safe_stop()
            log.warning("E-STOP latched by a client request")
        elif msg_type is MsgType.RESET_ESTOP:
            if self.estopped:
                log.warning("e-stop reset by a client request")
            self.estopped = False
        elif msg_type is MsgType.HELLO:
            reply = self._reply(req_id, MsgType.WELCOME, state=state_to_wire(self.state()))
            reply["server"] = self._describe()
            return reply, None
        elif msg_type is MsgType.GET_SIM_STATE:
            sim = self._simulator("get_sim_state")
            return self._reply(req_id, MsgType.SIM_STATE, sim_state=bytes(sim.sim_state())), None
        elif msg_type is MsgType.GET_SEGMENTATION:
            labels = np.ascontiguousarray(self._simulator("get_segmentation").segmentation(), dtype=np.int32)
            reply = self._reply(
                req_id, MsgType.SEGMENTATION, labels=labels.tobytes(), shape=list(labels.shape)
            )
            return reply, None
        return self._reply(req_id, MsgType.STATE, state=state_to_wire(self.state())), None

    # --- motion -----------------------------------------------------------------------------------

    def _check_sequenced(self, message: dict[str, Any], key: bytes) -> int:
        """E-stop, sequence number and age checks shared by the requests that move the arm."""
        seq = message["seq"]
        if self.estopped:
            raise ProtocolError(ErrorCode.ESTOP_ACTIVE, "e-stop is latched; send reset_estop before moving")
        try:
            self.sequence.check(seq)
        except ProtocolError as exc:
            if exc.code is ErrorCode.DUPLICATE_SEQ and key == self._last_seq_key:
                # The same request again (a client retry after a lost reply): say so and hand back the
                # first answer, so the client learns what was applied without applying it twice.
                exc.extra = {"previous": self._last_seq_reply}
            raise
        max_age = self.safety.max_command_age_s
        if max_age > 0 and self.clock() - message["t"] > max_age:
            raise ProtocolError(
                ErrorCode.STALE_COMMAND,
                f"command sent {self.clock() - message['t']:.3f} s ago, older than safety.max_command_age_s={max_age}",
            )
        self.sequence.accept(seq)  # consumed from here on, even if the backend fails
        self._last_seq_key = key
        self._last_seq_reply = None
        return seq

    def _command(self, message: dict[str, Any], req_id: int) -> dict[str, Any]:
        commanded = parse_action(message.get("action"))
        seq = self._check_sequenced(message, encode({"a": commanded.tolist()}))
        limited = self.limiter.limit(self.backend.pose(), commanded)
        try:
            executed = self.backend.apply(limited.applied.copy())
        except Exception as exc:
            log.exception("backend failed to apply seq %d", seq)
            self._safe_stop()
            raise ProtocolError(
                ErrorCode.BACKEND_ERROR, f"the arm failed to apply the action: {exc}"
            ) from None
        applied = limited.applied if executed is None else np.asarray(executed, dtype=np.float64).reshape(5)
        t_applied = self.clock()
        self.watchdog.arm()
        self.watchdog_stopped = False
        reply = self._reply(
            req_id,
            MsgType.APPLIED,
            seq=seq,
            commanded=commanded.tolist(),
            applied=applied.tolist(),
            clipped=was_clipped(commanded, applied),
            t_applied=t_applied,
            state=state_to_wire(self.state()),
        )
        self._last_seq_reply = reply
        return reply

    def _reset_episode(self, message: dict[str, Any], req_id: int) -> dict[str, Any]:
        options = message.get("options")
        options = {} if options is None else options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ProtocolError(ErrorCode.BAD_OPTIONS, "'options' must be a map with string keys")
        seq = self._check_sequenced(message, encode({"o": options}))
        try:
            self.backend.reset(options)
        except BackendOptionError as exc:
            raise ProtocolError(ErrorCode.BAD_OPTIONS, str(exc)) from None
        except UnsupportedRequest as exc:
            raise ProtocolError(ErrorCode.UNSUPPORTED, str(exc)) from None
        except UserError as exc:  # e.g. the sim refusing a state saved with another scene
            raise ProtocolError(ErrorCode.BAD_OPTIONS, str(exc)) from None
        except Exception as exc:
            log.exception("backend reset failed (seq %d)", seq)
            self._safe_stop()
            raise ProtocolError(ErrorCode.BACKEND_ERROR, f"episode reset failed: {exc}") from None
        self.watchdog.arm()
        self.watchdog_stopped = False
        log.info("episode reset (seq %d, options %s)", seq, sorted(options))
        reply = self._reply(req_id, MsgType.STATE, state=state_to_wire(self.state()))
        self._last_seq_reply = reply
        return reply

    def _watchdog_stop(self) -> None:
        self.watchdog_stopped = True
        log.warning(
            "watchdog: no command or heartbeat for %.3f s, stopping the arm", self.safety.watchdog_timeout_s
        )
        self._safe_stop()

    def _safe_stop(self) -> None:
        try:
            self.backend.stop()
        except Exception:
            log.exception("backend stop failed")

    # --- replies ----------------------------------------------------------------------------------

    def state(self) -> ArmState:
        return ArmState(
            pose=np.asarray(self.backend.pose(), dtype=np.float64),
            t=self.clock(),
            estopped=self.estopped,
            watchdog_stopped=self.watchdog_stopped,
            last_command_seq=self.sequence.last,
            info=to_wire_value(self.backend.info()),
        )

    def _simulator(self, request: str) -> SimulatorAccess:
        if not isinstance(self.backend, SimulatorAccess):
            raise ProtocolError(
                ErrorCode.UNSUPPORTED, f"{request} needs the sim backend; this is {self.backend.name!r}"
            )
        return self.backend

    def _describe(self) -> dict[str, Any]:
        ws = self.safety.workspace
        return {
            "protocol": PROTOCOL_VERSION,
            "backend": self.backend.name,
            "camera": self.endpoints.camera if self.endpoints else None,
            "sim": isinstance(self.backend, SimulatorAccess),
            "workspace": {
                k: [getattr(ws, k).low, getattr(ws, k).high] for k in ("x", "y", "z", "yaw", "gripper")
            },
            "step_limits": self.safety.step_limits.model_dump(),
            "watchdog_timeout_s": self.safety.watchdog_timeout_s,
            "max_message_bytes": self.safety.max_message_bytes,
        }

    def _reply(self, req_id: int | None, msg_type: MsgType, **fields: Any) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "type": msg_type.value, "id": req_id, "t": self.clock(), **fields}

    def _error(
        self, req_id: int | None, code: ErrorCode, message: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self.errors_sent += 1
        reply = self._reply(req_id, MsgType.ERROR, code=code.value, message=message, **(extra or {}))
        try:
            reply["state"] = state_to_wire(self.state())
        except Exception:
            log.exception("could not read the arm state for an error reply")
        return reply

    def _publish_frame(self) -> None:
        if self._publisher is None:
            return
        try:
            rgb = self.backend.render()  # type: ignore[attr-defined]
        except Exception:
            log.exception("rendering a camera frame failed")
            return
        self._publisher.publish(rgb, last_command_seq=self.sequence.last, t_capture=self.clock())


# --- command line ----------------------------------------------------------------------------------

_EXAMPLES = """
  arm-server --backend sim                      # MuJoCo tabletop on 127.0.0.1:5555, frames on :5556
  arm-server --backend dry -v                   # no hardware: logs actions, integrates poses
  arm-server --backend sim --set safety.watchdog_timeout_s=1.0 --set sim.image_size=128
  arm-server --backend dry --port 0 --camera-port 0   # free ports, printed on the ready line
  arm-server --gen-keys ~/.maskvit/keys         # CurveZMQ key pairs for a networked arm
  arm-server --backend dry --workspace-file workspace.yaml   # the box from calibrate-workspace
  arm-server --backend sim --host 0.0.0.0 --set bridge.curve_keys_dir=~/.maskvit/keys
"""


def _parser() -> Any:
    parser = make_parser(
        "arm-server",
        "Arm controller: serves one arm backend over the ZeroMQ bridge (protocol in robot/PROTOCOL.md) "
        "and enforces the safety limits (workspace box, step caps, watchdog, latched e-stop). The first "
        f"stdout line is '{READY_MARKER} {{json endpoints}}' once it listens.",
        _EXAMPLES,
    )
    parser.add_argument("--backend", choices=["sim", "dry"], default="sim", help="what the server drives")
    parser.add_argument("--host", help="address to bind (overrides bridge.host); non-loopback needs keys")
    parser.add_argument(
        "--port", type=int, help="command port (overrides bridge.command_port; 0 = free port)"
    )
    parser.add_argument(
        "--camera-port", type=int, help="camera port (overrides bridge.camera_port; 0 = free)"
    )
    parser.add_argument(
        "--gen-keys", metavar="DIR", help="create CurveZMQ server and client key pairs in DIR, then exit"
    )
    parser.add_argument(
        "--workspace-file",
        metavar="YAML",
        help="enforce the workspace box of this calibrate-workspace file instead of safety.workspace",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is gone (the launcher of a --sim run passes its own pid, so a "
        "killed mpc-run or collect-finetune-data never leaves an orphaned server)",
    )
    return parser


def watch_parent(parent_pid: int, on_gone: Callable[[], None], period_s: float = 0.25) -> None:
    """Call ``on_gone`` (in a daemon thread) once the process ``parent_pid`` is gone, killed or crashed:
    a launched process that should not outlive its launcher."""

    def watch() -> None:
        while os.getppid() == parent_pid:  # the kernel re-parents an orphan, so this changes
            time.sleep(period_s)
        log.warning("parent process %d is gone: shutting down", parent_pid)
        on_gone()

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.gen_keys:
        folder = curve.generate_keys(args.gen_keys)
        print(
            f"keys written to {folder}: give the server host server.key_secret and {curve.AUTHORIZED_DIR}/, "
            "each client host client.key_secret and server.key; set bridge.curve_keys_dir on both"
        )
        return 0
    overrides = []
    if args.host is not None:
        overrides.append(f"bridge.host={args.host}")
    if args.port is not None:
        overrides.append(f"bridge.command_port={args.port}")
    if args.camera_port is not None:
        overrides.append(f"bridge.camera_port={args.camera_port}")
    cfg = config_from_args(args, overrides)
    if args.workspace_file is not None:
        from .calibration_files import load_workspace

        workspace = load_workspace(args.workspace_file)
        cfg.safety.workspace = workspace.workspace
        log.info("workspace from %s (%s)", args.workspace_file, workspace.id)
    if cfg.bridge.curve_keys_dir is not None:
        from pathlib import Path

        cfg.bridge.curve_keys_dir = str(Path(cfg.bridge.curve_keys_dir).expanduser())
    backend = make_backend(args.backend, cfg)
    server = ArmServer(backend, cfg.safety, cfg.bridge)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, stop.set)
    try:
        endpoints = server.start()
        print(
            f"{READY_MARKER} {json.dumps({'command': endpoints.command, 'camera': endpoints.camera})}",
            flush=True,
        )
        server.serve(stop)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
