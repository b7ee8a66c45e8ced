"""``mpc-run``: one visual-MPC episode on the arm behind ``arm-server`` (or a simulated one with --sim)."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from PIL import Image

from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from ..robot.arm import Arm
from ..robot.cameras.factory import SPEC_HELP, camera_overrides, make_camera
from ..robot.client import ZmqArm
from ..robot.dashboard.launch import add_dashboard_arguments, open_monitor
from ..robot.telemetry import JpegImage, RunMonitor
from ..robot.zmq_camera import ZmqCamera
from .loop import EpisodeLog, StepRecord, run_episode
from .planner import PlanStep
from .predictors import DEFAULT_PREDICTOR, PREDICTOR_NAMES, load_predictor
from .session import SimSession, load_goal_image, make_policy

log = logging.getLogger(__name__)

EXAMPLES = """
  mpc-run --task push --sim --seed 3                    # the shipped MaskViT plans; prints success
  mpc-run --task push --sim --seed 3 --predictor oracle # the simulator itself as the predictor
  mpc-run --task reach --sim --predictor copy-last --max-steps 5 --out runs/reach3
  mpc-run --task push --sim --goal goal.png --dry-run   # plan and log, move nothing
  mpc-run --task push --goal goal.png --predictor model.pt   # a running arm-server (bridge.* ports)
  mpc-run --goal goal.png --predictor model.pt --camera realsense:123456789012   # a RealSense by serial
  mpc-run --sim --set planner.samples=40 --set planner.horizon=6 --set mpc.max_steps=5
  mpc-run --task push --sim --dashboard                 # watch it in a browser, with E-STOP

goal images: 8-bit RGB (PNG, JPEG...). Grayscale, palette or RGBA images are refused (converting them
would change the colours the pixel cost compares). An RGB image of another size is resized to
sim.image_size with a warning; --no-resize refuses it instead.

--dry-run sends no command to the arm (with --sim the simulated scene is still set up for --seed; on a
real arm nothing is reset). The oracle needs --sim. With --sim the printed success and final distance
refer to the task's goal for --seed, also when --goal replaces its goal image.

