"""The ``--dashboard`` / ``--telemetry-port`` options of a run, and starting ``mpc-dashboard`` for it.

Kept free of aiohttp: a run imports this, the dashboard process imports :mod:`.server`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ...configs.errors import UserError
from ..telemetry import RunMonitor

log = logging.getLogger(__name__)

READY_MARKER = "DASHBOARD_READY"  # the same marker as server.READY_MARKER (not imported: no aiohttp here)
DEFAULT_HTTP_PORT = 8765


class DashboardStartError(UserError):
    """``mpc-dashboard`` exited or stayed silent while starting."""


@dataclass(frozen=True)
class LaunchedDashboard:
    url: str
    token: str
    process: subprocess.Popen


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operator dashboard")
    group.add_argument(
        "--dashboard",
        action="store_true",
        help="open the operator dashboard (live camera, plans, E-STOP) in its own process on "
        "127.0.0.1:--dashboard-port; prints its URL and control token",
    )
    group.add_argument(
        "--dashboard-port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP port of --dashboard (0: free)"
    )
    group.add_argument(
        "--telemetry-port",
        type=int,
        metavar="PORT",
        help="publish telemetry on 127.0.0.1:PORT for an mpc-dashboard started separately "
        "(mpc-dashboard --telemetry tcp://127.0.0.1:PORT; 0: a free port, printed)",
    )


def open_monitor(
    args: argparse.Namespace, stack: contextlib.ExitStack, kind: str, arm_endpoint: str | None
) -> RunMonitor | None:
    """The run's :class:`RunMonitor` when ``--dashboard`` or ``--telemetry-port`` asks for one (closed
    by ``stack``), after starting the dashboard process for ``--dashboard``; else None."""
    if not args.dashboard and args.telemetry_port is None:
        return None
    port = 0 if args.telemetry_port is None else args.telemetry_port
    monitor = RunMonitor(kind, f"tcp://127.0.0.1:{port}", arm_endpoint)
    stack.callback(monitor.close)
    if args.telemetry_port is not None:
        print(f"telemetry: {monitor.endpoint} (mpc-dashboard --telemetry {monitor.endpoint})", flush=True)
    if args.dashboard:
        dashboard = stack.enter_context(
            launch_dashboard(
                monitor.endpoint,
                arm_endpoint,
                port=args.dashboard_port,
                config=getattr(args, "config", None),
                overrides=getattr(args, "overrides", None),
            )
        )
        print(f"operator dashboard: {dashboard.url}  (control token: {dashboard.token})", flush=True)
    return monitor


@contextlib.contextmanager
def launch_dashboard(
    telemetry: str,
    arm: str | None,
    port: int = DEFAULT_HTTP_PORT,
    config: str | None = None,
    overrides: list[str] | None = None,
    startup_timeout_s: float = 30.0,
) -> Iterator[LaunchedDashboard]:
    """Run ``mpc-dashboard`` for this process's telemetry until exit (it also exits if we die)."""
    cmd = [sys.executable, "-m", "maskvit_mpc.robot.dashboard.server", "--telemetry", telemetry]
    cmd += ["--port", str(port), "--parent-pid", str(os.getpid())]
    if arm:
        cmd += ["--arm", arm]
    if config:
        cmd += ["--config", config]
    for override in overrides or []:
        cmd += ["--set", override]
    # Its own session: Ctrl-C reaches only the run, which stops the arm first and then closes this.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        info = _wait_ready(proc, startup_timeout_s)
        yield LaunchedDashboard(info["url"], info["token"], proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_ready(proc: subprocess.Popen, timeout_s: float) -> dict:
    lines: list[str] = []

    def read() -> None:
        for raw in proc.stdout:  # keeps draining, so the pipe never fills
            lines.append(raw.decode(errors="replace").strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith(READY_MARKER):
                return json.loads(line[len(READY_MARKER) :])
        if proc.poll() is not None:
            time.sleep(0.1)
            if not any(line.startswith(READY_MARKER) for line in lines):
                break
        time.sleep(0.02)
    state = (
        f"exited with code {proc.returncode}" if proc.poll() is not None else f"silent for {timeout_s:.0f} s"
    )
    raise DashboardStartError(
        f"mpc-dashboard {state} before it was ready (its error is printed above); a busy port needs "
        "--dashboard-port"
    )
