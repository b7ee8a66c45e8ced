"""export-predictor: the TorchScript predictor equals the eager models, carries its metadata, refuses bad files."""

from __future__ import annotations

import copy
import json
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from maskvit_mpc.configs.schema import SafetyConfig
from maskvit_mpc.models import export as E
from maskvit_mpc.models.decoding import MASK_SCHEDULES, remask_ratios
from maskvit_mpc.models.maskvit import maskvit_from_checkpoint
from maskvit_mpc.models.prediction_eval import decode_future
from maskvit_mpc.models.token_cache import file_digest
from maskvit_mpc.models.tokenizer import load_tokenizer
from maskvit_mpc.models.training import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from export_helpers import CONTEXT, FUTURE, IMAGE_SIZE, write_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    tok_path, mv_path = write_checkpoints(root / "ckpt", decode_steps=3)
    out = root / "predictor.ts"
    written = E.export_predictor(tok_path, mv_path, out, SafetyConfig())
    assert written == [out]
    return {
        "root": root,
        "tok_path": tok_path,
        "mv_path": mv_path,
        "out": out,
        "loaded": E.load_exported_predictor(out),
        "tokenizer": load_tokenizer(tok_path),
        "maskvit": maskvit_from_checkpoint(load_checkpoint(mv_path)),
    }


