"""The search space is config keys: built in one loop from TuneConfig, applied like --set."""

from __future__ import annotations

from adapler.config import apply_overrides, load_config
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.tune import SEARCHED, param_space, searched_values


def test_search_space_is_dotted_config_keys_applied_like_set():
    config = load_config(None, ["tune.phi_min=0.002", "tune.phi_max=0.004", "tune.inits=[finetuned]"], cls=PipelineConfig)
    space = param_space(config.tune)
    assert set(space) == {"stage2.gamma", "stage2.phi", "stage2.lr", "stage2.init"}  # empty choices: not searched
    sampled = {key: domain.sample() for key, domain in space.items()}
    trial = apply_overrides(config, sampled)  # what a trial does with them
    assert 0.002 <= trial.stage2.phi <= 0.004 and trial.stage2.init == "finetuned"
    assert searched_values(trial) == {**searched_values(config), **sampled}
    assert set(searched_values(config)) == set(SEARCHED)


def test_one_line_adds_a_searched_parameter():
    config = load_config(None, ["tune.predictor_lrs=[0.01, 0.03]", "tune.eta_lrs=[0.005]"], cls=PipelineConfig)
    space = param_space(config.tune)
    assert {"stage2.predictor_lr", "stage2.eta_lr"} <= set(space)
    trial = apply_overrides(config, {key: domain.sample() for key, domain in space.items()})
    assert trial.stage2.predictor_lr in (0.01, 0.03) and trial.stage2.eta_lr == 0.005
