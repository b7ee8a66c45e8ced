"""mpc-dashboard without a browser: tokens, host checks, E-STOP to a real arm server, pause / resume of a
real run monitor, and the websocket feed. The browser test is test_dashboard_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import numpy as np
import pytest
from bridge_helpers import client_bridge, dry_server, loopback_bridge
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.robot.dashboard.server import (
    TOKEN_HEADER,
    Dashboard,
    DashboardOptions,
    DashboardState,
    Mailbox,
    check_token,
)
from maskvit_mpc.robot.telemetry import JpegImage, RunMonitor, decode_jpeg
from maskvit_mpc.robot.types import Frame

TOKEN = "test-token-123"


@contextmanager
def running_dashboard(**fields) -> Iterator[Dashboard]:
    """A Dashboard on a free port, served from its own event loop thread."""
    options = DashboardOptions(port=0, token=TOKEN, **fields)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    dashboard = asyncio.run_coroutine_threadsafe(_make(options), loop).result(10)
    try:
        yield dashboard
    finally:
        asyncio.run_coroutine_threadsafe(dashboard.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _make(options: DashboardOptions) -> Dashboard:
    dashboard = Dashboard(options)
    await dashboard.start()
    return dashboard


def request(dashboard: Dashboard, path: str, method: str = "GET", headers: dict | None = None):
    """(status, body) of one HTTP request; JSON bodies decoded."""
    req = urllib.request.Request(dashboard.url.rstrip("/") + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw, kind = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get_content_type()
    return status, (json.loads(raw) if kind == "application/json" else raw.decode())


def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- pure pieces ---------------------------------------------------------------------------


def test_token_check():
    assert check_token(TOKEN, TOKEN)
    assert not check_token(TOKEN, "test-token-124")
    assert not check_token(TOKEN, "")
    assert not check_token(TOKEN, None)


def test_mailbox_keeps_the_latest_of_each_kind_and_every_step():
    async def scenario() -> list[dict]:
        box = Mailbox()
        for i in range(50):  # a page that could not keep up
            box.put({"type": "frame", "seq": i})
            box.put({"type": "step", "step": i})
        box.put({"type": "status", "phase": "planning"})
        assert box.ready.is_set()
        out = box.take()
        assert not box.ready.is_set() and box.take() == []
        assert box.replaced == 49
        return out

    out = asyncio.run(scenario())
    frames = [u for u in out if u["type"] == "frame"]
    assert frames == [{"type": "frame", "seq": 49}]
    assert [u["step"] for u in out if u["type"] == "step"] == list(range(50))
    assert out.index(frames[0]) > max(i for i, u in enumerate(out) if u["type"] == "step")


def test_state_forgets_the_previous_run():
    state = DashboardState()
    state.ingest("step", {"type": "step", "run": "a", "step": 0})
    state.ingest("plan", {"type": "plan", "run": "a", "step": 0, "predicted": [b"\xff\xd8"]})
    snapshot = state.snapshot()
    assert [u["type"] for u in snapshot] == ["step", "plan"]
    assert snapshot[1]["predicted"] == [base64.b64encode(b"\xff\xd8").decode()]
    state.ingest("status", {"type": "status", "run": "b", "phase": "starting"})
    assert [u["type"] for u in state.snapshot()] == ["status"]


def test_a_network_address_needs_an_explicit_flag():
    with pytest.raises(UserError, match="--allow-network"):
        Dashboard(DashboardOptions(host="0.0.0.0"))


# --- HTTP ------------------------------------------------------------------------------------


def test_page_and_static_files_are_served():
    with running_dashboard() as dashboard:
        status, page = request(dashboard, "/")
        assert status == 200 and 'id="estop"' in page and "/static/app.js" in page
        for name in ("app.js", "style.css"):
            assert request(dashboard, f"/static/{name}")[0] == 200
        assert request(dashboard, "/static/../server.py")[0] in (403, 404)


def test_foreign_hosts_and_cross_origin_requests_are_refused():
    with running_dashboard() as dashboard:
        port = dashboard.port
        # A DNS-rebinding page reaches 127.0.0.1 under its own name.
        status, body = request(dashboard, "/api/state", headers={"Host": f"evil.example:{port}"})
        assert status == 403 and "unexpected Host" in body["error"]
        assert request(dashboard, "/api/state", headers={"Host": f"localhost:{port}"})[0] == 200
        headers = {"Origin": "http://evil.example", TOKEN_HEADER: TOKEN}
        status, body = request(dashboard, "/api/resume", "POST", headers)
        assert status == 403 and "cross-origin" in body["error"]


def test_estop_pauses_the_run_and_only_the_token_resets_or_resumes():
    with dry_server() as (server, _backend, endpoints):
        monitor = RunMonitor("test", arm_endpoint=endpoints.command)
        try:
            with running_dashboard(telemetry=monitor.endpoint, bridge=client_bridge(endpoints)) as dashboard:
                # The control channel is learned from the run's telemetry.
                wait_for(lambda: "control" in dashboard.state.latest.get("status", {}), what="run status")
                status, body = request(dashboard, "/api/estop", "POST")  # no token: stopping is open
                assert status == 200 and body["ok"] and body["arm"]["estopped"]
                assert server.estopped  # on the controller itself
                assert body["run"]["paused"] and monitor.control.paused

                for headers in ({}, {TOKEN_HEADER: "wrong"}):
                    status, body = request(dashboard, "/api/reset_estop", "POST", headers)
                    assert status == 403 and "control token" in body["error"]
                    assert request(dashboard, "/api/resume", "POST", headers)[0] == 403
                assert server.estopped and monitor.control.paused
                status, body = request(dashboard, "/api/resume", "POST", {TOKEN_HEADER: TOKEN})
                assert status == 409 and "reset it before resuming" in body["error"]  # not while latched
                assert monitor.control.paused

                status, body = request(dashboard, "/api/reset_estop", "POST", {TOKEN_HEADER: TOKEN})
                assert status == 200 and body["ok"] and not body["arm"]["estopped"]
                assert not server.estopped
                status, body = request(dashboard, "/api/resume", "POST", {TOKEN_HEADER: TOKEN})
                assert status == 200 and body["ok"] and body["paused"] is False
                assert not monitor.control.paused

                status, body = request(dashboard, "/api/pause", "POST")  # pausing is open too
                assert status == 200 and monitor.control.paused
                state = request(dashboard, "/api/state")[1]
                assert state["arm"]["reachable"] and state["run"]["kind"] == "test"
        finally:
            monitor.close()


def test_estop_with_no_controller_says_it_failed():
    bridge = loopback_bridge(request_timeout_s=0.2, retries=0)
    with running_dashboard(arm="tcp://127.0.0.1:9", bridge=bridge) as dashboard:
        t0 = time.monotonic()
        status, body = request(dashboard, "/api/estop", "POST")
        assert status == 502 and not body["ok"] and not body["arm"]["reachable"]
        assert "did not answer" in body["arm"]["error"]
        assert time.monotonic() - t0 < 3.0
    with running_dashboard(bridge=bridge) as dashboard:  # no arm known at all
        status, body = request(dashboard, "/api/estop", "POST")
        assert status == 502 and "--arm" in body["arm"]["error"]


# --- the websocket feed ----------------------------------------------------------------------


def test_websocket_streams_frames_plans_and_controller_status():
    with dry_server() as (_server, _backend, endpoints):
        monitor = RunMonitor("test", arm_endpoint=endpoints.command)
        try:
            with running_dashboard(telemetry=monitor.endpoint, bridge=client_bridge(endpoints)) as dashboard:
                wait_for(lambda: dashboard.state.latest.get("status"), what="run status")
                img = np.full((24, 24, 3), (10, 200, 30), np.uint8)
                monitor.publisher.frame(Frame(img, time.time(), 7))
                monitor.publisher.publish(
                    "plan", step=0, iteration_costs=[3.0, 2.0], predicted=[JpegImage(img)] * 2
                )

                async def collect() -> dict[str, dict]:
                    seen: dict[str, dict] = {}
                    url = dashboard.url.replace("http", "ws") + "ws"
                    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                        deadline = time.monotonic() + 5
                        while not {"frame", "plan", "arm", "status"} <= seen.keys() or not seen["arm"].get(
                            "reachable"
                        ):
                            msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
                            update = json.loads(msg.data)
                            seen[update["type"]] = update
                    return seen

                seen = asyncio.run(collect())
        finally:
            monitor.close()
    frame = decode_jpeg(base64.b64decode(seen["frame"]["jpeg"]))
    assert frame.shape == (24, 24, 3) and abs(int(frame[12, 12, 1]) - 200) < 10
    assert seen["frame"]["seq"] == 7
    assert seen["plan"]["iteration_costs"] == [3.0, 2.0] and len(seen["plan"]["predicted"]) == 2
    assert seen["arm"]["endpoint"] == endpoints.command and seen["arm"]["rtt_ms"] > 0
    assert seen["status"]["control"] == monitor.control.endpoint
