"""train-maskvit end to end on tiny synthetic episodes and a tiny (untrained) tokenizer checkpoint."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from maskvit_mpc.models import train_maskvit
from maskvit_mpc.models.maskvit import maskvit_from_checkpoint
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel
from maskvit_mpc.models.training import load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_helpers import write_episodes  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mv")
    episodes = write_episodes(root / "episodes", n=6, steps=5, size=16)
    torch.manual_seed(0)
    tok_cfg = TokenizerModelConfig(
        image_size=16, grid_size=4, channel_mult=[1, 2, 2], base_channels=8, codebook_size=32, code_dim=8
    )
    tok = root / "tokenizer.pt"
    save_checkpoint(
        tok,
        models={"tokenizer": VQModel(tok_cfg)},
        step=0,
        config={},
        extra={"model_config": tok_cfg.to_dict()},
    )
    return episodes, tok


def _argv(episodes: Path, tok: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        "data.clip_length=4",
        "data.image_size=16",
        "data.val_fraction=0.3",
        "maskvit.context_frames=1",
        "maskvit.future_frames=3",
        "maskvit.d_model=32",
        "maskvit.n_heads=4",
        "maskvit.n_blocks=1",
        "maskvit.batch_size=4",
        "maskvit.log_every=2",
        "maskvit.val_every=2",
        "maskvit.checkpoint_every=2",
        "maskvit.val_batches=1",
        "maskvit.device=cpu",
        "maskvit.token_weighting=background",
    ]
    argv = ["--data", str(episodes), "--tokenizer", str(tok), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


def test_train_resume_and_reload(setup: tuple[Path, Path], tmp_path: Path) -> None:
    episodes, tok = setup
    out = tmp_path / "run"
    assert train_maskvit.main(_argv(episodes, tok, out, "--steps", "4")) == 0
    assert sorted(p.name for p in out.glob("step_*.pt")) == ["step_0000002.pt", "step_0000004.pt"]
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert all(float(r["loss"]) > 0 and float(r["val_loss"]) > 0 for r in rows)
    assert 0.5 <= float(rows[0]["mask_ratio"]) <= 1.0
    # decoded predictions are scored against the truth and the copy-last baseline, with object errors
    for column in (
        "val_pred_psnr",
        "val_copy_last_psnr",
        "val_pred_ssim",
        "val_recon_psnr",
        "val_object_found",
    ):
        assert all(float(r[column]) >= 0 for r in rows), column
    assert float(rows[0]["val_copy_last_psnr"]) > 10  # tiny synthetic clips: copy-last is close
    assert (out / "token_cache.pt").is_file()  # frames encoded once, reused on resume

    ckpt = load_checkpoint(out / "step_0000004.pt")
    assert len(ckpt["extra"]["background"]) == 4  # the 4x4 grid's background tokens, kept for resuming
    model = maskvit_from_checkpoint(ckpt)
    tokens = torch.randint(0, 32, (2, 4, 4, 4))
    assert model(tokens, torch.zeros(2, 3, 5)).shape == (2, 4, 4, 4, 32)

    # an existing run is refused without --resume, continued with it
    assert train_maskvit.main(_argv(episodes, tok, out, "--steps", "6")) == 2
    assert train_maskvit.main(_argv(episodes, tok, out, "--steps", "6", "--resume")) == 0
    assert load_checkpoint(out / "step_0000006.pt")["step"] == 6


def test_mismatched_clip_length_and_missing_tokenizer_are_user_errors(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    episodes, tok = setup
    assert train_maskvit.main(_argv(episodes, tok, tmp_path / "a", "--set", "data.clip_length=5")) == 2
    assert "clip_length" in capsys.readouterr().err
    assert train_maskvit.main(_argv(episodes, tmp_path / "none.pt", tmp_path / "b")) == 2
    assert "none.pt" in capsys.readouterr().err


def test_runs_share_a_token_cache_file(setup: tuple[Path, Path], tmp_path: Path) -> None:
    episodes, tok = setup
    shared = tmp_path / "codes.pt"
    argv = _argv(episodes, tok, tmp_path / "a", "--steps", "2", "--token-cache", str(shared))
    assert train_maskvit.main(argv + ["--set", "maskvit.val_decode_clips=0"]) == 0
    assert shared.is_file() and not (tmp_path / "a" / "token_cache.pt").exists()
    before = shared.stat().st_mtime_ns
    argv = _argv(episodes, tok, tmp_path / "b", "--steps", "2", "--token-cache", str(shared))
    assert train_maskvit.main(argv + ["--set", "maskvit.val_decode_clips=0"]) == 0
    assert shared.stat().st_mtime_ns == before  # the second run encoded nothing


def test_eval_maskvit_reports_predictions_against_copy_last(setup: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from maskvit_mpc.models import eval_maskvit

    episodes, tok = setup
    out = tmp_path / "run"
    argv = _argv(episodes, tok, out, "--steps", "2", "--set", "maskvit.val_decode_clips=0")
    assert train_maskvit.main(argv) == 0
    result = tmp_path / "eval.json"
    rc = eval_maskvit.main(
        ["--checkpoint", str(out / "step_0000002.pt"), "--data", str(episodes), "--clips", "3"]
        + ["--steps", "1", "2", "--json", str(result)]
    )
    assert rc == 0
    doc = json.loads(result.read_text())
    assert doc["clips"] == 3 and doc["tokenizer"] == str(tok)
    for steps in ("steps_1", "steps_2"):
        row = doc[steps]
        assert 0 < row["pred_psnr"] < 100 and 0 < row["copy_last_psnr"] <= 100
        assert -1 <= row["pred_ssim"] <= 1 and 0 <= row["object_found"] <= 1
        assert row["copy_last_object_err_px"] >= 0
    assert eval_maskvit.main(["--checkpoint", str(tok), "--data", str(episodes)]) == 2  # not a MaskViT file


def _weights_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_init_from_an_export_or_a_checkpoint_fine_tunes_its_weights(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from maskvit_mpc.models.export import export_predictor

    episodes, tok = setup
    base = tmp_path / "base"
    quiet = ["--set", "maskvit.val_decode_clips=0"]
    assert train_maskvit.main(_argv(episodes, tok, base, "--steps", "2", *quiet)) == 0
    trained = load_checkpoint(base / "step_0000002.pt")
    predictor = export_predictor(tok, base / "step_0000002.pt", tmp_path / "p.ts")[0]

    # from the export, with no --tokenizer: its own tokenizer is unpacked and used; a tiny lr keeps the weights
    argv = _argv(episodes, tok, tmp_path / "ft", "--steps", "2", "--init-from", str(predictor), *quiet)
    at = argv.index("--tokenizer")
    del argv[at : at + 2]
    assert train_maskvit.main(argv + ["--set", "maskvit.lr=1e-12", "--set", "maskvit.warmup_steps=0"]) == 0
    tuned = load_checkpoint(tmp_path / "ft" / "step_0000002.pt")
    assert tuned["step"] == 2  # a new schedule, not the base run's
    assert tuned["extra"]["tokenizer_checkpoint"] == str(tmp_path / "ft" / "init" / "tokenizer.pt")
    assert _weights_close(tuned["models"]["maskvit"], trained["models"]["maskvit"])
    assert tuned["extra"]["background"] == trained["extra"]["background"]

    # from the checkpoint, with a real learning rate: it starts from those weights and moves them
    argv = _argv(
        episodes, tok, tmp_path / "ft2", "--steps", "2", "--init-from", str(base / "step_0000002.pt")
    )
    assert train_maskvit.main(argv + quiet) == 0
    moved = load_checkpoint(tmp_path / "ft2" / "step_0000002.pt")["models"]["maskvit"]
    assert not _weights_close(moved, trained["models"]["maskvit"])

    # another network or another tokenizer is refused with what differs
    argv = _argv(episodes, tok, tmp_path / "bad", "--init-from", str(base / "step_0000002.pt"))
    assert train_maskvit.main(argv + ["--set", "maskvit.d_model=64"]) == 2
    assert "differs from this config's in ['d_model']" in capsys.readouterr().err
    other = tmp_path / "other_tok.pt"
    data = torch.load(tok, weights_only=True)
    data["step"] = 5
    torch.save(data, other)
    assert train_maskvit.main(_argv(episodes, other, tmp_path / "bad2", "--init-from", str(predictor))) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert (
        train_maskvit.main(_argv(episodes, tok, tmp_path / "bad3", "--init-from", str(tmp_path / "no.ts")))
        == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_pose_conditioning_trains_and_can_be_added_to_a_model_without_it(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    episodes, tok = setup
    quiet = ["--set", "maskvit.val_decode_clips=2"]
    base = tmp_path / "base"
    assert train_maskvit.main(_argv(episodes, tok, base, "--steps", "2", *quiet)) == 0
    posed = ["--set", "maskvit.pose_conditioning=true"]
    out = tmp_path / "posed"
    argv = _argv(episodes, tok, out, "--steps", "2", "--init-from", str(base / "step_0000002.pt"))
    assert train_maskvit.main(argv + quiet + posed) == 0
    ckpt = load_checkpoint(out / "step_0000002.pt")
    assert ckpt["extra"]["model_config"]["pose_conditioning"]
    pose_weights = [k for k in ckpt["models"]["maskvit"] if "pose_proj" in k]
    assert pose_weights and any(ckpt["models"]["maskvit"][k].abs().sum() > 0 for k in pose_weights)  # trained
    with (out / "metrics.csv").open(newline="") as f:
        assert float(list(csv.DictReader(f))[-1]["val_pred_psnr"]) > 0  # validation decodes with the pose
    # and back: a pose-conditioned checkpoint does not fit a network without it
    argv = _argv(episodes, tok, tmp_path / "back", "--init-from", str(out / "step_0000002.pt"))
    assert train_maskvit.main(argv) == 2


def test_init_from_a_shallower_model_adds_identity_blocks(setup: tuple[Path, Path], tmp_path: Path) -> None:
    episodes, tok = setup
    quiet = ["--set", "maskvit.val_decode_clips=0"]
    base = tmp_path / "base"
    assert train_maskvit.main(_argv(episodes, tok, base, "--steps", "2", *quiet)) == 0
    trained = load_checkpoint(base / "step_0000002.pt")
    deeper = ["--set", "maskvit.n_blocks=2", "--set", "maskvit.lr=1e-12", "--set", "maskvit.warmup_steps=0"]
    out = tmp_path / "deep"
    argv = _argv(episodes, tok, out, "--steps", "2", "--init-from", str(base / "step_0000002.pt"))
    assert train_maskvit.main(argv + quiet + deeper) == 0
    ckpt = load_checkpoint(out / "step_0000002.pt")
    assert ckpt["extra"]["model_config"]["n_blocks"] == 2
    weights = ckpt["models"]["maskvit"]
    assert all(torch.allclose(weights[k], v, atol=1e-6) for k, v in trained["models"]["maskvit"].items())
    # with a learning rate of ~0 the added block is still the identity: the deeper network predicts as before
    shallow, deep = maskvit_from_checkpoint(trained), maskvit_from_checkpoint(ckpt)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 33, (2, 4, 4, 4), generator=g)
    actions = torch.randn(2, 3, 5, generator=g)
    with torch.no_grad():
        assert torch.allclose(deep(tokens, actions), shallow(tokens, actions), atol=1e-5)
    # dropout is not part of the network: a fine-tune may change it
    argv = _argv(
        episodes, tok, tmp_path / "nodrop", "--steps", "2", "--init-from", str(base / "step_0000002.pt")
    )
    assert train_maskvit.main(argv + quiet + ["--set", "maskvit.dropout=0"]) == 0
    # fewer blocks than the checkpoint is refused
    argv = _argv(episodes, tok, tmp_path / "back", "--init-from", str(out / "step_0000002.pt"))
    assert train_maskvit.main(argv + quiet) == 2


def test_object_and_context_weighting_train_from_the_cli(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """maskvit.object_token_weight reads the episodes' segmentation into the token cache and trains."""
    episodes, tok = setup
    out = tmp_path / "obj"
    argv = _argv(episodes, tok, out, "--steps", "2")
    argv += ["--set", "maskvit.token_weighting=context", "--set", "maskvit.object_token_weight=16"]
    assert train_maskvit.main(argv) == 0
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) > 0 and float(rows[-1]["val_loss"]) > 0
    cache = torch.load(out / "token_cache.pt", weights_only=True)
    assert cache["objects"] and all(v.dtype == torch.bool for v in cache["objects"].values())
