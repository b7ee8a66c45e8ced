"""Episode files and the manifest: round trip, validation, atomic writes, rebuild after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from maskvit_mpc.robot import episodes as E


def make_episode(steps: int = 5, size: int = 16, seed: int = 0, objects: bool = True) -> E.Episode:
    rng = np.random.default_rng(seed)
    meta = E.EpisodeMetadata(
        robot="test-arm",
        camera="test-cam",
        image_height=size,
        image_width=size,
        control_period_s=0.2,
        seed=seed,
        calibration_id="cal-7",
        software_version="0.1.0",
        task="push",
        policy="random",
        extra={"note": "unit test"},
    )
    rec = E.EpisodeRecorder(meta, object_names=("red", "blue") if objects else ())
    obj = rng.uniform(-0.1, 0.1, size=(2, 3))
    for t in range(steps + 1):
        rgb = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        seg = (rgb[..., 0] % 3).astype(np.uint8)
        obj = obj + [[0.01, 0, 0], [0, 0, 0]]  # the first object slides 1 cm per step
        rec.add_observation(
            rgb, np.arange(5) + t, 100.0 + t, obj if objects else None, seg if objects else None
        )
        if t < steps:
            rec.add_action(np.full(5, t, np.float32), np.full(5, t / 2, np.float32), t % 2 == 0, 100.5 + t)
    rec.initial_sim_state = b"\x00\x01state" if objects else None
    return rec.to_episode()


def test_round_trip(tmp_path: Path) -> None:
    ep = make_episode()
    path = tmp_path / E.episode_filename(3)
    size = E.write_episode(path, ep)
    assert size == path.stat().st_size > 0
    back = E.read_episode(path)
    np.testing.assert_array_equal(back.frames, ep.frames)
    np.testing.assert_array_equal(back.commanded, ep.commanded)
    np.testing.assert_array_equal(back.applied, ep.applied)
    np.testing.assert_array_equal(back.clipped, ep.clipped)
    np.testing.assert_array_equal(back.poses, ep.poses)
    np.testing.assert_array_equal(back.t_frame, ep.t_frame)
    np.testing.assert_array_equal(back.t_action, ep.t_action)
    np.testing.assert_array_equal(back.object_positions, ep.object_positions)
    np.testing.assert_array_equal(back.segmentation, ep.segmentation)
    assert back.object_names == ("red", "blue")
    assert back.initial_sim_state == b"\x00\x01state"
    assert back.meta == ep.meta
    assert back.num_steps == 5 and back.frames.shape == (6, 16, 16, 3)
    # The first object moved 5 cm over 6 frames.
    assert back.max_object_displacement() == pytest.approx(0.05, abs=1e-6)
    with h5py.File(path) as f:
        assert f["frames"].compression == "gzip"
        assert f["frames"].chunks == (1, 16, 16, 3)
        assert f.attrs["control_rate_hz"] == pytest.approx(5.0)
    # No temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_recorder_rejects_misaligned_calls() -> None:
    ep = make_episode(steps=1)
    rec = E.EpisodeRecorder(ep.meta)
    with pytest.raises(E.EpisodeError, match="add_action must follow"):
        rec.add_action(np.zeros(5), np.zeros(5), False, 0.0)
    rec.add_observation(ep.frames[0], np.zeros(5), 0.0)
    with pytest.raises(E.EpisodeError, match="twice"):
        rec.add_observation(ep.frames[0], np.zeros(5), 0.0)
    with pytest.raises(E.EpisodeError, match="T >= 1"):
        rec.to_episode()
    with pytest.raises(E.EpisodeError, match="expected"):
        E.EpisodeRecorder(ep.meta).add_observation(np.zeros((8, 8, 3), np.uint8), np.zeros(5), 0.0)


def test_validate_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / E.episode_filename(0)
    E.write_episode(path, make_episode())
    data = path.read_bytes()
    bad = tmp_path / E.episode_filename(1)
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(E.EpisodeError, match="episode_000001"):
        E.validate_episode(bad)
    foreign = tmp_path / E.episode_filename(2)
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(E.EpisodeError, match="format marker"):
        E.validate_episode(foreign)
    assert E.validate_episode(path)["steps"] == 5


def test_manifest_rebuild_and_sync(tmp_path: Path) -> None:
    for i in range(3):
        E.write_episode(tmp_path / E.episode_filename(i), make_episode(seed=i))
    (tmp_path / ".episode_000003.h5.tmp").write_bytes(b"half written")
    manifest = E.load_or_rebuild_manifest(tmp_path)  # no manifest yet: rebuilt from the files
    assert [e["file"] for e in manifest.episodes] == [E.episode_filename(i) for i in range(3)]
    assert manifest.num_frames == 18 and manifest.num_steps == 15
    assert manifest.robot_time_s == pytest.approx(3.0)
    assert manifest.moved_share(0.02) == 1.0 and manifest.moved_share(0.06) == 0.0
    on_disk = json.loads((tmp_path / E.MANIFEST_NAME).read_text())
    assert on_disk["num_episodes"] == 3
    # A file the manifest does not know (written before a crash) is picked up, a deleted one dropped.
    E.write_episode(tmp_path / E.episode_filename(4), make_episode(seed=4))
    (tmp_path / E.episode_filename(0)).unlink()
    manifest = E.load_or_rebuild_manifest(tmp_path)
    assert [e["file"] for e in manifest.episodes] == [E.episode_filename(i) for i in (1, 2, 4)]
    assert E.clean_stale_temp_files(tmp_path) == [tmp_path / ".episode_000003.h5.tmp"]
    assert E.episode_files(tmp_path) == [tmp_path / E.episode_filename(i) for i in (1, 2, 4)]
    # A corrupt manifest is rebuilt rather than trusted.
    (tmp_path / E.MANIFEST_NAME).write_text("{not json")
    assert E.load_or_rebuild_manifest(tmp_path).num_episodes == 3


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from maskvit_mpc.robot import episodes as E
    folder = Path(sys.argv[1])
    real_replace = os.replace
    seen = []
    def replace_then_die(src, dst):
        seen.append(str(dst).endswith(sys.argv[2]))
        if sum(seen) == int(sys.argv[3]) and seen[-1]:
            os.kill(os.getpid(), signal.SIGKILL)  # dies after fsync, before the rename
        real_replace(src, dst)
    os.replace = replace_then_die
    manifest = E.Manifest(info={"generation": 1})
    E.write_manifest(folder, manifest)
    meta = E.EpisodeMetadata("r", "c", 8, 8, 0.2)
    rec = E.EpisodeRecorder(meta)
    for t in range(3):
        rec.add_observation(np.zeros((8, 8, 3), np.uint8), np.zeros(5), t)
        if t < 2:
            rec.add_action(np.zeros(5), np.zeros(5), False, t)
    E.write_episode(folder / E.episode_filename(0), rec.to_episode())
    E.write_manifest(folder, E.Manifest(info={"generation": 2}))
    """
)


@pytest.mark.parametrize(("die_at", "nth"), [(E.episode_filename(0), 1), (E.MANIFEST_NAME, 2)])
def test_sigkill_before_rename_leaves_nothing_corrupt(tmp_path: Path, die_at: str, nth: int) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), die_at, str(nth)], timeout=60)
    assert proc.returncode == -9
    # Only the temporary file of the interrupted write exists besides complete ones.
    visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    if die_at == E.MANIFEST_NAME:
        assert visible == {E.MANIFEST_NAME, E.episode_filename(0)}
        E.validate_episode(tmp_path / E.episode_filename(0))
    else:
        assert visible == {E.MANIFEST_NAME}
    # The manifest is the old one, whole.
    assert E.read_manifest(tmp_path).info == {"generation": 1}
    assert E.clean_stale_temp_files(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_write_bytes_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    E.atomic_write_bytes(target, b"old")
    E.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["m.json"]
