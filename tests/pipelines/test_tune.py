"""The search space is config keys: built in one loop from TuneConfig, applied like --set; calibration
in the loop."""

from __future__ import annotations

import copy

import pytest

from adapler.batching import make_loader
from adapler.calibration import apply_factor
from adapler.config import apply_overrides, load_config
from adapler.data import load_data
from adapler.evaluate import budget_gain, evaluate
from adapler.selection import Candidate, select
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.tune import (
    SEARCHED,
    SearchOutcome,
    first_points,
    gentler_point,
    paired_selection,
    param_space,
    searched_values,
)


def test_search_space_is_dotted_config_keys_applied_like_set():
    config = load_config(
        None, ["tune.phi_min=0.002", "tune.phi_max=0.004", "tune.inits=[finetuned]"], cls=PipelineConfig
    )
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


def test_the_first_trials_take_each_input_budget_shortest_first_then_a_gentler_phi():
    config = load_config(
        None,
        [
            "tune.max_lengths=[64, 16, 32]",
            "stage2.phi=5.0",
            "stage2.lr=1e-4",
            "tune.lrs=[3e-5, 5e-5]",
            "tune.inits=[finetuned]",
        ],
        cls=PipelineConfig,
    )
    points = first_points(config)
    assert [p["data.max_length"] for p in points] == [16, 32, 64, 64]
    for point in points:
        assert set(point) == set(param_space(config.tune))  # a whole point: Ray's warm start needs every key
        assert point["stage2.lr"] == 3e-5  # not a choice: the first one
        assert point["stage2.gamma"] == config.stage2.gamma and point["stage2.init"] == "finetuned"
    assert [p["stage2.phi"] for p in points] == [config.tune.phi_max] * 3 + [pytest.approx(config.tune.phi_max / 2)]
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=param_space(config.tune), metric=["a", "b"], mode=["max", "max"], seed=0, points_to_evaluate=points
    )
    suggested = [searcher.suggest(str(i)) for i in range(4)]
    assert [(s["data.max_length"], s["stage2.phi"]) for s in suggested] == [
        (p["data.max_length"], p["stage2.phi"]) for p in points
    ]

    # without a searched budget: the config's own point, then the gentler one, clamped into the range
    unbudgeted = apply_overrides(config, {"tune.max_lengths": [], "stage2.phi": 0.15, "tune.phi_min": 0.1})
    assert [p["stage2.phi"] for p in first_points(unbudgeted)] == [0.15, 0.1]
    assert all("data.max_length" not in p for p in first_points(unbudgeted))
    # at the bottom of the range already: no gentler point
    assert [p["stage2.phi"] for p in first_points(apply_overrides(unbudgeted, {"stage2.phi": 0.1}))] == [0.1]


def test_asha_stops_early_all_but_the_gentler_trial():
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from adapler_pipelines.early_stopping import ASHAKeepingOne

    config = load_config(None, ["tune.max_lengths=[32, 64]", "stage2.phi=0.3", "tune.phi_min=0.05"], cls=PipelineConfig)
    points = first_points(config)
    assert gentler_point(config) == points[-1] and points[-1]["stage2.phi"] == pytest.approx(0.15)
    asha = dict(metric="objective", mode="max", time_attr="training_iteration", grace_period=1, max_t=3)

    def decisions(scheduler, scores):  # the trials of first_points, one result each at epoch 1, then at 3
        trials = [SimpleNamespace(trial_id=str(i), config=point) for i, point in enumerate(points)]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        first = [
            scheduler.on_trial_result(None, t, {"training_iteration": 1, "objective": s})
            for t, s in zip(trials, scores)
        ]
        return first, scheduler.on_trial_result(None, trials[-1], {"training_iteration": 3, "objective": 2.0})

    scores = [2.0, -0.07, 1.4]  # 32 tokens within the tolerance, 64 pruned too hard, the gentler one slower
    first, last = decisions(ASHAKeepingOne(gentler_point(config), **asha), scores)
    assert first == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE]
    assert last == TrialScheduler.STOP  # its last epoch ends it as any trial
    plain, _ = decisions(ASHAScheduler(**asha), scores)
    assert plain[-1] == TrialScheduler.STOP  # what ASHA alone does to it
    none, _ = decisions(ASHAKeepingOne(None, **asha), scores)
    assert none == plain


