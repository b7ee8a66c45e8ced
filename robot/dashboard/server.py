"""``mpc-dashboard``: serve the operator page for a run, and E-STOP the arm from it.

Three sides, one asyncio loop:

* **telemetry in**: a SUB socket on the run's telemetry (:mod:`maskvit_mpc.robot.telemetry`); each
  message becomes a JSON update (images as base64 JPEG) for the browsers;
* **browsers**: aiohttp serves the page (package data in ``static/``) and one websocket per page. Each
  page has its own latest-wins mailbox per kind of update, so a slow link gets fewer frames, never a
  growing backlog; step records (the action history) are kept in order;
* **control out**: its own client of the arm server for E-STOP (no token: stopping is always allowed)
  and for resetting it (token), and the run's control channel for pause (no token) and resume (token).

The dashboard is a viewer: it never sends motion, and if it crashes or lags the run does not notice.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from ...configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ...configs.errors import UserError
from ...configs.schema import BridgeConfig
from ..arm import ArmError
from ..client import ZmqArm
from ..protocol import is_loopback
from ..telemetry import DEFAULT_TELEMETRY_PORT, TelemetryError, control_request, decode_message

log = logging.getLogger("maskvit_mpc.robot.dashboard.server")  # also when run with -m

READY_MARKER = "DASHBOARD_READY"  # first stdout line once serving: marker + JSON {url, token, ...}
TOKEN_HEADER = "X-Control-Token"
TOKEN_ENV = "MASKVIT_DASHBOARD_TOKEN"
STATIC_DIR = Path(__file__).resolve().parent / "static"
_ARM_POLL_S = 0.5  # controller status refresh
_LINK_PERIOD_S = 1.0  # how often pages learn whether telemetry still flows
_STEP_HISTORY = 200  # step records a newly opened page receives
_WS_WRITER_LIMIT = 64 * 1024  # bytes buffered per page before a send waits: small, so slow links skip frames


# --- what the page is sent ---------------------------------------------------------------------


def to_browser(value: Any) -> Any:
    """Telemetry values as JSON values: bytes (JPEG) become base64 text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_browser(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_browser(v) for v in value]
    return value


class Mailbox:
    """One page's pending updates: the latest of each kind, plus every step record in order.

    ``put`` never waits; the page's sender takes everything pending whenever its previous send has
    gone out, so a slow link drops intermediate frames instead of queueing them.
    """

    def __init__(self, max_steps: int = _STEP_HISTORY) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.steps: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_steps)
        self.ready = asyncio.Event()
        self.replaced = 0  # updates overwritten before they were sent

    def put(self, update: dict[str, Any]) -> None:
        if update["type"] == "step":
            self.steps.append(update)
        else:
            if update["type"] in self.latest:
                self.replaced += 1
            self.latest[update["type"]] = update
        self.ready.set()

    def take(self) -> list[dict[str, Any]]:
        # Step records before the frame and plan that follow them, so the page pairs them correctly.
        out = list(self.steps) + list(self.latest.values())
        self.steps.clear()
        self.latest.clear()
        self.ready.clear()
        return out


@dataclass
class DashboardState:
    """What a page needs on connect, kept up to date from telemetry and the arm polls."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_STEP_HISTORY))
    run_id: str | None = None
    last_message_t: float | None = None  # monotonic
    received: collections.Counter = field(default_factory=collections.Counter)
    bad_messages: int = 0

    def ingest(self, topic: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record one telemetry message; returns the page update made from it."""
        if body.get("run") != self.run_id:  # a new run: forget the old one's plan, steps and progress
            self.run_id = body.get("run")
            self.steps.clear()
            for key in ("frame", "plan", "episode", "collect", "status"):
                self.latest.pop(key, None)
        self.last_message_t = time.monotonic()
        self.received[topic] += 1
        update = to_browser(body)
        if topic == "step":
            self.steps.append(update)
        else:
            self.latest[topic] = update
        return update

    def snapshot(self) -> list[dict[str, Any]]:
        return [*self.steps, *self.latest.values()]


