"""CurveZMQ keys for the arm bridge: generation, loading, and applying them to sockets.

A key folder (``BridgeConfig.curve_keys_dir``, made by ``arm-server --gen-keys DIR``) holds::

    server.key            server public key     (clients need it)
    server.key_secret     server key pair       (only the server host)
    client.key            client public key
    client.key_secret     client key pair       (only the client hosts)
    authorized_clients/   public keys the server accepts (client.key is copied there)

The server authenticates clients through a ZAP handler: a client whose public key is not in
``authorized_clients/`` (or that does not speak CURVE at all) never completes the handshake and gets
no answer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..configs.errors import UserError

AUTHORIZED_DIR = "authorized_clients"


class CurveKeyError(UserError):
    """The key folder is missing, incomplete or unreadable."""


def generate_keys(keys_dir: str | os.PathLike) -> Path:
    """Create a server and a client key pair in ``keys_dir``; refuses to overwrite existing keys."""
    folder = Path(keys_dir)
    existing = [n for n in ("server.key_secret", "client.key_secret") if (folder / n).exists()]
    if existing:
        raise CurveKeyError(
            f"{folder} already holds {', '.join(existing)}; delete them or choose another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(folder), "server")
    _, client_secret = zmq.auth.create_certificates(str(folder), "client")
    for secret in (folder / "server.key_secret", Path(client_secret)):
        secret.chmod(0o600)
    authorized = folder / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True)
    shutil.copy(folder / "client.key", authorized / "client.key")
    return folder


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveKeyError(
            f"CurveZMQ key file {path} is missing; create keys with `arm-server --gen-keys DIR`"
        )
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read CurveZMQ key file {path}: {exc}") from None
    if secret and secret_key is None:
        raise CurveKeyError(f"{path} holds no secret key; give the *.key_secret file made by --gen-keys")
    return public, secret_key


def start_authenticator(context: zmq.Context, keys_dir: str | os.PathLike) -> ThreadAuthenticator:
    """A ZAP handler on ``context`` that accepts only the public keys in ``authorized_clients/``."""
    authorized = Path(keys_dir) / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise CurveKeyError(f"{authorized} is missing: put the public keys of allowed clients there")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    return auth


def make_server_socket(socket: zmq.Socket, keys_dir: str | os.PathLike) -> None:
    """Make ``socket`` (before bind) a CURVE server with the server key pair."""
    public, secret = _load(Path(keys_dir) / "server.key_secret", secret=True)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def make_client_socket(socket: zmq.Socket, keys_dir: str | os.PathLike) -> None:
    """Make ``socket`` (before connect) a CURVE client that trusts the server's public key."""
    folder = Path(keys_dir)
    public, secret = _load(folder / "client.key_secret", secret=True)
    server_public, _ = _load(folder / "server.key", secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