def test_calibration_in_the_loop_adds_certified_factors_against_the_full_length(tiny_model_factory, tmp_path, capsys):
    config = load_config(
        None,
        ["data.source=rotten_tomatoes", "data.limit=24", "data.max_length=32", "stage2.batch_size=8"],
        cls=PipelineConfig,
    )
    model = tiny_model_factory(eta_init=0.5)
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.model_max_length = 16  # a trial at a 16-token budget
    model.save_pretrained(tmp_path / "model")
    data = load_data(config)
    loader = make_loader(data.dev, model.tokenizer, 8, 16)
    own = evaluate(model, loader)
    trained = Candidate("a", 0, own.accuracy, own.flops_speedup, {"data.max_length": 16}, str(tmp_path / "model"))
    outcome = paired_selection(
        SearchOutcome([trained], select([trained], own.accuracy, 0.01)),
        config,
        data,
        own.accuracy,
        str(tmp_path / "model"),  # stage 1: the same weights
    )

    unpruned = evaluate(model, loader, removal="none").accuracy
    assert outcome.candidates[0].unpruned_accuracy == pytest.approx(unpruned)  # measured for each trained epoch
    added = [c for c in outcome.candidates if c.factor != 1.0]
    assert added and all(c.paired is not None and c.unpruned_accuracy == pytest.approx(unpruned) for c in added)
    gain = budget_gain(model, data.dev, 32)
    assert gain > 1
    for c in added:  # each factor's speedup at the budget, times the budget's gain: against the 32-token backbone
        measured = evaluate(apply_factor(model, c.factor), loader)
        assert c.dev_flops_speedup == pytest.approx(measured.flops_speedup * gain)
        assert c.dev_accuracy == pytest.approx(measured.accuracy)
    assert outcome.selection.confidence is not None  # the paired rule chose
    assert "trial a epoch 0 (16 tokens): etas x" in capsys.readouterr().out  # progress, factor by factor


def test_without_calibration_the_trained_epochs_are_still_chosen_by_the_paired_rule(tiny_model_factory, tmp_path):
    config = load_config(
        None,
        ["data.source=rotten_tomatoes", "data.limit=24", "data.max_length=32", "tune.calibrate=false"],
        cls=PipelineConfig,
    )
    model = tiny_model_factory(eta_init=0.5)
    model.save_pretrained(tmp_path / "model")
    data = load_data(config)
    own = evaluate(model, make_loader(data.dev, model.tokenizer, 8, 32))
    epochs = [Candidate("a", e, own.accuracy, own.flops_speedup, {}, str(tmp_path / "model")) for e in (0, 1)]
    outcome = paired_selection(
        SearchOutcome(epochs, select(epochs, own.accuracy, 0.01)),
        config,
        data,
        own.accuracy,
        str(tmp_path / "model"),
        calibrate_factors=config.tune.calibrate,
    )
    assert [c.factor for c in outcome.candidates] == [1.0, 1.0]  # no factor added
    assert all(c.paired.examples == len(data.dev) for c in outcome.candidates)
    assert outcome.selection.confidence == config.stage2.selection_confidence  # one fixed sequence: no correction


def test_paired_calibration_in_the_loop_compares_with_stage_1_on_dev_and_the_unlabeled_file(
    tiny_model_factory, tmp_path
):
    texts = tmp_path / "unlabeled.csv"
    texts.write_text("text\n" + "".join(f"an unlabelled review number {i} good or bad\n" for i in range(30)))
    config = load_config(
        None,
        [
            "data.source=rotten_tomatoes",
            "data.limit=24",
            "data.max_length=32",
            "stage2.batch_size=8",
            f"data.unlabeled_file={texts}",
        ],
        cls=PipelineConfig,
    )
    model = tiny_model_factory(eta_init=0.5)
    model.save_pretrained(tmp_path / "model")
    loader = make_loader(load_data(config).dev, model.tokenizer, 8, 32)
    own = evaluate(model, loader)
    trained = Candidate("a", 0, own.accuracy, own.flops_speedup, {}, str(tmp_path / "model"))
    outcome = paired_selection(
        SearchOutcome([trained], select([trained], own.accuracy, 0.01)),
        config,
        load_data(config),
        own.accuracy,
        str(tmp_path / "model"),
    )  # stage 1: the same weights

    assert all(c.paired is not None and c.label_free.texts == 30 for c in outcome.candidates)
    first = outcome.candidates[0]
    assert first.paired.examples == len(load_data(config).dev)
    assert first.unpruned_paired.changed == first.paired.changed  # stage 1 is its own unpruned self here
    assert outcome.selection.confidence == pytest.approx(0.9)  # one curve: no correction
