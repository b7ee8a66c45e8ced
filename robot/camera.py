"""The camera boundary: every driver (simulated over ZeroMQ, RealSense, USB, replay) implements it."""

from __future__ import annotations

import abc

from ..configs.errors import UserError
from .types import Frame


class CameraError(UserError):
    """The camera is missing, stopped sending, or sent something unusable."""


class CameraTimeout(CameraError):
    """No new frame arrived within the timeout."""


class Camera(abc.ABC):
    """connect / read / disconnect, usable as a context manager.

    ``read`` returns the newest frame, waiting at most ``timeout_s``; with ``after_command_seq`` it waits
    for the first frame captured after that arm command was applied (``frame.last_command_seq >=``),
    which is how a control loop sees the consequence of its own action.
    """

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read(self, timeout_s: float = 1.0, after_command_seq: int | None = None) -> Frame: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