Ctrl-C stops the arm (arm.stop()), saves the episode log and exits with status 130.
"""


def _parser():
    parser = make_parser("mpc-run", "Run one receding-horizon visual-MPC episode.", EXAMPLES)
    parser.add_argument("--task", choices=["push", "reach"], help="simulated task (overrides task.name)")
    parser.add_argument(
        "--goal", type=Path, help="goal image; with --sim, default: the task's goal for --seed"
    )
    parser.add_argument("--sim", action="store_true", help="start a simulated arm server and camera here")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (scene, goal and planner noise)")
    parser.add_argument(
        "--predictor",
        default=DEFAULT_PREDICTOR,
        metavar="NAME_OR_PATH",
        help=f"{' | '.join(PREDICTOR_NAMES)} | a TorchScript file (default: {DEFAULT_PREDICTOR}, the model "
        "shipped with the package, trained on simulated pushes; oracle needs --sim)",
    )
    parser.add_argument("--dry-run", action="store_true", help="plan and log, but send no motion to the arm")
    parser.add_argument("--out", type=Path, help="log folder (default runs/mpc-run/<task>-seed<S>-<time>)")
    parser.add_argument("--max-steps", type=int, help="override mpc.max_steps")
    parser.add_argument("--no-resize", action="store_true", help="refuse a goal image of the wrong size")
    parser.add_argument("--camera", metavar="SPEC", help="real robot: " + SPEC_HELP)
    add_dashboard_arguments(parser)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    extra = []
    if args.task:
        extra.append(f"task.name={args.task}")
    if args.max_steps is not None:
        extra.append(f"mpc.max_steps={args.max_steps}")
    if args.camera:
        if args.sim:
            raise UserError("--camera is for a real robot; with --sim the simulator streams its own frames")
        extra += camera_overrides(args.camera)
    cfg = config_from_args(args, extra)
    if args.predictor == "oracle" and not args.sim:
        raise UserError("the oracle predictor exists only in simulation: add --sim, or pick --predictor")
    if not args.sim and args.goal is None:
        raise UserError("a goal image is needed on a real arm: --goal PATH (or run with --sim)")
    goal = load_goal_image(args.goal, cfg.sim.image_size, resize=not args.no_resize) if args.goal else None
    out = (
        args.out or Path("runs/mpc-run") / f"{cfg.task.name}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )

    episode = EpisodeLog(goal_image=goal) if goal is not None else None
    monitor = None
    with ExitStack() as stack:
        predictor = stack.enter_context(load_predictor(args.predictor, cfg))
        try:
            if args.sim:
                from ..robot.launch import launch_sim_server

                server = stack.enter_context(launch_sim_server(cfg, verbose=args.verbose))
                bridge = server.bridge
            else:
                bridge = cfg.bridge
            arm = stack.enter_context(ZmqArm(bridge))
            # the sim streams frames at the model's size; a real camera goes through the same
            # preprocessing (crop, undistort, area resize) that collection recorded with
            camera = stack.enter_context(ZmqCamera(bridge) if args.sim else make_camera(cfg, bridge))
            episode = episode or EpisodeLog(goal_image=None)  # with --sim the task fills in its goal
            hooks: dict[str, Any] = {}
            monitor = open_monitor(args, stack, "mpc-run", arm.endpoint)
            if monitor is not None:
                camera = monitor.watch(camera)
                hooks = telemetry_hooks(monitor, arm, episode, cfg.mpc.max_steps)
            if args.sim:
                session = SimSession(cfg, arm, camera)
                stack.callback(session.close)
                session.run(
                    args.seed, predictor, goal_image=goal, dry_run=args.dry_run, episode=episode, **hooks
                )
            else:
                start = arm.read_state()
                policy = make_policy(predictor, goal, cfg, args.seed, current_gripper=float(start.pose[-1]))
                episode.meta.update(predictor=predictor.name, seed=args.seed, dry_run=args.dry_run)
                episode.meta["arm_pose_start"] = [float(v) for v in start.pose]
                episode.meta["config"] = cfg.model_dump(mode="json")
                run_episode(arm, camera, policy, cfg.mpc, episode, dry_run=args.dry_run, **hooks)
            episode.meta["arm_pose_end"] = [float(v) for v in arm.read_state().pose]
        finally:
            if monitor is not None and episode is not None:
                monitor.status(stopped_by=episode.stopped_by)
            if episode is not None and episode.goal_image is not None:
                _save(episode, out, cfg.mpc.save_gif, cfg.mpc.gif_frame_ms)
    _report(episode)
    return 0


def telemetry_hooks(monitor: RunMonitor, arm: Arm, episode: EpisodeLog, max_steps: int) -> dict[str, Any]:
    """run_episode hooks that publish plans and steps for the dashboard and let it pause the run."""
    publisher = monitor.publisher

    def on_plan(step: int, plan: PlanStep) -> None:
        if step == 0:  # the goal is known from here on (a simulated task draws it at the reset)
            goal = None if episode.goal_image is None else JpegImage(episode.goal_image)
            meta = episode.meta
            publisher.retain(
                "episode",
                replace=True,
                goal=goal,
                max_steps=max_steps,
                **{k: meta.get(k) for k in ("task", "seed", "predictor", "dry_run")},
            )
        result = plan.result
        publisher.publish(
            "plan",
            step=step,
            cost=result.cost,
            iteration_costs=result.iteration_costs,
            iteration_mean_costs=result.iteration_mean_costs,
            actions=result.actions,
            action=plan.action,
            plan_time_s=plan.plan_time_s,
            predicted=[] if plan.predicted is None else [JpegImage(f) for f in plan.predicted],
        )
        monitor.status(phase="acting", step=step, plan_time_s=plan.plan_time_s)

    def on_step(record: StepRecord) -> None:
        after = record.next_frame is not None and publisher.step_image_allowed()
        judgement = record.judgement
        publisher.publish(
            "step",
            step=record.step,
            sent=record.sent,
            applied=record.applied,
            clipped=record.clipped,
            step_time_s=record.step_time_s,
            distance_m=None if judgement is None else judgement.distance_m,
            success=None if judgement is None else judgement.success,
            after=JpegImage(record.next_frame) if after else None,
        )
        monitor.status(phase="planning", step=record.step + 1, step_time_s=record.step_time_s)

    return {"on_plan": on_plan, "on_step": on_step, "hold": lambda: monitor.hold(on_pause=arm.stop)}


def _save(episode: EpisodeLog, out: Path, gif: bool, frame_ms: int) -> None:
    paths = episode.save(out, gif=gif, gif_frame_ms=frame_ms)
    if episode.meta.get("goal_from_task"):
        Image.fromarray(episode.goal_image).save(out / "goal.png")
    print(f"episode log: {', '.join(str(p) for p in paths)}")


def _report(episode: EpisodeLog) -> None:
    summary = episode.summary()
    line = f"{summary['steps']} steps ({summary['stopped_by']})"
    if summary["mean_plan_time_s"] is not None:
        line += f", {summary['mean_plan_time_s']:.2f} s per planning step"
    if summary["success"] is not None:
        line += f"; success: {'yes' if summary['success'] else 'no'}, final distance "
        line += (
            f"{summary['final_distance_m'] * 100:.1f} cm (start {summary['initial_distance_m'] * 100:.1f} cm)"
        )
        if not episode.meta.get("goal_from_task", True):
            line += " to the task's own goal (a --goal image was planned for)"
    print(line)


if __name__ == "__main__":
    raise SystemExit(main())
