"""Shared training utilities: LR schedule, checkpoints, metrics CSV, seeding, single-process setup."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from maskvit_mpc.models.training import (
    CheckpointError,
    CSVLogger,
    all_reduce_mean,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    seed_everything,
    set_lr,
    setup_distributed,
    unwrap,
    wrap_ddp,
)

sys.path.insert(0, str(Path(__file__).parent))


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    lrs = [lr_at(s, 1.0, warmup_steps=10, total_steps=110, min_ratio=0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half way through the cosine: floor + half the span
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    decay = lrs[10:111]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at(0, 2.0, warmup_steps=0, total_steps=10) == pytest.approx(2.0)


def test_set_lr_sets_every_group() -> None:
    opt = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}],
        lr=1.0,
    )
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    config = {"tokenizer": {"lr": 1e-3, "channel_mult": [1, 2], "path": None, "quantizer": "vq"}}
    path = save_checkpoint(
        tmp_path / "run" / checkpoint_name(7), models={"m": model}, optimizers={"m": opt}, step=7, config=config,
        extra={"note": "x"},
    )  # fmt: skip
    assert path.name == "step_0000007.pt"
    assert not list(path.parent.glob("*.tmp"))  # written aside and renamed
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["config"] == config and raw["extra"] == {"note": "x"}
    data = load_checkpoint(path)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh.load_state_dict(data["models"]["m"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(data["optimizers"]["m"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a maskvit_mpc checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_latest_checkpoint_picks_the_highest_step(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 120, 30):
        save_checkpoint(tmp_path / checkpoint_name(step), models={}, step=step, config={})
    (tmp_path / "step_9999999.pt.tmp").write_bytes(b"")
    (tmp_path / "notes.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000120.pt"


def test_csv_logger_widens_its_header_and_appends_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path)
    log.log({"step": 1, "loss": 0.5})
    log.log({"step": 2, "loss": 0.25, "d_loss": 1.0})
    again = CSVLogger(path)
    again.log({"step": 3, "loss": 0.125})
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["d_loss"] == "" and rows[1]["d_loss"] == "1" and rows[2]["loss"] == "0.125"
    assert list(rows[0]) == ["step", "loss", "d_loss"]


def test_seed_everything_repeats_draws() -> None:
    seed_everything(3)
    a = (torch.rand(3), torch.randint(0, 100, (2,)))
    seed_everything(3)
    b = (torch.rand(3), torch.randint(0, 100, (2,)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_single_process_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = setup_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, ctx) is model and unwrap(model) is model
    assert all_reduce_mean({"a": 1.5}, ctx) == {"a": 1.5}
    ctx.barrier()
    ctx.close()
    if not torch.cuda.is_available():
        from maskvit_mpc.configs.errors import UserError

        with pytest.raises(UserError, match="no CUDA"):
            setup_distributed("cuda")
