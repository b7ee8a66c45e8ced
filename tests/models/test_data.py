"""Training clips: alignment of frames and actions, frame skip, resize, split by episode, mixing, RoboNet."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from maskvit_mpc.configs.schema import DataConfig
from maskvit_mpc.models import data as D
from maskvit_mpc.robot import episodes as E
from PIL import Image

SIZE = 16


def write_folder(folder: Path, n: int, steps: int = 9, tag: int = 0) -> None:
    """Episodes whose frame t is filled with value 10 * t + tag and whose action t is (t, ep, 0, 0, +-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        meta = E.EpisodeMetadata("test", "test", SIZE, SIZE, 0.2, seed=i)
        rec = E.EpisodeRecorder(meta)
        for t in range(steps + 1):
            rec.add_observation(np.full((SIZE, SIZE, 3), 10 * t + tag, np.uint8), [t, i, 0, 0, 0], t)
            if t < steps:
                applied = np.array([t, i, 0.5, 0.1, 1.0 if t % 2 else -1.0])
                rec.add_action(applied * 2, applied, False, t)
        E.write_episode(folder / E.episode_filename(i), rec.to_episode())


def test_clips_align_frames_actions_and_poses(tmp_path: Path) -> None:
    write_folder(tmp_path, 2, steps=9)
    ds = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=4)
    assert len(ds) == 2 * (10 - 4 + 1)
    for k in range(len(ds)):
        item = ds[k]
        s = item["start"]
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (4, SIZE, SIZE, 3)
        assert item["actions"].shape == (3, 5) and item["actions"].dtype == torch.float32
        # frame j shows step s + j, action j is the one applied between frames j and j + 1
        assert item["frames"][:, 0, 0, 0].tolist() == [10 * (s + j) for j in range(4)]
        assert item["actions"][:, 0].tolist() == [s + j for j in range(3)]
        assert item["poses"][:, 0].tolist() == [s + j for j in range(4)]
        assert item["actions"][0, 1].item() == item["episode"]


def test_commanded_actions_and_float_frames(tmp_path: Path) -> None:
    write_folder(tmp_path, 1)
    item = D.EpisodeClips(
        D.recorded_episodes(tmp_path), clip_length=3, action_source="commanded", float_frames=True
    )[2]
    assert item["actions"][:, 0].tolist() == [4.0, 6.0]  # commanded = 2 x applied
    assert item["frames"].dtype == torch.float32
    assert item["frames"][1, 0, 0, 0].item() == pytest.approx(30 / 255)


def test_frame_skip_sums_deltas_and_keeps_last_gripper(tmp_path: Path) -> None:
    write_folder(tmp_path, 1, steps=9)
    ds = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=3, frame_skip=3)
    assert len(ds) == 10 - 7 + 1
    item = ds[1]  # frames 1, 4, 7
    assert item["frames"][:, 0, 0, 0].tolist() == [10, 40, 70]
    # dx: 1 + 2 + 3 and 4 + 5 + 6; dz: 3 x 0.5; gripper: the command of step 3 (odd: +1) and step 6 (-1)
    np.testing.assert_allclose(item["actions"][:, 0], [6, 15])
    np.testing.assert_allclose(item["actions"][:, 2], [1.5, 1.5])
    np.testing.assert_allclose(item["actions"][:, 3], [0.3, 0.3], rtol=1e-5)
    np.testing.assert_allclose(item["actions"][:, 4], [1.0, -1.0])


def test_resize_uses_area_interpolation(tmp_path: Path) -> None:
    write_folder(tmp_path, 1, steps=2)
    frames = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    frames[0, :2, :2] = 200  # one quadrant bright: a 2x2 area average is exact
    small = D.resize_frames(frames, 2)
    assert small[0, :, :, 0].tolist() == [[200.0, 0.0], [0.0, 0.0]]
    item = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=2, image_size=8)[0]
    assert item["frames"].shape == (2, 8, 8, 3) and item["frames"].dtype == torch.uint8
    assert item["frames"][1].unique().tolist() == [10]


