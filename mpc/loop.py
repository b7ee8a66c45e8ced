"""The receding-horizon control loop and its episode log.

Per step: take the newest context frames -> plan -> send the plan's first action through the arm
bridge -> wait for the first camera frame captured after that command -> repeat, until ``max_steps``,
task success (simulation) or an operator stop. Ctrl-C stops the arm (``arm.stop()``) before the
``KeyboardInterrupt`` goes on, so the caller can save the log and exit with 130.

Everything a step produced is kept in an :class:`EpisodeLog` (frames, planned and applied actions,
costs per optimiser iteration, timings) and saved as ``episode.npz`` + ``episode.json`` with a GIF
summary. A per-step callback (``on_step``) receives each :class:`StepRecord` as it happens: the hook
for live telemetry (the operator dashboard).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..configs.schema import MPCConfig
from ..robot.arm import Arm, ArmError, EStopActive
from ..robot.camera import Camera
from .planner import PlanStep

log = logging.getLogger(__name__)


class Policy(Protocol):
    """What the loop asks for plans (:class:`~.planner.VisualMPCPolicy`, :class:`~.planner.RandomPolicy`)."""

    def reset(self) -> None: ...

    def plan(
        self,
        context_frames: np.ndarray,
        context_actions: np.ndarray | None = None,
        pose: np.ndarray | None = None,
    ) -> PlanStep: ...


@dataclass(frozen=True)
class Judgement:
    """A simulated task's verdict on the current state."""

    distance_m: float
    success: bool


@dataclass(frozen=True)
class StepRecord:
    """One control step."""

    step: int
    frame: np.ndarray  # (H, W, 3) uint8 the frame planned from ("now")
    frame_seq: int
    plan: PlanStep
    sent: np.ndarray | None  # (5,) the action sent; None in a dry run
    applied: np.ndarray | None  # (5,) what the controller applied after clipping; None in a dry run
    clipped: bool
    step_time_s: float  # plan + send + wait for the next frame
    judgement: Judgement | None  # after the action (simulation only)
    next_frame: np.ndarray | None = None  # (H, W, 3) uint8 the frame after the action: what really happened


