"""``calibrate-workspace``: the box the arm server keeps the gripper in (``arm-server --workspace-file``).

Corners are recorded by moving the arm through the bridge (``--record``: jog with typed commands, or
move it by hand if it allows that, then record its pose) or entered (``--corner X Y Z``, repeated). The
box is the bounding box of the corners, pulled in by ``--margin``. Record the table corners at the
lowest safe height and one point at the highest, or give ``--z LOW HIGH``.

Jog commands (one per line): ``x+``, ``x-``, ``y+``, ``y-``, ``z+``, ``z-`` optionally followed by a
distance in metres (default ``--step``); ``r`` records the current pose; ``u`` drops the last recorded
point; ``p`` prints the points; ``d`` writes the file; ``q`` quits without writing. The arm server still
enforces its own workspace while you jog: start it with a generous box for this.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

import numpy as np

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..configs.schema import Range, WorkspaceBounds, WorkspaceCalibration
from ..robot.arm import Arm
from ..robot.calibration_files import make_id, now_iso, save_calibration

MIN_EXTENT_M = 0.02  # a box thinner than this along an axis is a recording mistake, not a workspace
_AXES = {"x": 0, "y": 1, "z": 2}
JOG_HELP = "commands: x+ x- y+ y- z+ z- [metres], r(ecord), u(ndo), p(oints), d(one: write), q(uit)"


class WorkspaceError(UserError):
    """Corners that do not span a usable box."""


def bounds_from_points(
    points: Sequence[Sequence[float]],
    margin_m: float = 0.0,
    z_range: tuple[float, float] | None = None,
    base: WorkspaceBounds | None = None,
) -> WorkspaceBounds:
    """The bounding box of ``points`` (x, y, z metres), shrunk by ``margin_m``; yaw and gripper from ``base``."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 2 or not np.isfinite(p).all():
        raise WorkspaceError(
            f"give at least 2 corners of 3 finite numbers (x, y, z metres); got {np.shape(p)}"
        )
    low, high = p.min(axis=0) + margin_m, p.max(axis=0) - margin_m
    if z_range is not None:
        low[2], high[2] = z_range[0], z_range[1]
    for axis, i in _AXES.items():
        if high[i] - low[i] < MIN_EXTENT_M:
            hint = " (record a point at the highest safe height, or give --z LOW HIGH)" if axis == "z" else ""
            raise WorkspaceError(
                f"the corners span {100 * (high[i] - low[i]):.1f} cm in {axis} after the {margin_m} m margin; a "
                f"workspace needs at least {100 * MIN_EXTENT_M:.0f} cm{hint}"
            )
    base = base or WorkspaceBounds()
    return WorkspaceBounds(
        x=Range(low=low[0], high=high[0]),
        y=Range(low=low[1], high=high[1]),
        z=Range(low=low[2], high=high[2]),
        yaw=base.yaw,
        gripper=base.gripper,
    )


def make_calibration(
    points: Sequence[Sequence[float]],
    source: str,
    margin_m: float,
    z_range: tuple[float, float] | None,
    base: WorkspaceBounds,
) -> WorkspaceCalibration:
    bounds = bounds_from_points(points, margin_m, z_range, base)
    return WorkspaceCalibration(
        id=make_id("workspace", bounds.model_dump()),
        workspace=bounds,
        source=source,
        points_m=[[float(v) for v in p] for p in points],
        margin_m=margin_m,
        created=now_iso(),
    )