def test_split_is_by_episode_and_deterministic(tmp_path: Path) -> None:
    write_folder(tmp_path, 20, steps=4)
    eps = D.recorded_episodes(tmp_path)
    train = D.EpisodeClips(eps, clip_length=3, split="train", val_fraction=0.25)
    val = D.EpisodeClips(eps, clip_length=3, split="val", val_fraction=0.25)
    train_names = {e.name for e in train.episodes}
    val_names = {e.name for e in val.episodes}
    assert train_names.isdisjoint(val_names) and len(train_names | val_names) == 20
    assert 1 <= len(val_names) <= 12
    again = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=3, split="val", val_fraction=0.25)
    assert {e.name for e in again.episodes} == val_names
    # Adding episodes never moves an existing one across the split.
    names = [f"episode_{i:06d}.h5" for i in range(40)]
    _, val20 = D.split_by_episode(names[:20], 0.25)
    _, val40 = D.split_by_episode(names, 0.25)
    assert {names[i] for i in val20} <= {names[i] for i in val40}
    # A different seed gives a different split; two episodes always give a non-empty validation side.
    assert D.split_by_episode(names, 0.25, seed=1) != D.split_by_episode(names, 0.25, seed=0)
    assert len(D.split_by_episode(names[:2], 0.01)[1]) == 1


def test_mixing_folders_by_weight(tmp_path: Path) -> None:
    write_folder(tmp_path / "a", 8, steps=5, tag=1)
    write_folder(tmp_path / "b", 2, steps=5, tag=2)
    cfg = DataConfig(
        folders=[str(tmp_path / "a"), str(tmp_path / "b")],
        weights=[1.0, 3.0],
        clip_length=3,
        val_fraction=0.2,
    )
    data = D.make_datasets(cfg, num_samples=4000, seed=0)
    n_a = data.train.cumulative_sizes[0]
    share_b = sum(i >= n_a for i in data.train_sampler) / 4000
    assert share_b == pytest.approx(0.75, abs=0.04)  # folder b is 4x smaller but drawn 3x as often
    assert len(data.val) > 0
    loader = torch.utils.data.DataLoader(data.train, batch_size=4, sampler=data.train_sampler, num_workers=0)
    tags = Counter()
    for batch, _ in zip(loader, range(25), strict=False):
        assert batch["frames"].shape == (4, 3, 64, 64, 3) and batch["actions"].shape == (4, 2, 5)
        tags.update(batch["frames"][:, 0, 0, 0, 0].remainder(10).tolist())
    assert tags[2] > tags[1]  # the loader really delivers folder b's clips more often


