"""Camera drivers behind the :class:`~maskvit_mpc.robot.camera.Camera` interface.

``make_camera(cfg)`` builds the one the ``camera`` config section names: ``realsense`` (pyrealsense2,
the optional ``realsense`` extra), ``opencv`` (USB / V4L2 devices, streams, video files), ``replay``
(episodes, videos, image folders) or ``zmq`` (the arm server's stream, as in simulation). Drivers and
their SDKs are imported only when chosen.
"""

from .factory import camera_overrides, make_camera

__all__ = ["camera_overrides", "make_camera"]
