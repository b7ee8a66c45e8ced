"""Visual model-predictive control: predictors, image costs, CEM / MPPI, the receding-horizon loop.

    predictor = load_predictor("oracle", cfg)            # or "copy-last", or a TorchScript file
    policy = VisualMPCPolicy(predictor, goal_image, cfg.planner, cfg.cost,
                             ActionBounds.from_safety(cfg.safety), np.random.default_rng(0))
    episode = run_episode(arm, camera, policy, cfg.mpc, EpisodeLog(goal_image))

Console scripts: ``mpc-run`` (one episode) and ``mpc-eval`` (success rate over seeded sim episodes).
"""

from .costs import ImageCost, gaussian_blur
from .loop import EpisodeLog, Judgement, StepRecord, run_episode
from .optimizers import ActionBounds, PlanResult, cem, mppi, optimize
from .planner import PlanStep, RandomPolicy, VisualMPCPolicy
from .predictors import CopyLastPredictor, Predictor, PredictorError, load_predictor

__all__ = [
    "ActionBounds",
    "CopyLastPredictor",
    "EpisodeLog",
    "ImageCost",
    "Judgement",
    "PlanResult",
    "PlanStep",
    "Predictor",
    "PredictorError",
    "RandomPolicy",
    "StepRecord",
    "VisualMPCPolicy",
    "cem",
    "gaussian_blur",
    "load_predictor",
    "mppi",
    "optimize",
    "run_episode",
]
