"""Shared pieces of the bridge tests: a dry arm server in a thread and a raw DEALER for crafted requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import zmq
from maskvit_mpc.configs.schema import BridgeConfig, SafetyConfig
from maskvit_mpc.robot.backends import DryBackend
from maskvit_mpc.robot.server import ArmServer, ServerEndpoints

# Generous: the test machine is shared and loaded.
REPLY_TIMEOUT_S = 5.0


def loopback_bridge(**fields: Any) -> BridgeConfig:
    """A bridge config on free loopback ports with quick timeouts (tests only)."""
    base = {
        "command_port": 0,
        "camera_port": 0,
        "request_timeout_s": 2.0,
        "retries": 1,
        "client_heartbeat": False,
    }
    return BridgeConfig(**{**base, **fields})


@contextmanager
def dry_server(
    safety: SafetyConfig | None = None, bridge: BridgeConfig | None = None
) -> Iterator[tuple[ArmServer, DryBackend, ServerEndpoints]]:
    safety = safety or SafetyConfig()
    backend = DryBackend(safety, image_size=32)
    server = ArmServer(backend, safety, bridge or loopback_bridge())
    with server.running() as endpoints:
        yield server, backend, endpoints


def client_bridge(endpoints: ServerEndpoints, **fields: Any) -> BridgeConfig:
    """A client-side bridge config pointing at a running server's real ports."""
    port = int(endpoints.command.rsplit(":", 1)[1])
    cam = int(endpoints.camera.rsplit(":", 1)[1]) if endpoints.camera else 0
    return loopback_bridge(command_port=port, camera_port=cam, **fields)


class RawClient:
    """A bare DEALER socket: sends any bytes or map, returns the decoded reply (or None on timeout)."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(endpoint)
        self._id = 1000

    def send_parts(self, parts: list[bytes], timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any] | None:
        self.socket.send_multipart(parts)
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return msgpack.unpackb(self.socket.recv(), raw=False, strict_map_key=False)

    def send_bytes(self, payload: bytes, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any] | None:
        return self.send_parts([payload], timeout_s)

    def request(
        self, msg_type: str, timeout_s: float = REPLY_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any] | None:
        self._id += 1
        message = {"v": 1, "type": msg_type, "id": self._id, "t": time.time(), **fields}
        return self.send_bytes(msgpack.packb(message, use_bin_type=True), timeout_s)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