def _inputs(n: int = 4, horizon: int = FUTURE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (CONTEXT, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8)
    actions = torch.randn(n, CONTEXT - 1 + horizon, 5, generator=g) * 0.05
    return frames, actions


def _eager_tokens(
    exported: dict, frames: torch.Tensor, actions: torch.Tensor, bf16: bool = False, **decode
) -> torch.Tensor:
    """The lead's validation path: tokenizer.encode, decode_future over the whole clip."""
    tok, mv = exported["tokenizer"], exported["maskvit"]
    context = tok.encode(frames.permute(0, 3, 1, 2).float() / 255.0)  # (C, h, w)
    horizon = actions.shape[1] - (CONTEXT - 1)
    clip = torch.zeros(len(actions), CONTEXT + horizon, *context.shape[1:], dtype=torch.long)
    clip[:, :CONTEXT] = context
    if bf16:
        mv = copy.deepcopy(mv).to(torch.bfloat16)
    return decode_future(mv, clip, actions, CONTEXT, **decode)[:, CONTEXT:]


@pytest.mark.parametrize("schedule", MASK_SCHEDULES)
def test_scripted_schedule_gives_the_same_ratios(schedule: str) -> None:
    scripted = torch.jit.script(E.scripted_remask_ratios)
    for steps in range(1, 13):
        assert scripted(schedule, steps) == remask_ratios(schedule, steps)
        assert E.scripted_remask_ratios(schedule, steps) == remask_ratios(schedule, steps)


def test_exported_tokens_equal_the_eager_decoding_at_temperature_zero(exported: dict) -> None:
    module = exported["loaded"].module
    frames, actions = _inputs()
    context = module.encode_context(frames)
    assert torch.equal(context, exported["tokenizer"].encode(frames.permute(0, 3, 1, 2).float() / 255.0))
    for steps in (None, 1, 2, 5):
        tokens = module.predict_tokens(context, actions, steps=steps)
        expected = _eager_tokens(exported, frames, actions, steps=steps or 3, temperature=0.0)
        assert tokens.shape == (4, FUTURE, 4, 4)
        assert torch.equal(tokens, expected), steps
    # a shorter horizon is a shorter clip; the actions decide the prediction
    short = module.predict_tokens(context, actions[:, : CONTEXT - 1 + 2])
    assert torch.equal(short, _eager_tokens(exported, frames, actions[:, :3], steps=3, temperature=0.0))
    flipped = module.predict_tokens(context, -actions * 20)
    assert not torch.equal(flipped, module.predict_tokens(context, actions))


def test_exported_sampling_equals_eager_for_the_same_generator(exported: dict) -> None:
    module = exported["loaded"].module
    frames, actions = _inputs(seed=1)
    context = module.encode_context(frames)
    for noise_free_steps in (2, 4):
        got = module.predict_tokens(
            context,
            actions,
            steps=noise_free_steps,
            temperature=1.5,
            generator=torch.Generator().manual_seed(9),
        )
        want = _eager_tokens(
            exported,
            frames,
            actions,
            steps=noise_free_steps,
            temperature=1.5,
            generator=torch.Generator().manual_seed(9),
        )
        assert torch.equal(got, want)
    again = module.predict_tokens(
        context, actions, temperature=1.5, generator=torch.Generator().manual_seed(9)
    )
    other = module.predict_tokens(
        context, actions, temperature=1.5, generator=torch.Generator().manual_seed(10)
    )
    assert torch.equal(
        again, module.predict_tokens(context, actions, 3, 1.5, torch.Generator().manual_seed(9))
    )
    assert not torch.equal(again, other)


def test_forward_chains_encode_predict_decode_and_frames_match_the_tokenizer(exported: dict) -> None:
    module = exported["loaded"].module
    frames, actions = _inputs(n=3)
    out = module(frames, actions)
    assert out.shape == (3, FUTURE, IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == torch.uint8
    tokens = _eager_tokens(exported, frames, actions, steps=3, temperature=0.0)
    eager = exported["tokenizer"].decode(tokens.flatten(0, 1)).permute(0, 2, 3, 1) * 255.0
    assert torch.allclose(out.flatten(0, 1).float(), eager, atol=0.51)
    assert torch.equal(module.decode_frames(tokens), out)


def test_per_call_steps_set_the_number_of_forward_passes(exported: dict) -> None:
    module = exported["loaded"].module
    frames, actions = _inputs()
    context = module.encode_context(frames)
    module.predict_tokens(context, actions)
    assert module.forward_passes == 3  # the checkpoint's maskvit.decode_steps
    for steps in (1, 2, 6):
        module.predict_tokens(context, actions, steps=steps)
        assert module.forward_passes == steps
    # more steps than masked tokens: the loop stops once every token is revealed
    module.predict_tokens(context, actions[:1, :2], steps=40)
    assert module.forward_passes == 16


def test_bf16_runs_a_bf16_copy_of_the_network(exported: dict) -> None:
    module = exported["loaded"].module
    frames, actions = _inputs(n=16)
    context = module.encode_context(frames)
    got = module.predict_tokens(context, actions, bf16=True)
    assert torch.equal(got, _eager_tokens(exported, frames, actions, bf16=True, steps=3, temperature=0.0))
    fp32 = module.predict_tokens(context, actions)
    assert (got == fp32).float().mean() > 0.8  # mostly the same tokens; bf16 rounding flips a few
    assert module(frames, actions, bf16=True).dtype == torch.uint8


def test_an_fsq_tokenizer_with_a_learned_background_exports_and_loads(tmp_path: Path) -> None:
    tok_path, mv_path = write_checkpoints(tmp_path, quantizer="fsq")
    loaded = E.load_exported_predictor(E.export_predictor(tok_path, mv_path, tmp_path / "fsq.ts")[0])
    tokenizer = load_tokenizer(tok_path)
    frames, actions = _inputs()
    context = loaded.module.encode_context(frames)
    assert torch.equal(context, tokenizer.encode(frames.permute(0, 3, 1, 2).float() / 255.0))
    decoded = loaded.module.decode_frames(context).float()
    assert torch.allclose(decoded, tokenizer.decode(context).permute(0, 2, 3, 1) * 255.0, atol=0.51)
    assert loaded.module.predict_tokens(context, actions).shape == (4, FUTURE, 4, 4)


def test_metadata_describes_the_export(exported: dict) -> None:
    meta = exported["loaded"].metadata
    assert (meta.image_size, meta.grid_h, meta.grid_w, meta.codebook_size) == (16, 4, 4, 32)
    assert (meta.context_frames, meta.future_frames, meta.action_dim) == (CONTEXT, FUTURE, 5)
    assert (meta.decode_steps, meta.mask_schedule, meta.temperature, meta.bf16) == (3, "cosine", 0.0, False)
    assert meta.action_bounds == [[-0.05, -0.05, -0.05, -0.3, -1.0], [0.05, 0.05, 0.05, 0.3, 1.0]]
    assert meta.checkpoints["tokenizer"] == {
        "path": exported["tok_path"].name,  # the file's name: an export does not carry local directories
        "sha256": file_digest(exported["tok_path"]),
        "step": 7,
    }
    text = exported["loaded"].module.metadata()
    assert str(exported["tok_path"].parent) not in text  # nor in the embedded training configs
    assert meta.checkpoints["maskvit"]["step"] == 11
    assert meta.versions["torch"] == torch.__version__
    assert json.loads(exported["loaded"].module.metadata()) == json.loads(meta.to_json())
    with zipfile.ZipFile(exported["out"]) as archive:  # readable without torch
        (name,) = [n for n in archive.namelist() if n.endswith("extra/" + E.METADATA_FILE)]
        assert json.loads(archive.read(name))["format"] == E.FORMAT


def test_metadata_check_names_the_setting_to_change(exported: dict) -> None:
    meta = exported["loaded"].metadata
    meta.check(image_size=16, action_dim=5, context_frames=2, horizon=3)
    with pytest.raises(E.ExportError, match=r"16x16 frames .* 64x64: set sim.image_size=16"):
        meta.check(image_size=64)
    with pytest.raises(E.ExportError, match="5-D actions .* 7-D"):
        meta.check(action_dim=7)
    with pytest.raises(E.ExportError, match="set mpc.context_frames=2"):
        meta.check(context_frames=3)
    with pytest.raises(E.ExportError, match="at most 3 frames but planner.horizon is 8"):
        meta.check(horizon=8)
    skipping = E.PredictorMetadata(**{**meta.__dict__, "frame_skip": 2})
    with pytest.raises(E.ExportError, match="data.frame_skip=1"):
        skipping.check()


def _save_scripted(module: torch.nn.Module, path: Path, extra: dict[str, str] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra or {})
    return path


def test_wrong_and_corrupt_files_are_refused_with_what_was_expected(exported: dict, tmp_path: Path) -> None:
    expected = "TorchScript predictor written by export-predictor"
    with pytest.raises(E.ExportError, match="does not exist"):
        E.load_exported_predictor(tmp_path / "missing.ts")
    text = tmp_path / "notes.ts"
    text.write_text("hello")
    with pytest.raises(E.ExportError, match=f"not a zip archive.*|{expected}"):
        E.load_exported_predictor(text)
    with pytest.raises(E.ExportError, match="TorchScript module without maskvit_mpc.json"):
        E.load_exported_predictor(_save_scripted(torch.nn.Identity(), tmp_path / "identity.ts"))
    # a truncated download
    data = exported["out"].read_bytes()
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(E.ExportError, match=expected):
        E.load_exported_predictor(truncated)
    # a zip archive that is no TorchScript module
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("a.txt", "a")
    with pytest.raises(E.ExportError, match=f"cannot load .* as a TorchScript module.*{expected}"):
        E.load_exported_predictor(other)
    # the weights changed after export (bit rot, or a hand-edited file)
    module = exported["loaded"].module
    meta = json.loads(module.metadata())
    meta["weights_sha256"] = "0" * 64
    damaged = _save_scripted_module(module, tmp_path / "damaged.ts", json.dumps(meta))
    with pytest.raises(E.ExportError, match="weights do not match the digest"):
        E.load_exported_predictor(damaged)
    # metadata of another kind, or of a newer format
    for bad, message in (
        ({"format": "something.else"}, "does not describe a maskvit_mpc.predictor"),
        ({**meta, "format_version": E.FORMAT_VERSION + 1}, "upgrade maskvit-mpc"),
    ):
        path = _save_scripted_module(module, tmp_path / "bad.ts", json.dumps(bad))
        with pytest.raises(E.ExportError, match=message):
            E.load_exported_predictor(path)
    path = _save_scripted_module(module, tmp_path / "notjson.ts", "{not json")
    with pytest.raises(E.ExportError, match="not valid JSON"):
        E.load_exported_predictor(path)


def _save_scripted_module(module: torch.jit.ScriptModule, path: Path, metadata: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path), _extra_files={E.METADATA_FILE: metadata})
    return path


def test_export_refuses_a_tokenizer_the_model_was_not_trained_on(exported: dict, tmp_path: Path) -> None:
    other_tok, _ = write_checkpoints(tmp_path / "other")
    data = torch.load(other_tok, weights_only=True)
    data["step"] = 99  # a different file
    torch.save(data, other_tok)
    with pytest.raises(E.ExportError, match="trained on the tokenizer with sha256"):
        E.export_predictor(other_tok, exported["mv_path"], tmp_path / "p.ts")
    # without --tokenizer the one the checkpoint names is used; a missing one is named
    ckpt = load_checkpoint(exported["mv_path"])
    ckpt["extra"]["tokenizer_checkpoint"] = str(tmp_path / "gone.pt")
    moved = tmp_path / "moved.pt"
    torch.save(ckpt, moved)
    with pytest.raises(E.ExportError, match="gone.pt, which does not exist here: pass --tokenizer"):
        E.export_predictor(None, moved, tmp_path / "p.ts")


def test_cli_help_and_export(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        E.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert (
        "examples:" in help_text and "export-predictor --maskvit" in help_text and "torch.export" in help_text
    )
    out = tmp_path / "cli.ts"
    argv = ["--maskvit", str(exported["mv_path"]), "--out", str(out), "--steps", "2", "--precision", "bf16"]
    assert E.main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        f"wrote {out}: 16x16 frames, 4x4 tokens, 2 context + up to 3 predicted frames, 2 decoding steps"
        in printed
    )
    loaded = E.load_exported_predictor(out)
    assert loaded.metadata.decode_steps == 2 and loaded.metadata.bf16
    frames, actions = _inputs()
    loaded.module.predict_tokens(loaded.module.encode_context(frames), actions)
    assert loaded.module.forward_passes == 2
    assert E.main(argv[:4] + ["--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert E.main(["--maskvit", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow  # torch.export's tracer: several seconds even for the tiny model
def test_torch_export_program_matches_the_torchscript_module(exported: dict, tmp_path: Path) -> None:
    out = tmp_path / "both.ts"
    two_steps = E.DecodeOverrides(steps=2)  # each step is traced: fewer keep the test fast
    written = E.export_predictor(
        exported["tok_path"], exported["mv_path"], out, overrides=two_steps, fmt="both"
    )
    assert written == [out, tmp_path / "both.pt2"]
    program = torch.export.load(str(written[1]))
    frames, actions = _inputs(n=5)
    scripted = E.load_exported_predictor(out).module
    assert torch.equal(program.module()(frames, actions), scripted(frames, actions))
    with pytest.raises(
        E.ExportError, match=r"torch.export program \(.pt2\); the planner loads the TorchScript"
    ):
        E.load_exported_predictor(written[1])
    with pytest.raises(E.ExportError, match="give --out another suffix"):
        E.export_predictor(exported["tok_path"], exported["mv_path"], tmp_path / "x.pt2", fmt="both")
    noisy = E.DecodeOverrides(steps=2, confidence_noise=1.0)
    with pytest.raises(
        E.ExportError, match="export with --confidence-noise 0.*TorchScript predictor .* was written"
    ):
        E.export_predictor(exported["tok_path"], exported["mv_path"], out, overrides=noisy, fmt="both")
    assert E.load_exported_predictor(out).metadata.confidence_noise == 1.0


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_unpack_gives_back_checkpoints_that_export_to_the_same_predictor(
    quantizer: str, tmp_path: Path
) -> None:
    tok_path, mv_path = write_checkpoints(tmp_path / "ckpt", quantizer=quantizer)
    first = E.export_predictor(tok_path, mv_path, tmp_path / "first.ts")[0]
    unpacked = E.unpack_predictor(first, tmp_path / "unpacked")
    assert _same_state(load_tokenizer(unpacked.tokenizer), load_tokenizer(tok_path))
    mv = load_checkpoint(unpacked.maskvit)
    assert _same_state(maskvit_from_checkpoint(mv), maskvit_from_checkpoint(load_checkpoint(mv_path)))
    assert mv["step"] == 11 and mv["config"]["maskvit"]["decode_steps"] == 3
    assert mv["extra"]["tokenizer_sha256"] == file_digest(unpacked.tokenizer)  # they export together
    again = E.load_exported_predictor(E.export_predictor(None, unpacked.maskvit, tmp_path / "again.ts")[0])
    frames, actions = _inputs()
    assert torch.equal(
        again.module(frames, actions), E.load_exported_predictor(first).module(frames, actions)
    )


def test_unpacking_an_export_without_configs_needs_the_right_ones(exported: dict, tmp_path: Path) -> None:
    from maskvit_mpc.configs import load_config

    data = json.loads(exported["loaded"].metadata.to_json())
    data.pop("training")  # as files exported before the configs were stored
    old = _save_scripted_module(exported["loaded"].module, tmp_path / "old.ts", json.dumps(data))
    with pytest.raises(E.ExportError, match="before the network configs were stored"):
        E.unpack_predictor(old, tmp_path / "a")
    tok_sets = ["tokenizer.image_size=16", "tokenizer.grid_size=4", "tokenizer.channel_mult=[1,2,2]",
                "tokenizer.base_channels=8", "tokenizer.codebook_size=32", "tokenizer.quantizer=vq",
                "tokenizer.learned_background=false"]  # fmt: skip
    mv_sets = ["maskvit.d_model=32", "maskvit.n_heads=4", "maskvit.n_blocks=1", "maskvit.dropout=0.0",
               f"maskvit.context_frames={CONTEXT}", f"maskvit.future_frames={FUTURE}",
               "maskvit.action_scale=[1,1,1,1,1]"]  # fmt: skip
    wrong = load_config("default", [*mv_sets[1:], "maskvit.d_model=64"])
    with pytest.raises(E.ExportError, match="maskvit weights do not fit the maskvit config"):
        E.unpack_predictor(old, tmp_path / "b", load_config("default", tok_sets), wrong)
    unpacked = E.unpack_predictor(
        old, tmp_path / "c", load_config("default", tok_sets), load_config("default", mv_sets)
    )
    assert _same_state(load_tokenizer(unpacked.tokenizer), exported["tokenizer"])
    assert _same_state(maskvit_from_checkpoint(load_checkpoint(unpacked.maskvit)), exported["maskvit"])


def test_a_pose_conditioned_model_exports_with_the_arm_position_as_input(tmp_path: Path) -> None:
    tok_path, mv_path = write_checkpoints(
        tmp_path, decode_steps=2, pose_conditioning=True, pose_offset=[0, 0, 0.1], pose_scale=[0.1] * 3
    )
    out = E.export_predictor(tok_path, mv_path, tmp_path / "pose.ts", fmt="both")
    loaded = E.load_exported_predictor(out[0])
    assert loaded.metadata.pose_conditioning
    module = loaded.module
    frames, actions = _inputs()
    context = module.encode_context(frames)
    low, high = torch.tensor([0.0, 0.0, 0.02]), torch.tensor([[0.0, 0.0, 0.15]])
    got = module.predict_tokens(context, actions, start_pose=low)
    eager = {
        "tokenizer": load_tokenizer(tok_path),
        "maskvit": maskvit_from_checkpoint(load_checkpoint(mv_path)),
    }
    starts = low.expand(len(actions), 3)
    assert torch.equal(
        got, _eager_tokens(eager, frames, actions, steps=2, temperature=0.0, start_pose=starts)
    )
    assert not torch.equal(
        got, module.predict_tokens(context, actions, start_pose=high)
    )  # the height matters
    per_sample = torch.stack([low, high[0], low, high[0]])
    mixed = module.predict_tokens(context, actions, start_pose=per_sample)
    assert torch.equal(mixed[0], got[0]) and torch.equal(mixed[2], got[2])
    with pytest.raises(torch.jit.Error, match="pass start_pose"):
        module.predict_tokens(context, actions)
    # forward and the torch.export program take it as their last input too
    assert torch.equal(module(frames, actions, start_pose=low), module.decode_frames(got))
    program = torch.export.load(str(out[1])).module()
    assert torch.equal(program(frames, actions, low[None]), module.decode_frames(got))
    # and it unpacks for more fine-tuning, the pose settings included
    unpacked = maskvit_from_checkpoint(load_checkpoint(E.unpack_predictor(out[0], tmp_path / "u").maskvit))
    assert unpacked.config.pose_scale == [0.1] * 3 and _same_state(unpacked, eager["maskvit"])
