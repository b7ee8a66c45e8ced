"""``collect-finetune-data``: the robot explores by itself and records episodes for fine-tuning.

The arm is driven through the bridge (the same :class:`~maskvit_mpc.robot.arm.Arm` client ``mpc-run``
uses) by :class:`~maskvit_mpc.robot.exploration.ExplorationPolicy`; every episode is written as one
crash-safe HDF5 file (:mod:`maskvit_mpc.robot.episodes`). Faults are counted and handled:

* camera frozen (identical frames while the arm moves) or silent (CameraTimeout): the episode is
  dropped, the camera reconnected, collection goes on;
* controller silent (ArmTimeout): the episode is dropped and the controller re-tried; if it stays
  silent, a clean stop with a report (completed episodes are kept);
* disk nearly full: stop before writing.

``--hours`` is robot time: simulated time in ``--sim`` (steps x control period), wall time on a real arm.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..configs import Config
from ..configs.cli import cli_entry, config_from_args, make_parser, setup_logging
from ..configs.errors import UserError
from . import episodes as ep_io
from .arm import Arm, ArmError, ArmTimeout, EStopActive
from .camera import Camera, CameraError, CameraTimeout
from .cameras.factory import SPEC_HELP, camera_overrides
from .dashboard.launch import add_dashboard_arguments, open_monitor
from .exploration import ExplorationPolicy
from .telemetry import RunMonitor
from .types import ArmState, Frame

log = logging.getLogger(__name__)

MOVED_THRESHOLD_M = 0.02  # an episode "moved an object" when some object travelled more than this


class CameraFrozen(CameraError):
    """The camera keeps sending the same image although the arm moves."""


class DiskFull(UserError):
    """Free disk space fell below collect.min_free_disk_mb."""


class PausedMidEpisode(Exception):
    """The operator paused during an episode: it is dropped (the scene may change meanwhile) and redone."""


class SimProbe(Protocol):
    """Sim-only extras: the full simulator state and per-frame segmentation (object ids)."""

    def state(self) -> bytes: ...

    def segmentation(self) -> np.ndarray: ...


@dataclass
class CollectSummary:
    """What a run did (this run) and what the folder holds (total)."""

    episodes_this_run: int = 0
    episodes_total: int = 0
    frames_total: int = 0
    robot_time_s: float = 0.0
    wall_time_s: float = 0.0
    bytes_total: int = 0
    moved_share: float | None = None
    faults: Counter = field(default_factory=Counter)
    stopped_reason: str = "target reached"
    completed: bool = True

    def format(self) -> str:
        moved = "n/a (no object records)" if self.moved_share is None else f"{100 * self.moved_share:.1f}%"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return "\n".join(
            [
                f"collection {'complete' if self.completed else 'STOPPED'}: {self.stopped_reason}",
                f"  episodes:     {self.episodes_total} ({self.episodes_this_run} this run)",
                f"  frames:       {self.frames_total}",
                f"  robot time:   {self.robot_time_s / 3600:.3f} h",
                f"  wall time:    {self.wall_time_s:.1f} s this run",
                f"  disk used:    {self.bytes_total / 1e6:.1f} MB",
                f"  moved > {100 * MOVED_THRESHOLD_M:.0f} cm: {moved} of episodes",
                f"  faults:       {faults}",
            ]
        )


def object_positions(state: ArmState) -> dict[str, np.ndarray] | None:
    """Object centres reported by a sim backend in ``ArmState.info`` (None on a real arm)."""
    objects = state.info.get("objects") if state.info else None
    if not objects:
        return None
    return {str(k): np.asarray(v, dtype=np.float64).reshape(3) for k, v in objects.items()}


def target_steps(hours: float | None, episodes: int | None, steps: int, period_s: float) -> int | None:
    """Recorded steps a sim run aims for: ``--episodes`` x steps, or ``--hours`` of robot time."""
    if episodes is not None:
        return episodes * steps
    if hours is not None:
        return math.ceil(hours * 3600 / period_s - 1e-6)
    return None


class Collector:
    """Runs episodes until a target is met or a fault stops it; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        arm: Arm,
        camera: Camera,
        out: Path,
        *,
        sim: bool,
        target_episodes: int | None = None,
        target_hours: float | None = None,
        resume: bool = False,
        sim_probe: SimProbe | None = None,
        robot_name: str = "",
        camera_name: str = "",
        progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        monitor: RunMonitor | None = None,
    ) -> None:
        if target_episodes is None and target_hours is None:
            raise UserError("give a target: --hours H (robot time) or --episodes N")
        self.cfg = cfg
        self.c = cfg.collect
        self.arm = arm
        self.camera = camera
        self.out = Path(out)
        self.sim = sim
        self.target_episodes = target_episodes
        self.target_hours = target_hours
        self.sim_probe = sim_probe
        self.period = cfg.sim.control_period_s
        self.robot_name = robot_name or ("sim-tabletop" if sim else "arm")
        self.camera_name = camera_name or ("sim-zmq" if sim else "camera")
        self.progress = progress
        self.sleep = sleep
        self.monitor = monitor  # dashboard telemetry and pause; None: not watched
        self.faults: Counter = Counter()
        self._prepare_folder(resume)

    # --- folder -------------------------------------------------------------------------------

    def _prepare_folder(self, resume: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        existing = ep_io.episode_files(self.out)
        if existing and not resume:
            raise UserError(
                f"{self.out} already holds {len(existing)} episode(s); pass --resume to continue toward "
                "the target, or choose another --out"
            )
        ep_io.clean_stale_temp_files(self.out)
        self.manifest = ep_io.load_or_rebuild_manifest(self.out)
        info = self.manifest.info
        self.faults.update(info.get("faults", {}))
        self.wall_robot_s = float(info.get("robot_wall_s", 0.0))
        self.next_index = ep_io.episode_index(existing[-1]) + 1 if existing else 0

    def _save_manifest(self) -> None:
        self.manifest.info.update(
            {
                "sim": self.sim,
                "robot": self.robot_name,
                "camera": self.camera_name,
                "episode_steps": self.c.episode_steps,
                "control_period_s": self.period,
                "target_episodes": self.target_episodes,
                "target_hours": self.target_hours,
                "faults": dict(self.faults),
                "robot_wall_s": self.wall_robot_s,
                "collect_config": self.c.model_dump(),
            }
        )
        ep_io.write_manifest(self.out, self.manifest)

    def robot_time_s(self) -> float:
        """Robot time spent so far: recorded steps x period in sim, wall time on a real arm."""
        return self.manifest.robot_time_s if self.sim else self.wall_robot_s

    def _done(self) -> bool:
        if self.target_episodes is not None:
            return self.manifest.num_episodes >= self.target_episodes
        if self.sim:
            steps = target_steps(self.target_hours, None, self.c.episode_steps, self.period)
            return self.manifest.num_steps >= (steps or 0)
        return self.wall_robot_s >= (self.target_hours or 0.0) * 3600

    def _progress_total(self) -> tuple[float, str]:
        if self.target_episodes is not None:
            return float(self.target_episodes), "ep"
        return round((self.target_hours or 0.0) * 3600, 1), "robot-s"

    def _progress_value(self) -> float:
        if self.target_episodes is not None:
            return float(self.manifest.num_episodes)
        return round(self.robot_time_s(), 1)

    # --- faults -------------------------------------------------------------------------------

    def _fault(self, kind: str, exc: BaseException | str) -> None:
        self.faults[kind] += 1
        log.warning("fault %s (#%d): %s", kind, self.faults[kind], exc)

    def _check_disk(self, needed_bytes: int) -> None:
        free = shutil.disk_usage(self.out).free
        margin = self.c.min_free_disk_mb * 1e6
        if free - needed_bytes < margin:
            raise DiskFull(
                f"only {free / 1e6:.0f} MB free in {self.out} (keeping {self.c.min_free_disk_mb:.0f} MB "
                "free, collect.min_free_disk_mb); free space or choose another --out"
            )

    def _reconnect_camera(self) -> None:
        with contextlib.suppress(CameraError):
            self.camera.disconnect()
        self.camera.connect()
        self.faults["camera_reconnect"] += 1

    def _recover_arm(self) -> None:
        """After an ArmTimeout: ask again (arm_retries times) and hold still; raise if still silent."""
        last: BaseException | None = None
        for attempt in range(self.c.arm_retries + 1):
            try:
                self.arm.stop()
                return
            except ArmTimeout as exc:
                last = exc
                self.faults["arm_retry"] += 1
                log.warning("controller still silent (retry %d/%d)", attempt + 1, self.c.arm_retries + 1)
                self.sleep(min(1.0, self.cfg.bridge.request_timeout_s))
        raise ArmTimeout(
            f"the arm controller stopped answering and did not recover after {self.c.arm_retries} retries "
            f"({last}); check that arm-server is running and reachable at {self.cfg.bridge.host}:"
            f"{self.cfg.bridge.command_port}"
        )

    # --- one episode --------------------------------------------------------------------------

    def reset_kind(self, index: int) -> str:
        """Sim: "scene" (a fresh random layout, gripper above the table) every scene_redraw_every
        episodes, otherwise "task" (the task's own reset from the episode's seed: for push, the
        gripper starts behind an object). Real arm: "home"."""
        if not self.sim:
            return "home"
        return "scene" if index % self.c.scene_redraw_every == 0 else "task"

    def _reset(self, index: int) -> ArmState:
        seed = self.c.seed + index
        kind = self.reset_kind(index)
        if kind == "scene":
            return self.arm.reset_episode({"seed": seed})
        if kind == "task":
            return self.arm.reset_episode({"seed": seed, "task": self.cfg.task.name})
        state = self.arm.reset_episode(None)
        for pose in [self.c.home_pose, *self.c.reset_poses, self.c.home_pose] if self.c.reset_poses else []:
            state = self._move_to(np.asarray(pose, dtype=np.float64), state)
        return state

    def _move_to(self, pose: np.ndarray, state: ArmState) -> ArmState:
        lim = self.cfg.safety.step_limits
        step = np.array([lim.dx, lim.dy, lim.dz, lim.dyaw])
        for _ in range(self.c.reset_max_steps):
            delta = pose[:4] - state.pose[:4]
            if np.linalg.norm(delta[:3]) < self.c.reset_tolerance_m and abs(delta[3]) < 0.05:
                break
            action = np.concatenate([np.clip(delta, -step, step), [pose[4]]])
            state = self.arm.send_action(action).state
        return state

    def _read_frame(self, after_seq: int | None) -> Frame:
        return self.camera.read(timeout_s=self.c.camera_timeout_s, after_command_seq=after_seq)

    def _hold(self) -> bool:
        """Wait while the operator has the run paused (the arm stopped); True when it did."""
        return self.monitor is not None and self.monitor.hold(on_pause=self.arm.stop)

    def _record_episode(self, index: int) -> ep_io.Episode:
        self._hold()  # before the reset: on a real arm it moves
        state = self._reset(index)
        rng = np.random.default_rng([self.c.seed, index])
        policy = ExplorationPolicy(self.c, self.cfg.safety, rng)
        objects = object_positions(state)
        policy.reset(state.pose, objects)
        frame = self._read_frame(state.last_command_seq if state.last_command_seq >= 0 else None)
        height, width = frame.rgb.shape[:2]
        meta = ep_io.EpisodeMetadata(
            robot=self.robot_name,
            camera=self.camera_name,
            image_height=height,
            image_width=width,
            control_period_s=self.period,
            seed=self.c.seed + index,
            calibration_id=self.c.calibration_id,
            software_version=_software_version(),
            task=self.cfg.task.name if self.sim else "",
            policy=f"{self.c.policy}:{policy.mode}",
            extra={"reset": self.reset_kind(index), "exploration": policy.mode},
        )
        names = tuple(objects) if objects else ()  # the sim's order: segmentation label 2 + i is names[i]
        recorder = ep_io.EpisodeRecorder(meta, object_names=names)
        probe = self.sim_probe if self.sim else None
        if probe is not None:
            recorder.initial_sim_state = probe.state()
        seg = self.c.record_segmentation and probe is not None

        def observe(frame: Frame, state: ArmState) -> None:
            objs = object_positions(state)
            recorder.add_observation(
                frame.rgb,
                state.pose,
                frame.t_capture,
                np.stack([objs[n] for n in names]) if names and objs else None,
                probe.segmentation() if seg else None,
            )

        observe(frame, state)
        identical = 0
        for step in range(self.c.episode_steps):
            if self._hold():
                raise PausedMidEpisode(f"episode {index} paused at step {step}")
            if self.monitor is not None:
                self.monitor.publisher.retain("collect", episode=index, episode_step=step)
            action = policy.act(state.pose, objects)
            applied = self.arm.send_action(action)
            previous, state = state, applied.state
            objects = object_positions(state)
            recorder.add_action(applied.commanded, applied.applied, applied.clipped, applied.t_applied)
            new = self._read_frame(applied.seq)
            # A still arm gives identical sim frames legitimately; one that measurably moved in view does not.
            motion = np.abs(state.pose - previous.pose)
            moved = motion[:3].max() > 0.004 or motion[3] > 0.05 or motion[4] > 0.5
            if moved and np.array_equal(new.rgb, frame.rgb):
                identical += 1
                if identical + 1 >= self.c.frozen_frame_limit:
                    raise CameraFrozen(
                        f"{identical + 1} identical frames in a row while the arm moved (seq {new.seq})"
                    )
            else:
                identical = 0
            frame = new
            observe(frame, state)
        return recorder.to_episode()

    def _report_progress(self, summary: CollectSummary) -> None:
        if self.monitor is None:
            return
        total, unit = self._progress_total()
        self.monitor.status(phase="collecting")
        self.monitor.publisher.retain(
            "collect",
            value=self._progress_value(),
            total=total,
            unit=unit,
            episodes_total=self.manifest.num_episodes,
            episodes_this_run=summary.episodes_this_run,
            frames_total=self.manifest.num_frames,
            faults=dict(self.faults),
            episode_steps=self.c.episode_steps,
        )

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> CollectSummary:
        from tqdm import tqdm

        t_start = time.monotonic()
        summary = CollectSummary()
        total, unit = self._progress_total()
        bar = tqdm(
            total=total,
            initial=self._progress_value(),
            unit=unit,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        camera_failures = 0
        last_size = 0
        self._report_progress(summary)
        try:
            while not self._done():
                self._check_disk(2 * last_size)
                t_episode = time.monotonic()
                try:
                    episode = self._record_episode(self.next_index)
                except (CameraTimeout, CameraFrozen) as exc:
                    self._fault("camera_frozen" if isinstance(exc, CameraFrozen) else "camera_timeout", exc)
                    camera_failures += 1
                    if camera_failures > self.c.max_camera_reconnects:
                        raise CameraError(
                            f"the camera failed {camera_failures} episodes in a row ({exc}); check its cable "
                            "and driver, then rerun with --resume"
                        ) from None
                    try:
                        self._reconnect_camera()
                    except CameraError as rexc:
                        self._fault("camera_reconnect_failed", rexc)
                    continue
                except ArmTimeout as exc:
                    self._fault("arm_timeout", exc)
                    self._recover_arm()
                    continue
                except PausedMidEpisode as exc:
                    log.warning("%s: dropped, recording it again", exc)
                    continue
                finally:
                    if not self.sim:
                        self.wall_robot_s += time.monotonic() - t_episode
                camera_failures = 0
                path = self.out / ep_io.episode_filename(self.next_index)
                self._check_disk(max(2 * last_size, episode.frames.nbytes))
                last_size = ep_io.write_episode(path, episode, self.c.compression_level)
                entry = ep_io.validate_episode(path)
                self.manifest.episodes.append(entry)
                self._save_manifest()
                self.next_index += 1
                summary.episodes_this_run += 1
                bar.update(self._progress_value() - bar.n)
                bar.set_postfix(
                    ep=self.manifest.num_episodes,
                    frames=self.manifest.num_frames,
                    faults=sum(v for k, v in self.faults.items() if k != "camera_reconnect"),
                    refresh=False,
                )
                self._report_progress(summary)
        except (DiskFull, ArmError, CameraError) as exc:
            summary.completed = False
            summary.stopped_reason = str(exc)
            kinds = {
                DiskFull: "disk_full",
                EStopActive: "estop",
                ArmTimeout: "arm_lost",
                CameraError: "camera_lost",
            }
            self._fault(next((v for k, v in kinds.items() if isinstance(exc, k)), "arm_error"), exc)
            with contextlib.suppress(Exception):
                self.arm.stop()
        finally:
            bar.close()
            with contextlib.suppress(OSError):
                self._save_manifest()
        summary.episodes_total = self.manifest.num_episodes
        summary.frames_total = self.manifest.num_frames
        summary.robot_time_s = self.robot_time_s()
        summary.wall_time_s = time.monotonic() - t_start
        summary.bytes_total = self.manifest.bytes
        summary.moved_share = self.manifest.moved_share(MOVED_THRESHOLD_M)
        summary.faults = Counter(self.faults)
        return summary


@functools.lru_cache(maxsize=1)
def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskvit-mpc")
    except PackageNotFoundError:
        return "unknown"


# --- the command --------------------------------------------------------------------------------

EXAMPLES = """
  collect-finetune-data --sim --hours 4 --out data/sim-push          # 4 simulated hours (minutes of wall time)
  collect-finetune-data --sim --episodes 200 --out data/sim-small --episode-steps 15
  collect-finetune-data --sim --hours 4 --out data/sim-push --resume # continue after a crash or Ctrl-C
  collect-finetune-data --hours 2 --out data/real --config my_arm.yaml  # real arm: arm-server must be running
  collect-finetune-data --sim --hours 1 --out data/sim-push --dashboard   # watch it, E-STOP in the browser
"""


class _BridgeProbe:
    """Sim extras over the bridge: the server's full simulator state and its segmentation of the scene."""

    def __init__(self, arm: Any) -> None:
        self.arm = arm

    def state(self) -> bytes:
        return self.arm.sim_state()

    def segmentation(self) -> np.ndarray:
        return self.arm.segmentation().astype(np.uint8)


@contextlib.contextmanager
def _connect(cfg: Config, sim: bool) -> Iterator[tuple[Arm, Camera, SimProbe | None]]:
    """The bridge client and camera stream; with ``sim``, a sim arm-server started for this run."""
    from .cameras import make_camera
    from .client import ZmqArm
    from .zmq_camera import ZmqCamera

    with contextlib.ExitStack() as stack:
        bridge = cfg.bridge
        if sim:
            from .launch import launch_sim_server

            bridge = stack.enter_context(launch_sim_server(cfg)).bridge
        arm = stack.enter_context(ZmqArm(bridge))
        # A real robot's camera (camera section) comes out in the model's view, as planning sees it.
        camera = stack.enter_context(ZmqCamera(bridge) if sim else make_camera(cfg, bridge))
        yield arm, camera, (_BridgeProbe(arm) if sim else None)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "collect-finetune-data",
        "Let the arm explore with random pushes and record episodes (HDF5, crash-safe) for fine-tuning.",
        EXAMPLES,
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--hours", type=float, help="robot time to collect (sim: simulated time); default collect.robot_hours"
    )
    target.add_argument("--episodes", type=int, help="number of episodes to collect instead of --hours")
    parser.add_argument(
        "--sim", action="store_true", help="start a MuJoCo arm-server for this run and collect there"
    )
    parser.add_argument("--camera", metavar="SPEC", help="real robot: " + SPEC_HELP)
    parser.add_argument("--out", default="episodes", help="episode folder")
    parser.add_argument("--episode-steps", type=int, help="actions per episode (collect.episode_steps)")
    parser.add_argument("--policy", choices=["random"], help="exploration policy (collect.policy)")
    parser.add_argument("--seed", type=int, help="base seed; episode i uses seed + i (collect.seed)")
    parser.add_argument(
        "--resume", action="store_true", help="continue toward the target in an existing --out"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs and the summary only)"
    )
    add_dashboard_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    extra = []
    if args.episode_steps is not None:
        extra.append(f"collect.episode_steps={args.episode_steps}")
    if args.policy is not None:
        extra.append(f"collect.policy={args.policy}")
    if args.seed is not None:
        extra.append(f"collect.seed={args.seed}")
    if args.camera is not None:
        extra += camera_overrides(args.camera)
    cfg = config_from_args(args, extra)
    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    hours = (
        None
        if args.episodes is not None
        else (args.hours if args.hours is not None else cfg.collect.robot_hours)
    )
    if hours is not None and hours <= 0:
        raise UserError(f"--hours must be positive, got {hours}")
    out = Path(args.out)
    if ep_io.episode_files(out) and not args.resume:
        raise UserError(
            f"{out} already holds {len(ep_io.episode_files(out))} episode(s); pass --resume to continue "
            "toward the target, or choose another --out"
        )
    with _connect(cfg, args.sim) as (arm, camera, probe), contextlib.ExitStack() as stack:
        monitor = open_monitor(args, stack, "collect-finetune-data", getattr(arm, "endpoint", None))
        if monitor is not None:
            camera = monitor.watch(camera)
        collector = Collector(
            cfg,
            arm,
            camera,
            out,
            sim=args.sim,
            target_episodes=args.episodes,
            target_hours=hours,
            resume=args.resume,
            sim_probe=probe,
            robot_name="" if args.sim else str(getattr(arm, "server_info", {}).get("backend", "")),
            progress=not args.no_progress,
            monitor=monitor,
        )
        summary = collector.run()
        if monitor is not None:
            monitor.status(stopped_by=summary.stopped_reason)
    print(summary.format())
    return 0 if summary.completed else 1


if __name__ == "__main__":
    raise SystemExit(main())
