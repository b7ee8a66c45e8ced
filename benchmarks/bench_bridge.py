"""Benchmark the arm bridge on loopback: command round trip, and command + the frame that follows it.

    python benchmarks/bench_bridge.py
    python benchmarks/bench_bridge.py --commands 5000 --backend sim --set sim.image_size=128

Starts ``arm-server`` as its own process (as in deployment) on free loopback ports, connects a
``ZmqArm`` and a ``ZmqCamera``, and times ``--commands`` calls of each kind after a warm-up:

* ``send_action`` round trip (send, server validates, clips, applies, replies);
* ``get_state`` round trip (no backend work: the bare transport and msgpack cost);
* ``send_action`` + ``camera.read(after_command_seq=...)``: until the frame showing the step arrives
  (the server renders after replying; with the dry backend the "render" is a synthetic image).

Prints a markdown table (median, p90, p99, max in milliseconds) and the command that produced it.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable

import numpy as np
from maskvit_mpc.configs import load_config
from maskvit_mpc.robot.client import ZmqArm
from maskvit_mpc.robot.launch import launch_sim_server
from maskvit_mpc.robot.zmq_camera import ZmqCamera


def _time(n: int, fn: Callable[[int], None]) -> np.ndarray:
    samples = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples[i] = time.perf_counter() - t0
    return samples * 1e3


def _row(name: str, ms: np.ndarray) -> str:
    q = np.percentile(ms, [50, 90, 99])
    return f"| {name} | {len(ms)} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {ms.max():.3f} |"


def _measure(
    arm: ZmqArm, camera: ZmqCamera, sim: bool, commands: int, warmup: int, small: np.ndarray
) -> list[str]:
    opts = {"seed": 0} if sim else {}

    def command(i: int) -> None:
        arm.send_action(small[i])

    def command_and_frame(i: int) -> None:
        applied = arm.send_action(small[i])
        camera.read(timeout_s=5.0, after_command_seq=applied.seq)

    rows = []
    for name, fn in [
        ("send_action round trip", command),
        ("get_state round trip", lambda i: arm.read_state()),
        ("send_action + frame after it", command_and_frame),
    ]:
        arm.reset_episode(opts)  # the sim starts each measurement from the same scene
        _time(warmup, fn)
        arm.reset_episode(opts)
        rows.append(_row(name, _time(commands, fn)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=2000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--backend", choices=["dry", "sim"], default="dry")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    # Actions stay well inside the box; the watchdog is irrelevant at these rates.
    cfg = load_config("default", ["bridge.client_heartbeat=false", *args.overrides])
    rng = np.random.default_rng(0)
    small = rng.uniform(-0.004, 0.004, size=(args.commands + args.warmup, 5))
    small[:, 4] = 1.0

    with (
        launch_sim_server(cfg, backend=args.backend) as server,
        ZmqArm(server.bridge) as arm,
        ZmqCamera(server.bridge) as camera,
    ):
        rows = _measure(arm, camera, args.backend == "sim", args.commands, args.warmup, small)

    print(
        f"Arm bridge on loopback, {args.backend} backend, image {cfg.sim.image_size}px; {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print()
    print("| measurement | n | median ms | p90 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    print("command: " + shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
