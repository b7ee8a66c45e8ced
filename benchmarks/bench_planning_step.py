"""Seconds per planning step with an exported MaskViT predictor (``--predictor PATH``) on this machine.

For each model size given, a randomly initialised tokenizer (the tokenizer_cpu preset: 64x64 frames,
8x8 tokens, 512 codes) and MaskViT (speed does not depend on the weights) are saved as checkpoints,
exported with ``export-predictor``'s code path and loaded the way ``mpc-run`` loads them. Then the real
planner (CEM with the default planner and cost settings: 60 samples, 3 iterations, horizon 8, cost on
the last frame, plus the best plan's rollout) plans on fresh context frames, once per precision
(fp32, bf16 weights), decoding step count, batch size and temperature (0: argmax, as the maskvit_cpu
preset decodes; sampling adds a softmax and a multinomial draw over every token to each pass).
Reported: the median seconds of a planning step, of which inside the predictor, and the MaskViT
forward passes per step. Prints a markdown table and the command.

    nice python benchmarks/bench_planning_step.py --threads 2
    nice python benchmarks/bench_planning_step.py --predictor maskvit --steps 1 2   # the shipped model
    nice python benchmarks/bench_planning_step.py --sizes 128x2 192x3 --steps 1 2 4 --batches 64 200
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.models.export import export_predictor
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig
from maskvit_mpc.models.token_cache import file_digest
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel
from maskvit_mpc.models.training import save_checkpoint
from maskvit_mpc.mpc.optimizers import ActionBounds
from maskvit_mpc.mpc.planner import VisualMPCPolicy
from maskvit_mpc.mpc.predictors import default_model_path, load_predictor
from maskvit_mpc.robot.safety import ActionLimiter
from report import command_line, markdown_table


def _export(folder: Path, d_model: int, blocks: int, context: int, future: int) -> Path:
    cfg = load_config("tokenizer_cpu")
    tok_cfg = TokenizerModelConfig.from_config(cfg.tokenizer)
    tok_path = save_checkpoint(
        folder / "tokenizer.pt",
        models={"tokenizer": VQModel(tok_cfg)},
        step=0,
        config={},
        extra={"model_config": tok_cfg.to_dict()},
    )
    mv_cfg = MaskViTModelConfig(
        codebook_size=tok_cfg.num_codes, grid_h=tok_cfg.grid_size, grid_w=tok_cfg.grid_size,
        num_frames=context + future, d_model=d_model, n_blocks=blocks, n_heads=max(1, d_model // 32),
    )  # fmt: skip
    # the decoding settings a planning model is trained with (argmax, no confidence noise)
    training = load_config("maskvit_cpu").maskvit.model_copy(
        update={"context_frames": context, "future_frames": future}
    )
    mv_path = save_checkpoint(
        folder / "maskvit.pt",
        models={"maskvit": MaskViT(mv_cfg)},
        step=0,
        config={"maskvit": training.model_dump(), "data": cfg.data.model_dump()},
        extra={
            "model_config": mv_cfg.to_dict(),
            "tokenizer_checkpoint": str(tok_path),
            "tokenizer_sha256": file_digest(tok_path),
        },
    )
    return export_predictor(tok_path, mv_path, folder / f"predictor_{d_model}x{blocks}.ts", cfg.safety)[0]


# the arm's pose for every timed step: the workspace centre at push height (pose-conditioned models)
_ARM_POSE = np.array([0.0, 0.0, 0.022, 0.0, -1.0])


def _plan_times(path: Path, overrides: list[str], repeats: int, seed: int) -> dict[str, float]:
    cfg = load_config("default", overrides)
    predictor = load_predictor(str(path), cfg)
    rng = np.random.default_rng(seed)
    size = cfg.sim.image_size
    goal = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    policy = VisualMPCPolicy(
        predictor,
        goal,
        cfg.planner,
        cfg.cost,
        ActionBounds.from_safety(cfg.safety),
        rng,
        current_gripper=-1.0,
        limiter=ActionLimiter(cfg.safety),  # samples limited from the arm's pose, as mpc-run plans
    )
    total, predict, passes = [], [], []
    for i in range(repeats + 1):  # the first step warms up TorchScript's profiling executor and oneDNN
        context = rng.integers(0, 256, (cfg.mpc.context_frames, size, size, 3), dtype=np.uint8)
        before = predictor.forward_passes
        step = policy.plan(context, None, _ARM_POSE)
        if i:
            total.append(step.plan_time_s)
            predict.append(step.predict_time_s)
            passes.append(predictor.forward_passes - before)
    return {
        "step_s": statistics.median(total),
        "predict_s": statistics.median(predict),
        "passes": statistics.median(passes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["128x2", "192x3"], help="MaskViT d_model x blocks")
    parser.add_argument(
        "--predictor",
        help="time this exported predictor (a file, or maskvit: the shipped one) instead of random --sizes",
    )
    parser.add_argument(
        "--steps", nargs="+", type=int, default=[1, 2, 4], help="decoding steps per prediction"
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64], help="planner.predictor_batch values")
    parser.add_argument(
        "--temperatures", nargs="+", type=float, default=[0.0], help="planner.predictor_temperature values"
    )
    parser.add_argument("--context", type=int, default=2)
    parser.add_argument("--future", type=int, default=8, help="the model's future frames (= planner.horizon)")
    parser.add_argument("--repeats", type=int, default=3, help="timed planning steps per setting (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [args.predictor] if args.predictor else args.sizes:
            if args.predictor:
                path = default_model_path() if args.predictor == "maskvit" else Path(args.predictor)
                label = f"{path.name} (trained)"
            else:
                d, blocks = (int(v) for v in size.split("x"))
                path = _export(Path(tmp) / size, d, blocks, args.context, args.future)
                label = f"d {d}, {blocks} blocks"
            for precision in args.precisions:
                for steps, batch, temperature in itertools.product(
                    args.steps, args.batches, args.temperatures
                ):
                    overrides = [
                        f"mpc.context_frames={args.context}",
                        f"planner.horizon={args.future}",
                        f"planner.predictor_decode_steps={steps}",
                        f"planner.predictor_precision={precision}",
                        f"planner.predictor_batch={batch}",
                        f"planner.predictor_temperature={temperature}",
                        *args.overrides,
                    ]
                    t = _plan_times(path, overrides, args.repeats, seed=0)
                    row = {
                        "model": label,
                        "precision": precision,
                        "decode steps": str(steps),
                        "temperature": f"{temperature:g}",
                        "batch": str(batch),
                        "s / planning step": f"{t['step_s']:.2f}",
                        "of which predictor s": f"{t['predict_s']:.2f}",
                        "forward passes": f"{t['passes']:.0f}",
                    }
                    rows.append(row)
                    print(row, file=sys.stderr, flush=True)

    cfg = load_config("default", args.overrides)
    tok = TokenizerModelConfig.from_config(load_config("tokenizer_cpu").tokenizer)
    print(f"{command_line()}  ")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"tokenizer_cpu ({tok.image_size}x{tok.image_size} frames, {tok.grid_size}x{tok.grid_size} tokens, "
          f"{tok.quantizer} {tok.num_codes} codes), {args.context} context + {args.future} predicted frames; "
          f"CEM {cfg.planner.samples} samples x {cfg.planner.iterations} iterations + the best plan's rollout, "
          f"cost frames: {cfg.cost.frames}; median of {args.repeats} planning steps\n")  # fmt: skip
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
