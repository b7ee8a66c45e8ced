"""The MuJoCo tabletop: determinism of state save/restore, action clipping, rendering and segmentation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from maskvit_mpc.configs.errors import UserError
from maskvit_mpc.configs.schema import SafetyConfig, SimConfig
from maskvit_mpc.robot.sim import SEG_BACKGROUND, SEG_FIRST_OBJECT, SEG_GRIPPER, SimError, TabletopSim

SIZE = 32


@pytest.fixture(scope="module")
def sim():
    s = TabletopSim(SimConfig(image_size=SIZE))
    yield s
    s.close()


def _actions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 5)) * [0.05, 0.05, 0.02, 0.3, 1.0]


def _push_scene(sim: TabletopSim) -> None:
    """Gripper closed at pushing height 7 cm behind the red block, pointing +y."""
    sim.place(
        (0.0, -0.07, 0.022, 0.0, 1.0),
        {"red_block": (0.0, 0.0, 0.0), "green_cylinder": (0.12, 0.1, 0.0), "blue_block": (-0.12, 0.1, 0.0)},
    )


def test_same_state_and_actions_give_same_frames_in_a_fresh_sim(sim):
    sim.reset(3)
    for a in _actions(3):
        sim.step(a)
    state = sim.get_state()
    actions = _actions(6, seed=1)
    frames = []
    for a in actions:
        sim.step(a)
        frames.append(sim.render())
    end_state = sim.get_state()

    other = TabletopSim(SimConfig(image_size=SIZE))
    other.reset(99)  # a different scene first: set_state must overwrite all of it
    other.set_state(state)
    for a, frame in zip(actions, frames, strict=True):
        other.step(a)
        np.testing.assert_array_equal(other.render(), frame)
    assert other.get_state() == end_state
    other.close()

    # Restoring into the same instance replays identically too.
    sim.set_state(state)
    for a, frame in zip(actions, frames, strict=True):
        sim.step(a)
        np.testing.assert_array_equal(sim.render(), frame)


def test_state_reproduces_the_scene_in_another_process(sim, tmp_path):
    sim.reset(5)
    actions = _actions(4, seed=2)
    (tmp_path / "state.bin").write_bytes(sim.get_state())
    np.save(tmp_path / "actions.npy", actions)
    frames = []
    for a in actions:
        sim.step(a)
        frames.append(sim.render())
    script = textwrap.dedent(
        f"""
        import numpy as np, pathlib
        from maskvit_mpc.configs.schema import SimConfig
        from maskvit_mpc.robot.sim import TabletopSim
        d = pathlib.Path({str(tmp_path)!r})
        s = TabletopSim(SimConfig(image_size={SIZE}))
        s.set_state(d.joinpath("state.bin").read_bytes())
        frames = []
        for a in np.load(d / "actions.npy"):
            s.step(a)
            frames.append(s.render())
        np.save(d / "frames.npy", np.stack(frames))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), np.stack(frames))


def test_state_is_small_bytes_and_foreign_states_are_refused(sim):
    state = sim.get_state()
    assert isinstance(state, bytes) and len(state) < 4096  # far below a 64 KB bridge message
    sim.set_state(np.frombuffer(state, dtype=np.uint8))  # an array (e.g. read from HDF5) works too
    assert sim.get_state() == state
    with pytest.raises(SimError, match="different scene"):
        sim.set_state(TabletopSim(SimConfig(image_size=SIZE, num_objects=4)).get_state())
    with pytest.raises(SimError):
        sim.set_state(b"not a state at all")
    with pytest.raises(SimError, match="truncated"):
        sim.set_state(state[:-8])


def test_step_clips_to_step_limits_and_returns_the_applied_action(sim):
    sim.place((0.0, 0.0, 0.10, 0.0, -1.0))
    applied = sim.step(np.array([0.2, -0.2, 0.01, 1.0, 5.0]))
    np.testing.assert_allclose(applied, [0.05, -0.05, 0.01, 0.3, 1.0], atol=1e-12)
    np.testing.assert_allclose(sim.target_pose()[:4], [0.05, -0.05, 0.11, 0.3], atol=1e-12)
    # The servo reaches the target within the control period (the arm tracks its commands).
    np.testing.assert_allclose(sim.ee_pose()[:4], [0.05, -0.05, 0.11, 0.3], atol=5e-3)
    assert sim.ee_pose()[4] > 0.9  # closed


def test_step_clips_to_the_workspace_box():
    safety = SafetyConfig()
    safety.workspace.x.high = 0.10
    safety.workspace.z.low = 0.05
    sim = TabletopSim(SimConfig(image_size=16), safety)
    sim.place((0.08, 0.0, 0.06, 0.0, 0.0))
    applied = sim.step(np.array([0.05, 0.0, -0.05, 0.0, 0.0]))
    np.testing.assert_allclose(applied[:3], [0.02, 0.0, -0.01], atol=1e-12)
    np.testing.assert_allclose(sim.target_pose()[:3], [0.10, 0.0, 0.05], atol=1e-12)


def test_a_target_outside_the_workspace_returns_at_step_limits(sim):
    sim.place((0.0, 0.0, 1.0, 0.0, 1.0))  # parked above the workspace, as push goals do
    applied = sim.step(np.array([0.0, 0.0, -1.0, 0.0, 1.0]))
    np.testing.assert_allclose(applied[2], -0.05, atol=1e-12)  # back down, no jump into the box
    applied = sim.step(np.array([0.0, 0.0, 0.05, 0.0, 1.0]))
    assert applied[2] == 0.0  # but no further out


