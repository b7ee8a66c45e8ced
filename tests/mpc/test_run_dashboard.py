"""mpc-run --dashboard: the run starts mpc-dashboard for itself, prints its URL and token, and closes it."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from maskvit_mpc.mpc import run


def test_dashboard_flag_starts_and_closes_the_dashboard(tmp_path, capsys):
    argv = ["--sim", "--predictor", "copy-last", "--max-steps", "3", "--out", str(tmp_path / "log")]
    argv += ["--set", "planner.samples=8", "--set", "planner.iterations=2"]
    assert run.main([*argv, "--dashboard", "--dashboard-port", "0", "--telemetry-port", "0"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"operator dashboard: (http://127\.0\.0\.1:\d+/)  \(control token: (\S+)\)", out)
    assert found, out
    assert len(found.group(2)) >= 16
    assert re.search(r"telemetry: tcp://127\.0\.0\.1:\d+ \(mpc-dashboard --telemetry tcp://", out), out
    assert "3 steps (max_steps)" in out
    with pytest.raises(urllib.error.URLError):  # the dashboard ended with its run
        urllib.request.urlopen(found.group(1), timeout=2)


def test_without_the_flags_nothing_is_published(tmp_path, capsys):
    argv = ["--sim", "--predictor", "copy-last", "--max-steps", "1", "--out", str(tmp_path / "log")]
    assert run.main([*argv, "--set", "planner.samples=4", "--set", "planner.iterations=1"]) == 0
    out = capsys.readouterr().out
    assert "operator dashboard" not in out and "telemetry:" not in out
