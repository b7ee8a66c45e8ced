import numpy as np
import pytest
from maskvit_mpc.configs.schema import CostConfig
from maskvit_mpc.mpc.costs import CostError, ImageCost, frame_weights, gaussian_blur


def _scene(size: int, cx: int, cy: int, half: int = 3) -> np.ndarray:
    """A grey table with one red square centred at (cx, cy)."""
    img = np.full((size, size, 3), 100, np.uint8)
    img[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = (220, 30, 30)
    return img


def test_blur_keeps_mean_brightness_and_spreads_a_point():
    img = np.zeros((1, 32, 32, 3), np.float32)
    img[0, 16, 16] = 1.0
    out = gaussian_blur(img, 2.0)
    assert out.shape == img.shape
    assert out.sum() == pytest.approx(3.0, rel=1e-4)  # one unit per channel, far from the border
    assert out[0, 16, 16, 0] < 0.1 and out[0, 16, 18, 0] > 0.01
    flat = np.full((2, 16, 16, 3), 0.5, np.float32)
    np.testing.assert_allclose(gaussian_blur(flat, 3.0), flat, atol=1e-5)  # borders do not darken
    np.testing.assert_array_equal(gaussian_blur(img, 0.0), img)


def test_plain_cost_is_flat_until_overlap_but_blurred_cost_orders_distance():
    goal = _scene(64, 40, 32)
    far, nearer = _scene(64, 10, 32), _scene(64, 25, 32)
    clip = np.stack([far, nearer, goal])[:, None]  # (3, 1, 64, 64, 3): three one-frame predictions
    plain = ImageCost(CostConfig(blur_sigma_px=0, frames="last"), goal, horizon=1)(clip)
    blurred = ImageCost(CostConfig(blur_sigma_px=3, frames="last"), goal, horizon=1)(clip)
    assert plain[2] == 0 and blurred[2] == pytest.approx(0, abs=1e-6)
    assert plain[0] == pytest.approx(plain[1])  # no overlap either way: the plain error cannot tell
    assert blurred[0] > blurred[1] > blurred[2]


def test_frame_selection_and_weights():
    goal = _scene(16, 8, 8, 2)
    other = _scene(16, 3, 3, 2)
    horizon = 4
    clip = np.stack([other, other, goal, other])[None]  # (1, 4, 16, 16, 3)
    per_frame_err = ((other / 255.0 - goal / 255.0) ** 2).sum()

    all_frames = ImageCost(CostConfig(frames="all", blur_sigma_px=0), goal, horizon)
    assert all_frames.frame_indices == (0, 1, 2, 3)
    assert all_frames(clip)[0] == pytest.approx(3 * per_frame_err, rel=1e-5)

    last = ImageCost(CostConfig(frames="last", blur_sigma_px=0), goal, horizon)
    assert last.frame_indices == (3,)
    assert last(clip)[0] == pytest.approx(per_frame_err, rel=1e-5)
    assert last(clip[:, 3:])[0] == pytest.approx(per_frame_err, rel=1e-5)  # only the scored frame

    weighted = ImageCost(CostConfig(frame_weights=[0, 2, 5, 0], blur_sigma_px=0), goal, horizon)
    assert weighted.frame_indices == (1, 2)
    assert weighted(clip)[0] == pytest.approx(2 * per_frame_err, rel=1e-5)  # frame 2 matches the goal


def test_cost_is_batched():
    rng = np.random.default_rng(0)
    goal = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    clips = rng.integers(0, 256, (5, 3, 16, 16, 3), dtype=np.uint8)
    cost = ImageCost(CostConfig(frames="all", blur_sigma_px=1.5), goal, 3)
    batched = cost(clips)
    one_by_one = np.array([cost(clips[i : i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6)


def test_bad_inputs_are_refused_clearly():
    goal = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(CostError, match="RGB uint8"):
        ImageCost(CostConfig(), np.zeros((16, 16), np.uint8), 3)
    cost = ImageCost(CostConfig(), goal, 3)
    with pytest.raises(CostError, match="goal image is 16x16"):
        cost(np.zeros((1, 3, 32, 32, 3), np.uint8))
    with pytest.raises(CostError, match="horizon is 3"):
        frame_weights(CostConfig(frame_weights=[1.0, 1.0]), 3)