@pytest.mark.parametrize("bad", [np.zeros(4), np.array([0.0, np.nan, 0.0, 0.0, 0.0]), np.zeros((1, 5))])
def test_malformed_actions_are_refused_with_a_user_error(sim, bad):
    with pytest.raises(SimError, match="5 finite numbers") as info:
        sim.step(bad)
    assert isinstance(info.value, UserError)


def test_gripper_pushes_an_object_through_contact(sim):
    _push_scene(sim)
    for _ in range(3):
        sim.step(np.array([0.0, 0.04, 0.0, 0.0, 1.0]))
    red = sim.object_positions()["red_block"]
    # The gripper ends at y = 0.05; closed fingers reach 1.8 cm ahead of its centre and the block's
    # centre is 2.8 cm behind its face: 9.6 cm, plus at most a little sliding after contact ends.
    assert 0.09 < red[1] < 0.115
    assert abs(red[0]) < 0.01 and abs(red[2] - 0.02) < 1e-3  # slid, not tipped
    others = sim.object_positions()
    np.testing.assert_allclose(others["green_cylinder"][:2], [0.12, 0.1], atol=1e-4)  # untouched


def test_place_sets_poses_read_back_by_ee_pose_and_object_positions(sim):
    sim.place((0.05, -0.04, 0.08, 0.4, -1.0), {"blue_block": (0.1, 0.05, 0.7)})
    np.testing.assert_allclose(sim.ee_pose(), [0.05, -0.04, 0.08, 0.4, -1.0], atol=1e-12)
    np.testing.assert_allclose(sim.object_positions()["blue_block"], [0.1, 0.05, 0.02], atol=1e-12)
    assert sim.object_yaws()["blue_block"] == pytest.approx(0.7)
    assert list(sim.object_positions()) == list(sim.object_names)
    with pytest.raises(SimError, match="unknown object"):
        sim.place((0, 0, 0.1, 0, 0), {"teapot": (0, 0, 0)})


def test_render_shape_and_segmentation_labels_match_object_colours(sim):
    _push_scene(sim)
    rgb = sim.render()
    seg = sim.render_segmentation()
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert seg.shape == (SIZE, SIZE)
    assert set(np.unique(seg)) == {
        SEG_BACKGROUND,
        SEG_GRIPPER,
        *range(SEG_FIRST_OBJECT, SEG_FIRST_OBJECT + 3),
    }
    # Each object's labelled pixels have that object's colour: labels follow object_names.
    red, green, blue = (rgb[seg == SEG_FIRST_OBJECT + i].astype(float).mean(0) for i in range(3))
    assert sim.object_names[:3] == ("red_block", "green_cylinder", "blue_block")
    assert red.argmax() == 0 and green.argmax() == 1 and blue.argmax() == 2
    gripper = rgb[seg == SEG_GRIPPER].astype(float).mean(0)
    assert gripper.max() < 140  # dark grey
    table = rgb[seg == SEG_BACKGROUND].astype(float).mean(0)
    assert table.min() > 140  # light table


def test_objects_are_several_pixels_wide_at_64():
    s = TabletopSim(SimConfig(image_size=64))
    s.reset(0)
    s.place((0.0, 0.0, 1.0, 0.0, 1.0))  # gripper out of view: nothing occludes the objects
    seg = s.render_segmentation()
    for i, name in enumerate(s.object_names):
        assert (seg == SEG_FIRST_OBJECT + i).sum() >= 25, name  # at least ~5x5 pixels
    s.close()


def test_reset_is_a_function_of_the_seed(sim):
    sim.reset(11)
    a = sim.get_state()
    sim.reset(12)
    assert sim.get_state() != a
    sim.reset(11)
    assert sim.get_state() == a


def test_clone_continues_identically(sim):
    sim.reset(4)
    twin = sim.clone()
    for a in _actions(3, seed=5):
        sim.step(a)
        twin.step(a)
    assert twin.get_state() == sim.get_state()
    np.testing.assert_array_equal(twin.render(), sim.render())
    twin.close()


def test_shadows_are_off_by_default_and_can_be_turned_on():
    plain, shaded = (TabletopSim(SimConfig(image_size=32, shadows=flag)) for flag in (False, True))
    for s in (plain, shaded):
        s.place((0.0, 0.0, 0.15, 0.0, 1.0))
    # A shadow darkens the table under the raised gripper; without shadows the table is uniform.
    assert shaded.render().astype(int).sum() < plain.render().astype(int).sum()
    plain.close()
    shaded.close()


def test_gripper_centre_from_pixels_matches_the_segmentation():
    from maskvit_mpc.robot.sim import gripper_centre

    s = TabletopSim(SimConfig(image_size=64))
    try:
        s.reset(seed=4)
        for dx in (0.0, 0.03, 0.03):
            s.step(np.array([dx, 0.0, 0.0, 0.0, 1.0]))
            seg = s.render_segmentation()
            ys, xs = np.nonzero(seg == SEG_GRIPPER)
            found = gripper_centre(s.render())
            assert found is not None and len(ys) > 0
            assert np.linalg.norm(found - [ys.mean(), xs.mean()]) < 3.0  # pixels
    finally:
        s.close()
    assert gripper_centre(np.full((64, 64, 3), 200, np.uint8)) is None  # bare table: no gripper
