"""Typed config: YAML preset <- overrides, errors that name the key, JSON round trip."""

from __future__ import annotations

import json
import textwrap

import pytest

from adapler.config import (
    AdapLeRSettings,
    ConfigError,
    ExperimentConfig,
    config_to_dict,
    default_backbone,
    load_config,
    resolve_preset,
    save_config,
)
from adapler_pipelines.config import PipelineConfig

PRESET = textwrap.dedent(
    """
    name: unit
    data:
      source: files
      hub_config: sst2
      max_length: 48
    stage1:
      epochs: 2
      lr: 5.0e-5
    stage2:
      phi: 0.005
      init: finetuned
    model:
      adapler:
        cp_hidden: 16
    """
)


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text(PRESET)
    return path


def test_defaults_follow_the_spec():
    config = load_config()
    assert config == ExperimentConfig()
    assert config.stage1.lr == 2e-5 and config.stage1.batch_size == 32 and config.stage1.epochs == 5
    assert config.stage2.lr == 3e-5
    # where the spec's short-budget rates differ from the paper's, the paper preset keeps them
    assert (config.stage2.predictor_lr, config.stage2.eta_lr) == (3e-2, 5e-3)
    paper = load_config(resolve_preset("paper"), cls=PipelineConfig)
    assert (paper.stage2.predictor_lr, paper.stage2.eta_lr, paper.stage2.lr) == (None, 5e-4, 3e-5)
    assert (paper.stage2.gamma, paper.stage2.phi, paper.stage2.epochs) == (0.005, 0.0005, 5)
    assert paper.stage2.length_unit == "tokens" and (paper.tune.phi_min, paper.tune.phi_max) == (1e-4, 1e-2)
    # phi per input length by default: the spec's 0.0005 x ~25 tokens of SST-2 is about 0.013
    assert (config.stage2.length_unit, config.stage2.phi) == ("input", 0.3)
    assert config.stage2.gamma == 0.005 and config.stage2.init == "pretrained"
    assert config.model.adapler == AdapLeRSettings(cp_hidden=32, eta_init=0.25, eta_min=0.01, eta_max=1.0, beta=0.1)


def test_preset_and_overrides(preset):
    config = load_config(preset, ["stage2.phi=0.001", "data.limit=10", "data.hub_config=none"])
    assert config.name == "unit"
    assert config.stage2.phi == 0.001 and isinstance(config.stage2.phi, float)
    assert config.stage2.init == "finetuned"
    assert config.data.limit == 10 and isinstance(config.data.limit, int)
    assert config.data.hub_config is None
    assert config.data.source == "files" and config.data.max_length == 48
    assert config.stage1.epochs == 2 and config.stage1.lr == 5e-5
    assert config.model.adapler.cp_hidden == 16 and config.model.adapler.beta == 0.1
    assert config.stage2.gamma == 0.005  # untouched default


def test_override_without_preset_and_string_numbers():
    config = load_config(None, ["stage2.phi=1e-3", "stage1.epochs=3", "model.adapler.eta_init=0.5"])
    assert config.stage2.phi == pytest.approx(1e-3) and isinstance(config.stage2.phi, float)
    assert config.stage1.epochs == 3
    assert config.model.adapler.eta_init == 0.5


def test_unknown_key_is_named(preset):
    with pytest.raises(ConfigError, match="phii"):
        load_config(preset, ["stage2.phii=0.1"])
    with pytest.raises(ConfigError, match="nosuchsection"):
        load_config(preset, ["nosuchsection.x=1"])


def test_unknown_key_in_preset_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage1:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(path)


def test_wrong_types(preset):
    with pytest.raises(ConfigError, match="stage1.epochs"):
        load_config(preset, ["stage1.epochs=abc"])
    with pytest.raises(ConfigError, match="stage1.epochs"):
        load_config(preset, ["stage1.epochs=2.5"])
    with pytest.raises(ConfigError, match="stage2.phi"):
        load_config(preset, ["stage2.phi=true"])
    with pytest.raises(ConfigError, match="data.limit"):
        load_config(preset, ["data.limit=lots"])
    with pytest.raises(ConfigError):
        load_config(preset, ["stage2=3"])  # a section is not a scalar


def test_bad_literal(preset):
    with pytest.raises(ConfigError, match="stage2.init.*foo"):
        load_config(preset, ["stage2.init=foo"])


def test_malformed_override_and_missing_preset(tmp_path):
    with pytest.raises(ConfigError):
        load_config(None, ["stage2.phi"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    assert issubclass(ConfigError, ValueError)


def test_save_config_round_trips(preset, tmp_path):
    config = load_config(preset, ["stage2.phi=0.001", "data.limit=10", "data.hub_config=none"])
    out = tmp_path / "run" / "config.json"
    save_config(config, out)
    data = json.loads(out.read_text())
    assert data["stage2"]["phi"] == 0.001 and data["data"]["hub_config"] is None
    assert data == config_to_dict(config)
    again = load_config(out)
    assert again == config
    assert isinstance(again.stage1.lr, float) and again.stage1.lr == 5e-5


def test_default_backbone_is_the_packaged_minilm():
    from pathlib import Path

    path = Path(default_backbone())
    assert (path / "config.json").is_file()
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 6


def test_apply_overrides_is_set_for_dotted_values():
    from adapler.config import apply_overrides, get_dotted

    config = load_config(None, ["stage2.phi=0.001"])
    tuned = apply_overrides(config, {"stage2.phi": 0.003, "stage2.init": "finetuned", "data.max_length": "32"})
    assert (tuned.stage2.phi, tuned.stage2.init, tuned.data.max_length) == (0.003, "finetuned", 32)
    assert config.stage2.phi == 0.001  # a new config; the original is unchanged
    assert get_dotted(tuned, "stage2.phi") == 0.003
    with pytest.raises(ConfigError, match="stage2.init"):
        apply_overrides(config, {"stage2.init": "random"})
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(config, {"stage2.phii": 0.1})
    with pytest.raises(ConfigError, match="no such config key"):
        get_dotted(config, "stage2.phii")


def test_etas_must_be_positive_and_ordered():
    with pytest.raises(ConfigError, match="0 < eta_min <= eta_init <= eta_max"):
        load_config(None, ["model.adapler.eta_min=0"])
    with pytest.raises(ConfigError, match="eta_init=2.0"):
        load_config(None, ["model.adapler.eta_init=2"])
