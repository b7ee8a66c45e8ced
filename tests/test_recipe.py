"""recipes/train_default_model.sh, the shipped model's recipe, runs end to end at toy sizes and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_default_model.sh"


def _run_recipe(work: Path, episodes: int) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        WORK=str(work),
        BIN=str(Path(sys.executable).parent),  # this environment's console scripts
        HOURS="0.01",  # 36 s of simulated robot time: 6 episodes of 30 steps
        TOK_STEPS="2",
        MV_STEPS="2",
        FT_STEPS="2",
        DEEP_STEPS="2",
        NODROP_STEPS="2",
        EVAL_EPISODES=str(episodes),
        EVAL_ARGS="--max-steps 1",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        ["bash", str(RECIPE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_recipe_runs_every_stage_and_exports_the_shipped_architecture(tmp_path: Path) -> None:
    from maskvit_mpc.models.export import load_exported_predictor

    work = tmp_path / "work"
    done = _run_recipe(work, episodes=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("collect", "tokenizer", "MaskViT", "fine-tune", "deepen", "without dropout", "export"):
        assert stage in done.stdout, f"stage {stage!r} did not run:\n{done.stdout[-2000:]}"

    # the export is the last stage's network: 3 blocks, pose-conditioned, trained without dropout
    meta = load_exported_predictor(work / "predictor.ts").metadata
    trained = meta.training["maskvit"]["config"]["maskvit"]
    assert trained["n_blocks"] == 3 and trained["dropout"] == 0.0
    assert meta.pose_conditioning and (meta.context_frames, meta.future_frames) == (2, 8)
    report = json.loads((work / "eval.json").read_text())
    assert report["episodes"] == 2 and len(report["episodes_detail"]) == 2

    # run again: every stage resumes from what is there instead of starting over
    collected = json.loads((work / "episodes" / "manifest.json").read_text())
    tokenizer_ckpts = sorted((work / "tokenizer").glob("step_*.pt"))
    again = _run_recipe(work, episodes=1)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((work / "episodes" / "manifest.json").read_text()) == collected
    assert sorted((work / "tokenizer").glob("step_*.pt")) == tokenizer_ckpts
    assert json.loads((work / "eval.json").read_text())["episodes"] == 1
