"""Typed configs: presets load, bad names and values are errors that name the field."""

import pytest

from scratchlm.config import Config, ConfigError, list_presets, load_config, load_run_config


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    cfg = load_config(preset)
    (tmp_path / "run").mkdir()
    cfg.save(tmp_path / "run" / "config.toml")
    assert load_run_config(tmp_path / "run") == cfg


def test_unknown_field_names_the_field_and_suggests():
    with pytest.raises(ConfigError, match=r"model.*'n_layer'.*did you mean 'n_layers'"):
        load_config("debug", ["model.n_layer=3"])


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="modle"):
        load_config("debug", ["modle.n_layers=3"])


def test_literal_field_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"model.norm='layernorm'.*rmsnorm, dyt"):
        load_config("debug", ["model.norm=layernorm"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.lr=-1", r"train.lr=-1.0 is out of range"),
        ("model.n_layers=abc", r"model.n_layers='abc' must be an integer"),
        ("train.compile=maybe", r"train.compile='maybe' must be a boolean"),
        ("model.dropout=1.5", r"model.dropout=1.5 is out of range \[0, 1\]"),
    ],
)
def test_bad_values_name_field_and_limit(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("debug", [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        load_config("debug", ["model.n_heads=4", "model.n_kv_heads=3"])
    with pytest.raises(ConfigError, match="top_k"):
        load_config("debug", ["model.n_routed_experts=4", "model.top_k=5"])


def test_overrides_are_typed():
    cfg = load_config("debug", ["model.n_layers=3", "train.lr=1e-4", "train.compile=true", "model.n_kv_heads=none"])
    assert cfg.model.n_layers == 3 and cfg.train.lr == 1e-4 and cfg.train.compile is True
    assert cfg.model.n_kv_heads == cfg.model.n_heads  # None resolves to MHA


def test_malformed_set_and_missing_preset():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config("debug", ["n_layers=3"])
    with pytest.raises(ConfigError, match="no config file or preset named 'nope'.*debug"):
        load_config("nope")


def test_defaults_are_valid():
    cfg = Config()
    assert cfg.model.n_kv_heads == cfg.model.n_heads
    assert cfg.model.ffn_hidden % cfg.model.multiple_of == 0
