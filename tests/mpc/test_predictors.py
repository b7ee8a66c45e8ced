import warnings
import zipfile

import numpy as np
import pytest
from maskvit_mpc.configs import load_config
from maskvit_mpc.mpc.predictors import CopyLastPredictor, PredictorError, load_predictor


def test_copy_last_repeats_the_newest_context_frame():
    rng = np.random.default_rng(0)
    context = rng.integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8)
    actions = np.zeros((3, 5, 5), np.float32)
    pred = CopyLastPredictor()
    out = pred.predict(context, actions)
    assert out.shape == (3, 5, 8, 8, 3) and out.dtype == np.uint8
    for k in range(5):
        np.testing.assert_array_equal(out[:, k], context[:, -1])
    assert pred.predict(context, actions, frame_indices=[4]).shape == (3, 1, 8, 8, 3)


def test_predict_inputs_are_validated():
    pred = CopyLastPredictor()
    ctx = np.zeros((2, 2, 8, 8, 3), np.uint8)
    with pytest.raises(PredictorError, match="uint8"):
        pred.predict(ctx.astype(np.float32), np.zeros((2, 3, 5)))
    with pytest.raises(PredictorError, match="same B"):
        pred.predict(ctx, np.zeros((3, 3, 5)))
    with pytest.raises(PredictorError, match="frame_indices"):
        pred.predict(ctx, np.zeros((2, 3, 5)), frame_indices=[3])
    with pytest.raises(PredictorError, match="simulator state"):
        pred.set_sim_state(b"")


def test_predictor_registry(tmp_path):
    cfg = load_config("default")
    assert isinstance(load_predictor("copy-last", cfg), CopyLastPredictor)
    with pytest.raises(PredictorError, match="neither a built-in predictor"):
        load_predictor(str(tmp_path / "missing.pt"), cfg)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(PredictorError, match="cannot load predictor"):
        load_predictor(str(junk), cfg)
    broken = tmp_path / "broken.pt"  # a zip archive, but not a TorchScript module
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(PredictorError, match="as a TorchScript module"):
        load_predictor(str(broken), cfg)
    import torch

    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript; the exported format still is one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(torch.nn.Identity()).save(str(scripted))
    with pytest.raises(PredictorError, match="without maskvit_mpc.json: not a TorchScript predictor"):
        load_predictor(str(scripted), cfg)
    with pytest.raises(PredictorError, match="directory"):
        load_predictor(str(tmp_path), cfg)


def test_the_default_name_loads_the_shipped_file_and_a_missing_one_says_what_to_do(tmp_path, monkeypatch):
    from maskvit_mpc.mpc import predictors

    monkeypatch.setattr(predictors, "default_model_path", lambda: tmp_path / "missing.ts")
    with pytest.raises(PredictorError, match="shipped MaskViT model is missing.*--predictor PATH"):
        load_predictor(predictors.DEFAULT_PREDICTOR, load_config("default"))