def write_pushes(folder: Path, n: int, steps: int = 9) -> None:
    """Episodes with one object that slides 5 mm per step from step 6 on in odd episodes, never in even."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        meta = E.EpisodeMetadata("test", "test", SIZE, SIZE, 0.2, seed=i)
        rec = E.EpisodeRecorder(meta, object_names=("box",))
        for t in range(steps + 1):
            x = 0.005 * max(0, t - 6) if i % 2 else 0.0
            rec.add_observation(np.zeros((SIZE, SIZE, 3), np.uint8), [t, i, 0, 0, 0], t, [[x, 0.1, 0.02]])
            if t < steps:
                rec.add_action(np.zeros(5), np.zeros(5), False, t)
        E.write_episode(folder / E.episode_filename(i), rec.to_episode())


def test_motion_oversample_draws_clips_that_move_an_object(tmp_path: Path) -> None:
    write_pushes(tmp_path / "sim", 6)
    ds = D.EpisodeClips(D.recorded_episodes(tmp_path / "sim"), clip_length=4)
    motion = ds.clip_object_motion()
    # odd episodes: the clip starting at s spans frames s..s+3; the box moves 5 mm per step after frame 6
    for k in range(len(ds)):
        i, s = ds.clip_location(k)
        expected = 0.005 * (max(0, s + 3 - 6) - max(0, s - 6)) if i % 2 else 0.0
        assert motion[k] == pytest.approx(expected, abs=1e-6)
    cfg = DataConfig(
        folders=[str(tmp_path / "sim")], clip_length=4, val_fraction=0.0, motion_threshold_m=0.01
    )
    moving = motion >= 0.01
    plain = D.make_datasets(cfg, num_samples=6000, seed=0)
    boosted = D.make_datasets(cfg.model_copy(update={"motion_oversample": 5.0}), num_samples=6000, seed=0)
    share = moving.mean()
    plain_share = np.mean([moving[i] for i in plain.train_sampler])
    boosted_share = np.mean([moving[i] for i in boosted.train_sampler])
    assert plain_share == pytest.approx(share, abs=0.03)
    assert boosted_share == pytest.approx(5 * share / (5 * share + 1 - share), abs=0.03)
    # folder weights still hold when one folder is oversampled inside and the other has no objects
    write_folder(tmp_path / "static", 6, steps=9)
    mixed = DataConfig(
        folders=[str(tmp_path / "sim"), str(tmp_path / "static")],
        weights=[1.0, 3.0],
        clip_length=4,
        val_fraction=0.0,
        motion_oversample=5.0,
    )
    data = D.make_datasets(mixed, num_samples=6000, seed=0)
    n_sim = data.train.cumulative_sizes[0]
    assert np.mean([i >= n_sim for i in data.train_sampler]) == pytest.approx(0.75, abs=0.03)


def test_motion_oversample_without_object_positions_changes_nothing(tmp_path: Path, caplog) -> None:
    write_folder(tmp_path, 3, steps=5)
    assert D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=3).clip_object_motion() is None
    cfg = DataConfig(folders=[str(tmp_path)], clip_length=3, val_fraction=0.0, motion_oversample=4.0)
    weights = D.make_datasets(cfg).train_sampler.weights
    assert torch.allclose(weights, torch.full_like(weights, 1 / len(weights)))
    assert "no recorded object positions" in caplog.text


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(D.DataError, match="does not exist"):
        D.recorded_episodes(tmp_path / "missing")
    with pytest.raises(D.DataError, match="no episode folders"):
        D.make_datasets(DataConfig())
    write_folder(tmp_path, 1, steps=2)
    with pytest.raises(D.DataError, match="no training clips"):
        D.make_datasets(DataConfig(folders=[str(tmp_path)], clip_length=8, val_fraction=0.0))
    with pytest.raises(D.DataError, match="clip_length"):
        D.EpisodeClips([], clip_length=1)


def write_robonet(path: Path, steps: int, adim: int, bgr: bool = False) -> None:
    with h5py.File(path, "w") as f:
        env = f.create_group("env")
        env.attrs["n_cams"] = 1
        env.attrs["cam_encoding"] = "jpg"
        env.create_dataset("state", data=np.arange((steps + 1) * 5, dtype=np.float64).reshape(steps + 1, 5))
        cam = env.create_group("cam0_video")
        for t in range(steps + 1):
            rgb = np.zeros((24, 32, 3), np.uint8)
            rgb[..., 0] = 20 * t  # red ramps over time, which a BGR mix-up would show as blue
            img = rgb[..., ::-1] if bgr else rgb
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=95)
            ds = cam.create_dataset(f"frame{t}", data=np.frombuffer(buf.getvalue(), dtype=np.uint8))
            ds.attrs["shape"] = rgb.shape
            ds.attrs["image_format"] = "BGR" if bgr else "RGB"
        pol = f.create_group("policy")
        pol.create_dataset("actions", data=np.arange(steps * adim, dtype=np.float32).reshape(steps, adim))
        f.create_group("misc")
        f.create_group("metadata").attrs["robot"] = "sawyer"


def test_robonet_reader(tmp_path: Path) -> None:
    write_robonet(tmp_path / "traj_a.hdf5", steps=6, adim=4)
    write_robonet(tmp_path / "traj_b.hdf5", steps=6, adim=5, bgr=True)
    eps = D.robonet_episodes(tmp_path)
    assert [e.num_frames for e in eps] == [7, 7]
    ds = D.EpisodeClips(eps, clip_length=3, image_size=16)
    item = ds[2]  # episode a, frames 2..4
    assert item["frames"].shape == (3, 16, 16, 3)
    red = item["frames"][:, 8, 8].int()
    np.testing.assert_allclose(red[:, 0].numpy(), [40, 60, 80], atol=4)
    assert red[:, 2].max() < 8
    # 4-D RoboNet actions (dx, dy, dz, gripper) gain a zero dyaw.
    np.testing.assert_allclose(item["actions"][0].numpy(), [8, 9, 10, 0, 11])
    item_b = ds[5]  # episode b (BGR on disk) reads back as RGB
    assert item_b["frames"][2, 8, 8, 0] > 30 and item_b["frames"][2, 8, 8, 2] < 8
    np.testing.assert_allclose(item_b["actions"][0].numpy(), [0, 1, 2, 3, 4])


def test_robonet_mp4_refused(tmp_path: Path) -> None:
    path = tmp_path / "traj.hdf5"
    write_robonet(path, steps=2, adim=4)
    with h5py.File(path, "a") as f:
        f["env"].attrs["cam_encoding"] = "mp4"
    with pytest.raises(D.DataError, match="mp4"):
        D.robonet_episodes(tmp_path)


def test_clips_match_a_replay_in_the_simulator(tmp_path: Path) -> None:
    """Frames and actions of a clip line up with the simulator's own record: replaying the clip's actions
    from the episode's stored initial state reproduces the clip's frames."""
    from maskvit_mpc.configs import load_config
    from maskvit_mpc.robot.sim import TabletopSim

    cfg = load_config("default", ["sim.image_size=32"])
    rng = np.random.default_rng(0)
    with TabletopSim(cfg.sim, cfg.safety) as sim:
        sim.reset(3)
        meta = E.EpisodeMetadata("sim", "sim", 32, 32, cfg.sim.control_period_s)
        rec = E.EpisodeRecorder(meta)
        rec.initial_sim_state = sim.get_state()
        rec.add_observation(sim.render(), sim.ee_pose(), 0.0)
        for t in range(8):
            commanded = np.append(
                rng.uniform(-0.04, 0.04, 3), [rng.uniform(-0.2, 0.2), rng.choice([-1.0, 1.0])]
            )
            applied = sim.step(commanded)
            rec.add_action(commanded, applied, False, t)
            rec.add_observation(sim.render(), sim.ee_pose(), t + 1.0)
        E.write_episode(tmp_path / E.episode_filename(0), rec.to_episode())

    episode = E.read_episode(tmp_path / E.episode_filename(0))
    ds = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=4)
    with TabletopSim(cfg.sim, cfg.safety) as replay:
        for k in (0, 3, len(ds) - 1):
            item = ds[k]
            replay.set_state(episode.initial_sim_state)
            for a in episode.applied[: item["start"]]:
                replay.step(a)
            np.testing.assert_array_equal(replay.render(), item["frames"][0].numpy())
            s = item["start"]
            # The clip's actions are the recorded ones between its frames (float32 copies of float64)...
            np.testing.assert_array_equal(
                item["actions"].numpy(), episode.applied[s : s + 3].astype(np.float32)
            )
            # ...and stepping the simulator with them produces the clip's next frames exactly.
            for j, a in enumerate(episode.applied[s : s + 3]):
                replay.step(a)
                np.testing.assert_array_equal(replay.render(), item["frames"][j + 1].numpy())
                np.testing.assert_allclose(replay.ee_pose(), item["poses"][j + 1].numpy(), atol=1e-6)


def test_open_file_handles_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path, 5, steps=3)
    monkeypatch.setattr(D, "_MAX_OPEN_FILES", 2)
    ds = D.EpisodeClips(D.recorded_episodes(tmp_path), clip_length=2)
    for _ in range(2):
        for k in range(len(ds)):
            item = ds[k]
            assert item["actions"][0, 1].item() == item["episode"]  # right file after evictions
            assert len(D._open_files) <= 2