@dataclass
class EpisodeLog:
    """Everything an episode produced; :meth:`save` writes it."""

    goal_image: np.ndarray | None  # (H, W, 3) uint8; None until a simulated task has drawn it
    meta: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    final_frame: np.ndarray | None = None
    initial_judgement: Judgement | None = None
    stopped_by: str = "running"  # max_steps | success | interrupted | estop | error

    @property
    def final_judgement(self) -> Judgement | None:
        for record in reversed(self.steps):
            if record.judgement is not None:
                return record.judgement
        return self.initial_judgement

    def plan_times(self) -> np.ndarray:
        return np.array([r.plan.plan_time_s for r in self.steps])

    def summary(self) -> dict[str, Any]:
        final = self.final_judgement
        times = self.plan_times()
        return {
            "stopped_by": self.stopped_by,
            "steps": len(self.steps),
            "success": None if final is None else final.success,
            "final_distance_m": None if final is None else final.distance_m,
            "initial_distance_m": None
            if self.initial_judgement is None
            else self.initial_judgement.distance_m,
            "mean_plan_time_s": float(times.mean()) if len(times) else None,
        }

    def save(self, out_dir: Path, gif: bool = True, gif_frame_ms: int = 400) -> list[Path]:
        """Write ``episode.npz``, ``episode.json`` and (optionally) ``summary.gif``; returns the paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "episode.npz", out_dir / "episode.json"]
        arrays: dict[str, np.ndarray] = {"goal_image": self.goal_image}
        if self.steps:
            frames = [r.frame for r in self.steps]
            if self.final_frame is not None:
                frames.append(self.final_frame)
            arrays["frames"] = np.stack(frames)  # (T [+1], H, W, 3): the frame each step planned from
            arrays["planned_actions"] = np.stack(
                [r.plan.result.actions for r in self.steps]
            )  # (T, horizon, 5)
            arrays["sent_actions"] = _stack_or_nan([r.sent for r in self.steps])  # (T, 5)
            arrays["applied_actions"] = _stack_or_nan([r.applied for r in self.steps])  # (T, 5)
            arrays["best_costs"] = np.array([r.plan.result.cost for r in self.steps])
            arrays["iteration_costs"] = _ragged([r.plan.result.iteration_costs for r in self.steps])
            arrays["plan_time_s"] = self.plan_times()
            predicted = [r.plan.predicted for r in self.steps]
            if all(p is not None for p in predicted):
                arrays["predicted_frames"] = np.stack(predicted)  # (T, horizon, H, W, 3)
        np.savez_compressed(written[0], **arrays)
        doc = {
            "meta": self.meta,
            "summary": self.summary(),
            "steps": [_step_json(r) for r in self.steps],
        }
        written[1].write_text(json.dumps(doc, indent=2))
        if gif and self.steps:
            written.append(out_dir / "summary.gif")
            write_summary_gif(self, written[-1], gif_frame_ms)
        return written


def _stack_or_nan(rows: list[np.ndarray | None]) -> np.ndarray:
    return np.stack([np.full(5, np.nan) if r is None else np.asarray(r, dtype=np.float64) for r in rows])


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in np.ravel(values)]


def _step_json(r: StepRecord) -> dict[str, Any]:
    return {
        "step": r.step,
        "frame_seq": r.frame_seq,
        "sent": _floats(r.sent),
        "applied": _floats(r.applied),
        "clipped": r.clipped,
        "best_cost": float(r.plan.result.cost),
        "iteration_costs": _floats(r.plan.result.iteration_costs),
        "plan_time_s": r.plan.plan_time_s,
        "predict_time_s": r.plan.predict_time_s,
        "cost_time_s": r.plan.cost_time_s,
        "step_time_s": r.step_time_s,
        "distance_m": None if r.judgement is None else r.judgement.distance_m,
        "success": None if r.judgement is None else r.judgement.success,
    }


def write_summary_gif(episode: EpisodeLog, path: Path, frame_ms: int = 400, scale: int = 2) -> None:
    """One GIF frame per step: current frame | goal | the best plan's predicted clip (if recorded).

    A progress bar along the bottom marks the step, so identical-looking steps (a dry run) still get
    their own GIF frame instead of being merged by the encoder.
    """
    tiles_per_row = 2 + max(
        (len(r.plan.predicted) for r in episode.steps if r.plan.predicted is not None), default=0
    )
    h, w = episode.goal_image.shape[:2]
    gap = 2
    images = []
    bar = 3
    for r in episode.steps:
        row = [r.frame, episode.goal_image, *([] if r.plan.predicted is None else list(r.plan.predicted))]
        width = tiles_per_row * (w + gap) - gap
        canvas = np.full((h + gap + bar, width, 3), 255, np.uint8)
        for i, tile in enumerate(row):
            canvas[:h, i * (w + gap) : i * (w + gap) + w] = tile
        canvas[h + gap :, : max(1, width * (r.step + 1) // len(episode.steps))] = (40, 110, 220)
        img = Image.fromarray(canvas)
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def run_episode(
    arm: Arm,
    camera: Camera,
    policy: Policy,
    cfg: MPCConfig,
    episode: EpisodeLog,
    *,
    first_command_seq: int | None = None,
    dry_run: bool = False,
    before_plan: Callable[[], None] | None = None,
    judge: Callable[[], Judgement] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    on_plan: Callable[[int, PlanStep], None] | None = None,
    hold: Callable[[], bool] | None = None,
) -> EpisodeLog:
    """Run one receding-horizon episode, appending to ``episode`` (also returned).

    ``first_command_seq``: the episode's first frame is the first one captured after this command
    (e.g. the reset's sequence number); None takes the newest frame. ``before_plan`` runs before each
    planning call (simulation: hand the oracle the current simulator state). ``judge`` scores the state
    after each action (simulation). ``dry_run`` plans and logs but sends no motion to the arm.
    ``on_plan(step, plan)`` sees each plan before its action is sent (live telemetry). ``hold`` is the
    operator's pause: called before each action is sent, it blocks while the run is paused and returns
    True when it did; the plan is then stale and the step is planned again from a fresh frame.
    """
    policy.reset()
    timeout = cfg.frame_timeout_s
    frame = camera.read(timeout_s=timeout, after_command_seq=first_command_seq)
    context: collections.deque[np.ndarray] = collections.deque(maxlen=cfg.context_frames)
    # Before the episode has history, the context repeats its first frame: "it was standing still".
    context.extend([frame.rgb] * cfg.context_frames)
    # The actions the arm applied between consecutive context frames (None: unknown, "hold"), which a
    # learned predictor conditions on as it was trained to.
    past: collections.deque[np.ndarray | None] = collections.deque(
        [None] * max(1, cfg.context_frames - 1), maxlen=max(1, cfg.context_frames - 1)
    )
    if judge is not None:
        episode.initial_judgement = judge()
    try:
        # The arm's pose, so that the planner scores only sequences the arm's limits let through.
        pose = np.asarray(arm.read_state().pose, dtype=np.float64)
        for step in range(cfg.max_steps):
            t0 = time.perf_counter()
            while True:
                if before_plan is not None:
                    before_plan()
                plan = policy.plan(np.stack(context), _context_actions(past, cfg.context_frames), pose)
                if on_plan is not None:
                    on_plan(step, plan)
                if hold is None or not hold():
                    break
                frame = camera.read(timeout_s=timeout)  # the scene may have changed during the pause
                context.append(frame.rgb)
                past.append(_hold(past[-1]))  # nothing was commanded between the two frames
                t0 = time.perf_counter()
            sent = applied = None
            clipped = False
            if dry_run:
                next_frame = camera.read(timeout_s=timeout)
            else:
                sent = np.asarray(plan.action, dtype=np.float64)
                result = arm.send_action(sent)
                applied, clipped = result.applied, result.clipped
                pose = np.asarray(result.state.pose, dtype=np.float64)
                next_frame = camera.read(timeout_s=timeout, after_command_seq=result.seq)
            judgement = judge() if judge is not None else None
            record = StepRecord(
                step=step,
                frame=frame.rgb,
                frame_seq=frame.seq,
                plan=plan,
                sent=sent,
                applied=applied,
                clipped=clipped,
                step_time_s=time.perf_counter() - t0,
                judgement=judgement,
                next_frame=next_frame.rgb,
            )
            episode.steps.append(record)
            log.info(
                "step %d: cost %.2f, plan %.2f s%s, action %s",
                step,
                plan.result.cost,
                plan.plan_time_s,
                "" if judgement is None else f", distance {judgement.distance_m * 100:.1f} cm",
                "(dry run: not sent)" if sent is None else np.array2string(sent, precision=3),
            )
            if on_step is not None:
                on_step(record)
            frame = next_frame
            context.append(frame.rgb)
            past.append(np.asarray(applied, np.float32) if applied is not None else _hold(past[-1]))
            if judgement is not None and judgement.success and cfg.stop_on_success:
                episode.stopped_by = "success"
                break
        else:
            episode.stopped_by = "max_steps"
    except KeyboardInterrupt:
        episode.stopped_by = "interrupted"
        _stop_arm(arm)
        raise
    except EStopActive:
        episode.stopped_by = "estop"  # the controller already holds the arm
        raise
    except BaseException:
        episode.stopped_by = "error"
        _stop_arm(arm)
        raise
    finally:
        episode.final_frame = frame.rgb
    return episode


def _stop_arm(arm: Arm) -> None:
    try:
        arm.stop()
        log.info("arm stopped")
    except ArmError as exc:  # the controller may already be gone; its watchdog stops it then
        log.warning("could not stop the arm: %s", exc)


def _hold(like: np.ndarray | None) -> np.ndarray | None:
    """No motion, the gripper where action ``like`` left it (None when nothing is known)."""
    if like is None:
        return None
    hold = np.zeros_like(like)
    hold[-1] = like[-1]
    return hold


def _context_actions(past: collections.deque[np.ndarray | None], context_frames: int) -> np.ndarray | None:
    """(Tc - 1, 5) applied actions between the context frames; None before any is known. Unknown early
    entries are "hold" with the gripper of the first known action."""
    known = [a for a in past if a is not None]
    if context_frames < 2 or not known:
        return None
    return np.stack([_hold(known[0]) if a is None else a for a in past])
