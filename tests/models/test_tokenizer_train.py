"""train-tokenizer and eval-tokenizer end to end on tiny recorded episodes, including a 2-process gloo run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from maskvit_mpc.configs import load_config
from maskvit_mpc.models import eval_tokenizer, train_tokenizer
from maskvit_mpc.models.data import recorded_episodes
from maskvit_mpc.models.frame_data import EpisodeFrames, frame_datasets
from maskvit_mpc.models.tokenizer import load_tokenizer
from maskvit_mpc.models.training import load_checkpoint
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_helpers import synthetic_frames, write_episodes  # noqa: E402

TINY = [
    "tokenizer.image_size=16",
    "tokenizer.grid_size=4",
    "tokenizer.channel_mult=[1,2,2]",
    "tokenizer.base_channels=8",
    "tokenizer.code_dim=8",
    "tokenizer.codebook_size=32",
    "tokenizer.batch_size=8",
    "tokenizer.warmup_steps=2",
    "tokenizer.lr=0.003",
    "tokenizer.log_every=5",
    "tokenizer.sample_every=5",
    "tokenizer.checkpoint_every=5",
    "tokenizer.device=cpu",
]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("eps"), n=4, steps=7, size=16)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_frame_dataset_reads_frames_and_segmentation_masks(episodes: Path) -> None:
    ds = EpisodeFrames(recorded_episodes(episodes), image_size=16)
    assert len(ds) == 4 * 8
    item = ds[9]  # episode 1, frame 1
    frames, seg = synthetic_frames(7, 16, seed=1)
    assert (item["episode"], item["t"], item["has_segmentation"]) == (1, 1, True)
    assert item["frame"].shape == (3, 16, 16)
    assert torch.allclose(item["frame"], torch.from_numpy(frames[1]).permute(2, 0, 1).float() / 255)
    assert torch.equal(item["mask"], torch.from_numpy(seg[1] > 0))
    small = EpisodeFrames(recorded_episodes(episodes), image_size=8)[9]
    assert small["frame"].shape == (3, 8, 8) and small["mask"].shape == (8, 8) and bool(small["mask"].any())


def test_frame_dataset_keeps_few_files_open(episodes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskvit_mpc.models import frame_data

    monkeypatch.setattr(frame_data, "_MAX_OPEN_FILES", 2)
    ds = EpisodeFrames(recorded_episodes(episodes), image_size=16)
    reference = [EpisodeFrames(recorded_episodes(episodes), 16)[k]["frame"] for k in (0, 31)]
    for k in [0, 31, 8, 16, 24, 0, 31]:
        item = ds[k]
        assert len(ds._files) <= 2
    assert torch.equal(ds[0]["frame"], reference[0]) and torch.equal(item["frame"], reference[1])


def test_frame_dataset_without_segmentation_masks_changing_pixels(tmp_path: Path) -> None:
    write_episodes(tmp_path, n=1, steps=5, size=16, segmentation=False)
    ds = EpisodeFrames(recorded_episodes(tmp_path), image_size=16)
    item = ds[0]
    frames, _ = synthetic_frames(5, 16, seed=0)
    moving = np.abs(frames.astype(int).max(0) - frames.astype(int).min(0)).max(-1) > 10
    assert item["has_segmentation"] is False
    assert torch.equal(item["mask"], torch.from_numpy(moving)) and bool(item["mask"].any())


def test_frame_datasets_split_by_episode(episodes: Path) -> None:
    data = load_config("default", ["data.val_fraction=0.3"]).data
    train = frame_datasets([episodes], data, 16, split="train")
    val = frame_datasets([episodes], data, 16, split="val")
    names = lambda ds: {e.name for e in ds.episodes}  # noqa: E731
    assert names(train).isdisjoint(names(val)) and len(names(train) | names(val)) == 4


def test_train_resume_and_evaluate_end_to_end(
    episodes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["--data", str(episodes), "--out", str(out), "--split", "all", *_sets(TINY)]
    assert train_tokenizer.main([*args, "--steps", "10"]) == 0
    assert sorted(p.name for p in out.glob("step_*.pt")) == ["step_0000005.pt", "step_0000010.pt"]
    rows = _rows(out / "metrics.csv")
    assert [r["step"] for r in rows] == ["5", "10"]
    assert {"rec_loss", "psnr", "codebook_usage", "perplexity", "lr"} <= set(rows[0])
    grid = Image.open(out / "samples" / "step_0000010.png")
    assert grid.size == (8 * 16, 2 * 16)

    ckpt = torch.load(out / "step_0000010.pt", weights_only=True)
    assert ckpt["step"] == 10 and ckpt["config"]["tokenizer"]["grid_size"] == 4

    # a second run into the same folder must say --resume; --resume continues the step count
    assert train_tokenizer.main([*args, "--steps", "15"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_tokenizer.main([*args, "--steps", "15", "--resume"]) == 0
    assert load_checkpoint(out / "step_0000015.pt")["step"] == 15
    assert [r["step"] for r in _rows(out / "metrics.csv")] == ["5", "10", "15"]
    # resuming with another network is refused with the differing field named
    assert train_tokenizer.main([*args, "--steps", "20", "--resume", "--set", "tokenizer.code_dim=4"]) == 2
    assert "code_dim" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    ckpt_path = out / "step_0000015.pt"
    assert (
        eval_tokenizer.main(["--checkpoint", str(ckpt_path), "--data", str(episodes), "--json", str(report)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "psnr_db" in printed and "codebook_usage" in printed
    results = json.loads(report.read_text())
    assert results["frames"] == 32 and results["object_mask"] == "segmentation"
    assert 0 < results["codebook_used"] <= 32 and results["codebook_size"] == 32
    assert 1.0 <= results["perplexity"] <= 32
    assert 0.0 <= results["static_token_churn"] <= results["token_churn"] + 1e-9 <= 1.0 + 1e-9
    # the report's numbers are those of the model on these frames
    model = load_tokenizer(ckpt_path)
    ds = EpisodeFrames(recorded_episodes(episodes), 16)
    frames = torch.stack([ds[i]["frame"] for i in range(len(ds))])
    with torch.no_grad():
        rec = model.decode(model.encode(frames))
    from maskvit_mpc.models.metrics import psnr

    assert results["psnr_db"] == pytest.approx(float(psnr(rec, frames).mean()), rel=1e-4)
    from maskvit_mpc.models.metrics import masked_psnr

    objects = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    assert objects.any() and not objects.all()
    assert results["object_psnr_db"] == pytest.approx(
        float(masked_psnr(rec, frames, objects).nanmean()), rel=1e-4
    )
    assert results["background_psnr_db"] == pytest.approx(
        float(masked_psnr(rec, frames, ~objects).nanmean()), rel=1e-4
    )


def test_training_lowers_the_reconstruction_loss(episodes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [
        *TINY,
        "tokenizer.object_weight=1.0",
        "tokenizer.log_every=10",
        "tokenizer.checkpoint_every=100",
    ]
    args = ["--data", str(episodes), "--out", str(out), "--split", "all", "--steps", "60", *_sets(overrides)]
    assert train_tokenizer.main(args) == 0
    rows = _rows(out / "metrics.csv")
    first, last = float(rows[0]["rec_loss"]), float(rows[-1]["rec_loss"])
    assert last < 0.7 * first
    assert float(rows[-1]["psnr"]) > float(rows[0]["psnr"]) + 2


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_tokenizer.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_tokenizer.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "no step_N.pt" in capsys.readouterr().err
    assert eval_tokenizer.main(["--checkpoint", str(tmp_path / "x.pt"), "--data", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_two_process_gloo_run(episodes: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    overrides = [
        *TINY,
        "tokenizer.batch_size=4",
        "tokenizer.disc_weight=0.1",
        "tokenizer.disc_start_step=5",
        "tokenizer.disc_layers=2",
        "tokenizer.disc_channels=8",
        "tokenizer.dead_code_steps=3",
        "tokenizer.codebook_update=ema",  # the path with the most collectives: EMA sums, counts, restarts
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "maskvit_mpc.models.train_tokenizer",
        "--data", str(episodes), "--out", str(out), "--split", "all", "--steps", "10", *_sets(overrides),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "step_0000010.pt")
    assert ckpt["extra"]["world_size"] == 2
    assert "discriminator" in ckpt["models"]
    rows = _rows(out / "metrics.csv")
    assert [r["step"] for r in rows] == ["5", "10"]  # one writer: rank 0
    assert rows[0]["d_loss"] in ("", "0") and float(rows[1]["d_loss"]) > 0
    assert float(rows[1]["adaptive_weight"]) > 0


def test_eval_val_split_uses_the_training_runs_held_out_episodes(episodes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "--data",
        str(episodes),
        "--out",
        str(out),
        "--steps",
        "2",
        *_sets([*TINY, "data.val_fraction=0.5"]),
    ]
    assert train_tokenizer.main(args) == 0
    report = tmp_path / "val.json"
    ckpt = str(out / "step_0000002.pt")
    assert (
        eval_tokenizer.main(
            ["--checkpoint", ckpt, "--data", str(episodes), "--split", "val", "--json", str(report)]
        )
        == 0
    )
    held_out = frame_datasets(
        [episodes], load_config("default", ["data.val_fraction=0.5"]).data, 16, split="val"
    )
    assert json.loads(report.read_text())["frames"] == len(held_out) < 32


def test_ddp_ranks_keep_one_codebook(tmp_path: Path) -> None:
    report = tmp_path / "ranks.txt"
    worker = Path(__file__).with_name("ddp_codebook_worker.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(report),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = report.read_text().split()
    assert lines[0:2] == ["gradient", "same=True"] and lines[3:5] == ["ema", "same=True"]


class _StillEpisode:
    """An episode whose frames are all the same picture (or, with ``moving``, a box that walks)."""

    def __init__(self, moving: bool) -> None:
        frames, _ = synthetic_frames(5, 16, seed=3)
        self.frames_ = np.repeat(frames[:1], 6, axis=0) if not moving else frames
        self.num_frames = len(self.frames_)

    def frames(self, start: int, stop: int, step: int) -> np.ndarray:
        return self.frames_[start:stop:step]


def test_token_churn_is_zero_on_a_still_scene_and_counts_code_flips() -> None:
    from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel

    torch.manual_seed(0)
    model = VQModel(TokenizerModelConfig(image_size=16, grid_size=4, base_channels=8, channel_mult=[1, 2, 2]))
    still = eval_tokenizer.token_churn(model, [_StillEpisode(moving=False)])
    assert still == {"token_churn": 0.0, "static_token_churn": 0.0, "static_token_share": 1.0}
    moving = eval_tokenizer.token_churn(model, [_StillEpisode(moving=True)])
    frames = torch.from_numpy(_StillEpisode(moving=True).frames_).permute(0, 3, 1, 2).float() / 255.0
    codes = model.eval().encode(frames)
    assert moving["token_churn"] == pytest.approx(float((codes[1:] != codes[:-1]).float().mean()))
    assert moving["static_token_share"] < 1.0  # the gripper moves
