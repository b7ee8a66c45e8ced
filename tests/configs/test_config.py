import pytest
from maskvit_mpc.configs import Config, ConfigError, available_presets, load_config
from maskvit_mpc.configs.cli import cli_entry, config_from_args, make_parser


def test_default_preset_loads_and_every_shipped_preset_validates():
    assert "default" in available_presets()
    for name in available_presets():
        assert isinstance(load_config(name), Config)


def test_override_sets_a_nested_field_and_keeps_siblings():
    cfg = load_config("default", ["sim.image_size=128", "safety.workspace.x.low=-0.2"])
    assert cfg.sim.image_size == 128
    assert cfg.safety.workspace.x.low == -0.2
    assert cfg.safety.workspace.x.high == load_config("default").safety.workspace.x.high


def test_errors_name_the_dotted_path_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        load_config("default", ["sim.image_size=1000", "task.name=pull"])
    msg = str(info.value)
    assert "sim.image_size" in msg and "1000" in msg and "256" in msg
    assert "task.name" in msg and "'pull'" in msg and "'push'" in msg


def test_unknown_field_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sim:\n  imgae_size: 64\n")
    with pytest.raises(ConfigError, match=r"sim\.imgae_size: unknown field"):
        load_config(str(path))


def test_file_with_base_preset_and_inverted_range(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("base: default\nsim:\n  image_size: 96\n")
    assert load_config(str(good)).sim.image_size == 96
    bad = tmp_path / "bad.yaml"
    bad.write_text("safety:\n  workspace:\n    z: {low: 0.5, high: 0.1}\n")
    with pytest.raises(ConfigError, match=r"safety\.workspace\.z"):
        load_config(str(bad))


@pytest.mark.parametrize(
    "text, match",
    [
        ("sim: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("base: 3\n", "base"),
    ],
)
def test_corrupt_files_refused_clearly(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(str(path))


def test_preset_loop_and_missing_file_and_unknown_preset(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(str(a))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown config preset"):
        load_config("no_such_preset")


def test_malformed_override_refused():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config("default", ["sim.image_size"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config("default", ["sim.image_size.x=3"])


def test_nothing_half_applied_after_a_failed_load():
    before = load_config("default")
    with pytest.raises(ConfigError):
        load_config("default", ["sim.image_size=64", "sim.substeps=-1"])
    assert load_config("default") == before


def test_cli_parser_and_clean_error_exit(capsys):
    parser = make_parser("demo", "a demo", "  demo --set sim.image_size=128")
    args = parser.parse_args(["--set", "sim.image_size=32"])
    assert config_from_args(args).sim.image_size == 32

    @cli_entry
    def main(argv=None):
        config_from_args(parser.parse_args(argv))
        return 0

    assert main(["--set", "sim.image_size=7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and "sim.image_size" in err
    assert "Traceback" not in err


def test_maskvit_presets_are_consistent_with_their_clips():
    """train-maskvit refuses a clip length other than context + future frames: every preset agrees."""
    for name in ("default", "maskvit_cpu", "maskvit_robonet", "maskvit_bair"):
        cfg = load_config(name)
        assert cfg.data.clip_length == cfg.maskvit.context_frames + cfg.maskvit.future_frames, name
    assert (
        load_config("maskvit_bair").maskvit.d_model == load_config("maskvit_robonet").maskvit.d_model
    )  # base