def jog_session(
    arm: Arm,
    commands: Iterable[str],
    out: TextIO,
    step_m: float = 0.02,
    max_step_m: float = 0.05,
) -> list[list[float]] | None:
    """Run jog commands against ``arm``; the recorded (x, y, z) points, or None when the user quit."""
    points: list[list[float]] = []
    state = arm.read_state()
    gripper = float(state.pose[4])

    def show(prefix: str = "") -> None:
        x, y, z = state.pose[:3]
        out.write(f"{prefix}gripper at x {x:+.4f}  y {y:+.4f}  z {z:+.4f} m; {len(points)} point(s)\n")
        out.flush()

    show()
    for raw in commands:
        words = raw.strip().lower().split()
        if not words:
            continue
        cmd = words[0]
        if cmd in ("d", "done"):
            return points
        if cmd in ("q", "quit"):
            return None
        if cmd in ("r", "record"):
            state = arm.read_state()
            points.append([float(v) for v in state.pose[:3]])
            show("recorded; ")
        elif cmd in ("u", "undo"):
            if points:
                points.pop()
            show("dropped the last point; ")
        elif cmd in ("p", "points"):
            for i, p in enumerate(points):
                out.write(f"  {i}: {p[0]:+.4f} {p[1]:+.4f} {p[2]:+.4f}\n")
        elif len(cmd) == 2 and cmd[0] in _AXES and cmd[1] in "+-":
            try:
                distance = float(words[1]) if len(words) > 1 else step_m
            except ValueError:
                out.write(f"not a distance: {words[1]!r}\n")
                continue
            sign = 1.0 if cmd[1] == "+" else -1.0
            left = abs(distance)
            while left > 1e-9:  # the server caps each step: move in pieces it accepts
                piece = min(left, max_step_m)
                action = np.zeros(5)
                action[_AXES[cmd[0]]] = sign * piece
                action[4] = gripper
                applied = arm.send_action(action)
                state = applied.state
                left -= piece
                if applied.clipped:
                    out.write("the arm server clipped the move (its workspace or step limits)\n")
                    break
            show()
        else:
            out.write(JOG_HELP + "\n")
    return points  # input ended: keep what was recorded


_EXAMPLES = """
  calibrate-workspace --corner 0.25 -0.20 0.02 --corner 0.55 0.20 0.02 --z 0.02 0.30 --out workspace.yaml
  calibrate-workspace --record --margin 0.01 --out workspace.yaml   # arm-server must be running
  arm-server --backend dry --workspace-file workspace.yaml          # the server enforces the new box
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "calibrate-workspace",
        "Workspace bounds for arm-server --workspace-file: the bounding box of corners you record by moving "
        "the arm (--record, through the bridge) or enter (--corner X Y Z).",
        _EXAMPLES,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--record", action="store_true", help="jog the arm through the bridge and record corners"
    )
    mode.add_argument(
        "--corner", action="append", nargs=3, type=float, metavar=("X", "Y", "Z"), help="a corner in metres"
    )
    parser.add_argument(
        "--z", nargs=2, type=float, metavar=("LOW", "HIGH"), help="height range instead of corners'"
    )
    parser.add_argument("--margin", type=float, default=0.0, help="pull the box in by this many metres")
    parser.add_argument("--step", type=float, default=0.02, help="default jog distance (metres)")
    parser.add_argument("--out", default="workspace.yaml")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    cfg = config_from_args(args)
    if args.margin < 0:
        raise UserError(f"--margin must be >= 0, got {args.margin}")
    z_range = tuple(args.z) if args.z else None
    if args.corner:
        calibration = make_calibration(args.corner, "entered", args.margin, z_range, cfg.safety.workspace)
    else:
        from ..robot.client import ZmqArm

        limit = min(cfg.safety.step_limits.dx, cfg.safety.step_limits.dy, cfg.safety.step_limits.dz)
        print(
            f"connecting to arm-server at {cfg.bridge.host}:{cfg.bridge.command_port}; {JOG_HELP}", flush=True
        )
        with ZmqArm(cfg.bridge) as arm:
            points = jog_session(arm, sys.stdin, sys.stdout, args.step, limit)
        if points is None:
            print("quit: nothing written")
            return 1
        calibration = make_calibration(points, "recorded", args.margin, z_range, cfg.safety.workspace)
    save_calibration(
        args.out, calibration, "workspace bounds from calibrate-workspace (robot base frame, metres)"
    )
    ws = calibration.workspace
    print(
        f"workspace x [{ws.x.low:+.3f}, {ws.x.high:+.3f}]  y [{ws.y.low:+.3f}, {ws.y.high:+.3f}]  "
        f"z [{ws.z.low:+.3f}, {ws.z.high:+.3f}] m\nwritten {args.out}; use it with "
        f"arm-server --workspace-file {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