def check_token(expected: str, presented: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    return bool(presented) and hmac.compare_digest(expected.encode(), str(presented).encode())


def allowed_hosts(bind_host: str, port: int) -> set[str]:
    """Host headers accepted on a loopback dashboard (a DNS-rebinding page sends its own name)."""
    names = {"127.0.0.1", "localhost", "[::1]", bind_host if ":" not in bind_host else f"[{bind_host}]"}
    return {f"{n}:{port}" for n in names} | ({*names} if port == 80 else set())


# --- the dashboard's own link to the arm server ---------------------------------------------------


class ArmLink:
    """Two clients of the arm server, each on its own thread: one only for E-STOP and its reset, so a
    slow status poll never delays a stop; one for the status polls."""

    def __init__(self, bridge: BridgeConfig) -> None:
        self.bridge = bridge
        self.endpoint: str | None = None
        self._control_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arm-estop")
        self._poll_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arm-poll")
        self._clients: dict[str, ZmqArm] = {}  # "control" / "poll" -> a connected client
        self._lock = threading.Lock()

    def target(self, endpoint: str | None) -> None:
        """Point at ``endpoint`` (a new run may bring a new arm server)."""
        if endpoint == self.endpoint or not endpoint:
            return
        log.info("arm controller: %s", endpoint)
        self.endpoint = endpoint
        with self._lock:
            old, self._clients = self._clients, {}
        for client in old.values():
            threading.Thread(target=_quiet_disconnect, args=(client,), daemon=True).start()

    def _client(self, role: str) -> ZmqArm:
        if self.endpoint is None:
            raise ArmError(
                "no arm controller known yet: start mpc-dashboard with --arm ENDPOINT, or wait for a run's "
                "telemetry to announce it"
            )
        with self._lock:
            client = self._clients.get(role)
        if client is None or client.endpoint != self.endpoint:
            client = ZmqArm(self.bridge, endpoint=self.endpoint, heartbeat=False)
            client.connect()  # raises ArmTimeout when nobody answers
            with self._lock:
                self._clients[role] = client
        return client

    def _call(self, role: str, method: str) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            state = getattr(self._client(role), method)()
        except ArmError as exc:
            if role in self._clients:  # a fresh connection next time
                with self._lock:
                    client = self._clients.pop(role, None)
                if client is not None:
                    _quiet_disconnect(client)
            return {"reachable": False, "endpoint": self.endpoint, "error": str(exc)}
        return {
            "reachable": True,
            "endpoint": self.endpoint,
            "rtt_ms": 1000.0 * (time.monotonic() - t0),
            "estopped": state.estopped,
            "watchdog_stopped": state.watchdog_stopped,
            "pose": [float(v) for v in state.pose],
            "last_command_seq": state.last_command_seq,
            "t": state.t,
        }

    async def estop(self) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(
            self._control_pool, self._call, "control", "estop"
        )

    async def reset_estop(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._control_pool, self._call, "control", "reset_estop")

    async def poll(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._poll_pool, self._call, "poll", "read_state")

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            _quiet_disconnect(client)
        self._control_pool.shutdown(wait=False, cancel_futures=True)
        self._poll_pool.shutdown(wait=False, cancel_futures=True)


def _quiet_disconnect(client: ZmqArm) -> None:
    try:
        client.disconnect()
    except Exception:
        log.debug("disconnect failed", exc_info=True)


# --- the server --------------------------------------------------------------------------------


@dataclass
class DashboardOptions:
    telemetry: str = f"tcp://127.0.0.1:{DEFAULT_TELEMETRY_PORT}"
    arm: str | None = None  # the arm server's command endpoint; None: take the one a run announces
    host: str = "127.0.0.1"
    port: int = 8765  # 0: a free port
    token: str = ""
    allow_network: bool = False
    bridge: BridgeConfig = field(default_factory=BridgeConfig)


class Dashboard:
    """The aiohttp application and its background tasks. ``start`` binds; ``stop`` closes everything."""

    def __init__(self, options: DashboardOptions) -> None:
        if not is_loopback(options.host) and not options.allow_network:
            raise UserError(
                f"refusing to serve the dashboard on {options.host!r}: camera images would be open to that "
                "network and the token travels unencrypted; bind 127.0.0.1 (reach it over an SSH tunnel) "
                "or pass --allow-network on an isolated network"
            )
        self.options = options
        self.token = options.token or secrets.token_urlsafe(12)
        self.state = DashboardState()
        self.arm = ArmLink(options.bridge)
        self.arm.target(options.arm)
        self.arm_status: dict[str, Any] = {"reachable": None, "endpoint": options.arm}
        self.pages: set[Mailbox] = set()
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._zmq = zmq.asyncio.Context()
        self.app = self._make_app()

    # --- lifecycle ---------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_post("/api/estop", self._api_estop)
        app.router.add_post("/api/reset_estop", self._api_reset_estop)
        app.router.add_post("/api/pause", self._api_pause)
        app.router.add_post("/api/resume", self._api_resume)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise UserError(
                f"cannot serve the dashboard on {self.options.host}:{self.options.port} ({exc.strerror}); "
                "another dashboard may be running: choose another --port (0 picks a free one)"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        host = self.options.host if ":" not in self.options.host else f"[{self.options.host}]"
        self.url = f"http://{host}:{self.port}/"
        self._hosts = allowed_hosts(self.options.host, self.port)
        self._tasks = [
            asyncio.create_task(self._telemetry_loop(), name="telemetry"),
            asyncio.create_task(self._arm_loop(), name="arm-poll"),
            asyncio.create_task(self._link_loop(), name="link"),
        ]
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self.arm.close()
        self._zmq.destroy(linger=0)

    # --- background tasks --------------------------------------------------------------------

    def broadcast(self, update: dict[str, Any]) -> None:
        for page in self.pages:
            page.put(update)

    async def _telemetry_loop(self) -> None:
        sock = self._zmq.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 64
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.options.telemetry)
        try:
            while True:
                parts = await sock.recv_multipart()
                try:
                    topic, body = decode_message(parts)
                except TelemetryError as exc:
                    self.state.bad_messages += 1
                    log.warning("telemetry message ignored: %s", exc)
                    continue
                if topic == "status" and self.options.arm is None:
                    self.arm.target(body.get("arm"))
                self.broadcast(self.state.ingest(topic, body))
        finally:
            sock.close(linger=0)

    async def _arm_loop(self) -> None:
        while True:
            if self.arm.endpoint is not None:
                self._set_arm(await self.arm.poll())
            await asyncio.sleep(_ARM_POLL_S)

    def _set_arm(self, status: dict[str, Any]) -> None:
        self.arm_status = status
        self.broadcast({"type": "arm", **status})

    async def _link_loop(self) -> None:
        while True:
            self.broadcast(self._link())
            await asyncio.sleep(_LINK_PERIOD_S)

    def _link(self) -> dict[str, Any]:
        last = self.state.last_message_t
        return {
            "type": "link",
            "telemetry": self.options.telemetry,
            "run": self.state.run_id,
            "silent_s": None if last is None else time.monotonic() - last,
            "received": dict(self.state.received),
        }

    # --- HTTP --------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.options.allow_network and request.host not in self._hosts:
            return web.json_response(
                {"ok": False, "error": f"unexpected Host {request.host!r}; open {self.url}"}, status=403
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin != "null" and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"ok": False, "error": "cross-origin request refused"}, status=403)
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, writer_limit=_WS_WRITER_LIMIT, max_msg_size=4096)
        await ws.prepare(request)
        page = Mailbox()
        for update in [*self.state.snapshot(), {"type": "arm", **self.arm_status}, self._link()]:
            page.put(update)
        self.pages.add(page)
        sender = asyncio.create_task(self._pump(ws, page))
        try:
            async for msg in ws:  # the page sends nothing that matters; reading keeps pings answered
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.pages.discard(page)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ws

    async def _pump(self, ws: web.WebSocketResponse, page: Mailbox) -> None:
        while not ws.closed:
            await page.ready.wait()
            for update in page.take():
                await ws.send_str(json.dumps(update, allow_nan=False, default=_json_default))

    async def _api_state(self, request: web.Request) -> web.StreamResponse:
        def strip(update: dict[str, Any]) -> dict[str, Any]:  # no images: a readable status
            return {k: v for k, v in update.items() if k not in ("jpeg", "goal", "predicted", "after")}

        return web.json_response(
            {
                "run": strip(self.state.latest.get("status", {})),
                "episode": strip(self.state.latest.get("episode", {})),
                "collect": strip(self.state.latest.get("collect", {})),
                "plan": strip(self.state.latest.get("plan", {})),
                "arm": self.arm_status,
                "link": self._link(),
            },
            dumps=lambda v: json.dumps(v, default=_json_default),
        )

    def _authorised(self, request: web.Request) -> bool:
        return check_token(self.token, request.headers.get(TOKEN_HEADER))

    def _refused(self, what: str) -> web.StreamResponse:
        log.warning("%s refused: control token missing or wrong", what)
        return web.json_response(
            {
                "ok": False,
                "error": f"{what} needs the control token that mpc-dashboard printed at start",
            },
            status=403,
        )

    async def _api_estop(self, request: web.Request) -> web.StreamResponse:
        log.warning("E-STOP pressed on the dashboard (%s)", request.remote)
        # The e-stop goes first and alone to the controller; the run's pause is a second, independent
        # line (a paused run waits instead of failing on the latched e-stop).
        pause_task = asyncio.create_task(self._control("pause"))
        status = await self.arm.estop()
        self._set_arm(status)
        # Answer as soon as the controller has; a silent run must not delay the page's confirmation.
        done, _ = await asyncio.wait({pause_task}, timeout=0.2)
        pause = pause_task.result() if done else {"ok": False, "error": "the run has not answered yet"}
        ok = bool(status.get("reachable")) and bool(status.get("estopped"))
        if not ok:
            log.error("E-STOP did not reach the arm controller: %s", status.get("error"))
        return web.json_response({"ok": ok, "arm": status, "run": pause}, status=200 if ok else 502)

    async def _api_reset_estop(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._refused("resetting the e-stop")
        log.warning("e-stop reset from the dashboard (%s)", request.remote)
        status = await self.arm.reset_estop()
        self._set_arm(status)
        ok = bool(status.get("reachable")) and not status.get("estopped")
        return web.json_response({"ok": ok, "arm": status}, status=200 if ok else 502)

    async def _api_pause(self, request: web.Request) -> web.StreamResponse:
        result = await self._control("pause")
        return web.json_response(result, status=200 if result.get("ok") else 502)

    async def _api_resume(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._refused("resuming the run")
        if self.arm_status.get("estopped"):
            return web.json_response(
                {"ok": False, "error": "the arm's e-stop is latched: reset it before resuming the run"},
                status=409,
            )
        result = await self._control("resume")
        return web.json_response(result, status=200 if result.get("ok") else 502)

    async def _control(self, kind: str) -> dict[str, Any]:
        endpoint = self.state.latest.get("status", {}).get("control")
        if not endpoint:
            return {"ok": False, "error": "no run is publishing telemetry (nothing to pause or resume)"}
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(None, control_request, endpoint, kind, 1.0)
        except (TimeoutError, zmq.ZMQError) as exc:
            return {"ok": False, "error": str(exc)}
        if reply.get("ok"):
            log.warning("run %s from the dashboard", "paused" if kind == "pause" else "resumed")
        return {"ok": bool(reply.get("ok")), "paused": reply.get("paused"), "error": reply.get("message")}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


# --- command line -----------------------------------------------------------------------------

_EXAMPLES = """
  mpc-dashboard                                  # watch the run publishing on tcp://127.0.0.1:5560
  mpc-run --sim --telemetry-port 5560            # ... such a run (in another terminal)
  mpc-run --sim --dashboard                      # or let the run start its own dashboard
  mpc-dashboard --arm tcp://127.0.0.1:5555       # E-STOP available before any run announces its arm
  mpc-dashboard --port 9000 --token "$(cat ~/.maskvit/dashboard-token)"

Viewing is open to whoever reaches the address (127.0.0.1 by default). E-STOP and pause need nothing;
resetting the e-stop and resuming need the control token printed at start (or set with --token or the
MASKVIT_DASHBOARD_TOKEN environment variable).
"""


def _parser() -> Any:
    parser = make_parser(
        "mpc-dashboard",
        "Operator dashboard: live camera, goal, predicted vs real rollout, costs, actions, controller "
        f"status, E-STOP. Prints '{READY_MARKER} {{json}}' and then the URL and control token.",
        _EXAMPLES,
    )
    parser.add_argument(
        "--telemetry",
        metavar="ENDPOINT",
        default=f"tcp://127.0.0.1:{DEFAULT_TELEMETRY_PORT}",
        help="the run's telemetry endpoint (mpc-run / collect-finetune-data --telemetry-port)",
    )
    parser.add_argument(
        "--arm",
        metavar="ENDPOINT",
        help="arm server command endpoint for E-STOP (default: the one the run announces)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the page on")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (0: a free port)")
    parser.add_argument("--token", help=f"control token (default: ${TOKEN_ENV} or a random one)")
    parser.add_argument(
        "--allow-network", action="store_true", help="allow a non-loopback --host (isolated networks only)"
    )
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process is gone (set by a run's --dashboard)"
    )
    return parser


async def _serve(options: DashboardOptions, parent_pid: int | None) -> None:
    dashboard = Dashboard(options)
    await dashboard.start()
    info = {"url": dashboard.url, "token": dashboard.token, "telemetry": options.telemetry}
    print(f"{READY_MARKER} {json.dumps(info)}", flush=True)
    print(f"operator dashboard: {dashboard.url}  (control token: {dashboard.token})", flush=True)
    try:
        while parent_pid is None or os.getppid() == parent_pid:
            await asyncio.sleep(0.25)
        log.info("parent process %d is gone: shutting the dashboard down", parent_pid)
    finally:
        await dashboard.stop()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = config_from_args(args)
    options = DashboardOptions(
        telemetry=args.telemetry,
        arm=args.arm,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV, ""),
        allow_network=args.allow_network,
        bridge=cfg.bridge,
    )
    import signal

    loop = asyncio.new_event_loop()
    task = loop.create_task(_serve(options, args.parent_pid))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
