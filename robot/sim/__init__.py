"""MuJoCo tabletop simulation: a floating gripper driven by 5-D end-effector deltas, and its tasks.

    sim = TabletopSim(cfg.sim, cfg.safety)
    task = make_task(cfg.task)
    episode = task.sample(sim, seed=0)   # sim now in episode.initial_state
    applied = sim.step(np.array([0.02, 0.0, 0.0, 0.0, 1.0]))
    frame = sim.render()                  # (S, S, 3) uint8
    task.success(sim, episode)

States are bytes (:meth:`TabletopSim.get_state`); a state restored into another ``TabletopSim`` built
from the same ``SimConfig`` continues bit for bit.
"""

from .rendering import RenderBackendError
from .scene import gripper_centre
from .tabletop import SEG_BACKGROUND, SEG_FIRST_OBJECT, SEG_GRIPPER, SimError, TabletopSim
from .tasks import PushTask, ReachTask, Task, TaskEpisode, TaskError, make_task

__all__ = [
    "SEG_BACKGROUND",
    "SEG_FIRST_OBJECT",
    "SEG_GRIPPER",
    "PushTask",
    "ReachTask",
    "RenderBackendError",
    "SimError",
    "TabletopSim",
    "Task",
    "TaskEpisode",
    "TaskError",
    "gripper_centre",
    "make_task",
]
