"""Prediction metrics: object centroids from colour, the copy-last baseline, decoding of the future."""

from __future__ import annotations

import math

import torch
from maskvit_mpc.models.maskvit import MaskViT, MaskViTModelConfig
from maskvit_mpc.models.prediction_eval import decode_future, evaluate_predictions, object_position_errors
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel


def _scene(T: int, positions: list[tuple[int, int]], size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, 3, S, S) frames of a red 4x4 box at positions[t] on a beige table, and their labels."""
    frames = torch.empty(1, T, 3, size, size)
    frames[:] = torch.tensor([0.9, 0.85, 0.7])[:, None, None]
    seg = torch.zeros(1, T, size, size, dtype=torch.long)
    for t, (r, c) in enumerate(positions):
        frames[0, t, :, r : r + 4, c : c + 4] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        seg[0, t, r : r + 4, c : c + 4] = 2
    return frames, seg


def _tiny_models() -> tuple[VQModel, MaskViT]:
    """An untrained 16x16-frame tokenizer (4x4 codes of 16) and a MaskViT over 4 frames of them."""
    tok = VQModel(
        TokenizerModelConfig(
            image_size=16, grid_size=4, base_channels=8, channel_mult=[1, 2, 2], codebook_size=16
        )
    )
    model = MaskViT(
        MaskViTModelConfig(
            codebook_size=16, grid_h=4, grid_w=4, num_frames=4, d_model=32, n_heads=4, n_blocks=1
        )
    )
    return tok.eval(), model.eval()


def test_object_error_is_zero_for_a_perfect_prediction_and_the_displacement_for_copy_last() -> None:
    true, seg = _scene(4, [(10, 10), (10, 10), (10, 13), (10, 16)])
    errors = object_position_errors(true, true, seg, context_frames=2)
    assert torch.allclose(errors.predicted[0, :, 0], torch.zeros(2))
    assert torch.allclose(errors.copy_last[0, :, 0], torch.tensor([3.0, 6.0]))
    assert errors.moved[0, :, 0].all() and errors.found[0, :, 0].all()
    assert torch.isnan(errors.predicted[0, :, 1:]).all()  # absent objects give NaN, not zero


def test_object_error_measures_where_the_prediction_put_the_object() -> None:
    true, seg = _scene(3, [(8, 8), (8, 8), (8, 14)])
    predicted, _ = _scene(3, [(8, 8), (8, 8), (8, 10)])  # the model moved it 2 px instead of 6
    errors = object_position_errors(predicted, true, seg, context_frames=2)
    assert math.isclose(float(errors.predicted[0, 0, 0]), 4.0, abs_tol=1e-5)
    blank = true.clone()
    blank[:, 2] = torch.tensor([0.9, 0.85, 0.7])[:, None, None]  # the prediction lost the object
    lost = object_position_errors(blank, true, seg, context_frames=2)
    assert not lost.found[0, 0, 0] and torch.isnan(lost.predicted[0, 0, 0])


def test_decode_future_keeps_the_context_and_fills_every_future_token() -> None:
    torch.manual_seed(0)
    _, model = _tiny_models()
    tokens = torch.randint(0, 16, (2, 4, 4, 4))
    out = decode_future(model, tokens, torch.zeros(2, 3, 5), context_frames=2, steps=3)
    assert torch.equal(out[:, :2], tokens[:, :2])
    assert int(out.max()) < 16 and int(out.min()) >= 0  # no [MASK] left


def test_evaluate_predictions_reports_prediction_and_baseline() -> None:
    torch.manual_seed(0)
    tok, model = _tiny_models()
    frames, seg = _scene(4, [(4, 4), (4, 4), (4, 6), (4, 8)], size=16)
    uint8 = (frames.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8)
    tokens = tok.encode(frames[0]).unsqueeze(0)
    m = evaluate_predictions(model, tok, uint8, tokens, torch.zeros(1, 3, 5), 2, segmentation=seg, steps=2)
    for key in ("pred_psnr", "pred_ssim", "copy_last_psnr", "copy_last_ssim", "recon_psnr", "object_found"):
        assert key in m and not math.isnan(m[key]), key
    assert 0.0 <= m["token_accuracy"] <= 1.0
    # the box moved 2 and 4 px after the last context frame: the copy-last error is their mean
    assert math.isclose(m["copy_last_object_err_px"], 3.0, abs_tol=1e-4)
    assert m["copy_last_psnr"] < 100  # the box moved, so copy-last is not perfect


def test_metrics_are_computed_in_fp32_under_bf16_autocast() -> None:
    """SSIM of a frame with itself is 1; under a caller's bf16 autocast it must stay so (it cancels
    catastrophically in bf16)."""
    torch.manual_seed(0)
    tok, model = _tiny_models()
    frames, seg = _scene(4, [(4, 4)] * 4, size=16)  # nothing moves: copy-last is exact
    uint8 = (frames.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8)
    tokens = tok.encode(frames[0]).unsqueeze(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = evaluate_predictions(model, tok, uint8, tokens, None, 2, segmentation=seg, steps=1)
    assert m["copy_last_ssim"] > 0.999 and m["copy_last_psnr"] > 60
    assert -1.0 <= m["pred_ssim"] <= 1.0


def test_a_perfect_prediction_reaches_the_tokenizer_ceiling(monkeypatch) -> None:
    """With decoding replaced by the true codes, every token is right and the predicted frames are the
    tokenizer's reconstructions: pred_psnr == recon_psnr."""
    from maskvit_mpc.models import prediction_eval

    torch.manual_seed(0)
    tok, model = _tiny_models()
    frames, seg = _scene(4, [(4, 4), (4, 4), (8, 8), (12, 12)], size=16)
    uint8 = (frames.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8)
    tokens = tok.encode(frames[0]).unsqueeze(0)
    tokens[:, 2:, 0, 0] = (tokens[:, 1, 0, 0] + 1) % 16  # make sure some tokens change
    monkeypatch.setattr(prediction_eval, "decode_future", lambda model, tokens, *a, **k: tokens.clone())
    m = prediction_eval.evaluate_predictions(model, tok, uint8, tokens, None, 2, segmentation=seg)
    assert m["token_accuracy"] == 1.0 and m["changed_token_accuracy"] == 1.0
    assert math.isclose(m["pred_psnr"], m["recon_psnr"], rel_tol=1e-6)
