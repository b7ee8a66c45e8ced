"""Start ``arm-server`` as a child process on free loopback ports (``--sim`` runs, tests, benchmarks).

    with launch_sim_server(cfg) as server:
        with ZmqArm(server.bridge) as arm, ZmqCamera(server.bridge) as camera:
            ...

The server runs in its own process, as it would next to a real robot: its simulation, rendering and
watchdog do not share the client's interpreter, and a crash of either side shows up as a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..configs.errors import UserError
from ..configs.schema import BridgeConfig, Config
from .backends import BackendName
from .server import READY_MARKER

log = logging.getLogger(__name__)


class ServerStartError(UserError):
    """The arm server process exited or stayed silent during start-up."""


@dataclass(frozen=True)
class LaunchedServer:
    bridge: BridgeConfig  # the config's bridge section with the ports the server really listens on
    command_endpoint: str
    camera_endpoint: str | None
    process: subprocess.Popen


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@contextmanager
def launch_sim_server(
    config: Config,
    backend: BackendName = "sim",
    startup_timeout_s: float = 120.0,
    verbose: bool = False,
) -> Iterator[LaunchedServer]:
    """Run ``arm-server --backend <backend>`` with ``config`` on free loopback ports until exit.

    The sim section, safety limits and task of ``config`` are handed to the server; the host is forced
    to 127.0.0.1. Raises :class:`ServerStartError` (with the server's last output) when it fails to start.
    """
    sections = {k: config.model_dump(mode="json")[k] for k in ("sim", "safety", "task", "bridge")}
    sections["bridge"].update(host="127.0.0.1", command_port=0, camera_port=0)
    with tempfile.TemporaryDirectory(prefix="arm-server-") as tmp:
        cfg_path = Path(tmp) / "server.yaml"
        cfg_path.write_text(yaml.safe_dump(sections))
        cmd = [
            sys.executable,
            "-m",
            "maskvit_mpc.robot.server",
            "--backend",
            backend,
            "--config",
            str(cfg_path),
            "--parent-pid",
            str(os.getpid()),
        ]
        if verbose:
            cmd.append("-v")
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            # A session of its own: Ctrl-C in the terminal reaches only the client, which stops the
            # arm through the bridge and then shuts the server down; --parent-pid covers a killed client.
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                env=os.environ.copy(),
                start_new_session=True,
            )
            try:
                endpoints = _wait_ready(proc, startup_timeout_s, log_path)
                bridge = config.bridge.model_copy(
                    update={
                        "host": "127.0.0.1",
                        "command_port": _port(endpoints["command"]),
                        "camera_port": _port(endpoints["camera"]) if endpoints.get("camera") else 0,
                    }
                )
                yield LaunchedServer(bridge, endpoints["command"], endpoints.get("camera"), proc)
            finally:
                _stop(proc)
        if verbose and log_path.exists():
            sys.stderr.write(log_path.read_text(errors="replace"))


def _wait_ready(proc: subprocess.Popen, timeout_s: float, log_path: Path) -> dict:
    lines: list[str] = []

    def read() -> None:
        for raw in proc.stdout:  # keeps draining after the ready line, so the pipe never fills
            lines.append(raw.decode(errors="replace").strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith(READY_MARKER):
                return json.loads(line[len(READY_MARKER) :])
        if proc.poll() is not None:
            time.sleep(0.1)  # let the reader thread catch the last lines
            if any(line.startswith(READY_MARKER) for line in lines):
                continue
            break
        time.sleep(0.02)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    state = (
        f"exited with code {proc.returncode}" if proc.poll() is not None else f"silent for {timeout_s:.0f} s"
    )
    raise ServerStartError(f"arm-server {state} before it was ready; its log ends:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
