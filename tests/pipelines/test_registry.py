"""The registry stage on a real (throwaway) SQLite MLflow store: stage runs, registration as a
models-from-code pyfunc, the champion alias, and reading the model back.

Every store is a copy of the session's migrated template (tests/conftest.py, ``mlflow_store``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adapler.artifacts import ArtifactError
from adapler.config import config_to_dict
from adapler.inference import Predictor
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.selection import TEST_SPLIT_TAG
from adapler_pipelines import registry, tracking
from adapler_pipelines.config import MlflowConfig, PipelineConfig
from adapler_pipelines.registry import RegistryError

TEXTS = [
    "a gripping, beautifully acted film",
    "dull",
    "the plot never comes together, and the jokes fall flat one after another",
]
PAIRS = ["was it worth seeing?", None, "would you recommend it to a friend?"]
METRICS = {"dev_accuracy": 0.8, "test_accuracy": 0.75, "dev_flops_speedup": 1.5, "train_loss": 0.4}


# ----------------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("isolated_mlflow")


@pytest.fixture(scope="module")
def model_dir(tiny_backbone_dir, tmp_path_factory) -> str:
    import torch

    torch.manual_seed(0)
    # eta = 1: threshold 1/n, so the random CPs drop tokens; a wider head: probabilities that
    # differ between texts by ~1e-3, far above the comparison tolerance.
    model = AdapLeRForSequenceClassification.from_backbone(
        tiny_backbone_dir, num_labels=2, label_names=["neg", "pos"], eta_init=1.0
    )
    torch.nn.init.normal_(model.backbone.classifier.weight, std=1.0)
    directory = tmp_path_factory.mktemp("adapler-model") / "model"
    model.save_pretrained(directory)
    return str(directory)


def make_config(backbone: str, uri: str = "", phi: float = 0.003) -> PipelineConfig:
    config = PipelineConfig()
    config.model.backbone = backbone
    config.stage2.phi = phi
    config.mlflow = MlflowConfig(tracking_uri=uri, experiment="adapler-test")
    return config


@pytest.fixture(scope="module")
def registered(model_dir, tiny_backbone_dir, mlflow_store, tmp_path_factory, mlflow_globals_restored) -> dict:
    """One registration shared by the read-side tests (registering takes seconds)."""
    uri = mlflow_store(tmp_path_factory.mktemp("registered-store") / "mlflow.db")
    config = make_config(tiny_backbone_dir, uri)
    with mlflow_globals_restored():
        name, version = registry.register_model(model_dir, config, METRICS, "adapler-tiny", alias="champion")
    return {"uri": uri, "name": name, "version": version, "config": config, "model_dir": model_dir}


def use_store(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ----------------------------------------------------------------------------------- registry
def test_register_model_sets_alias_tags_and_run(registered, tiny_backbone_dir):
    client = use_store(registered["uri"])
    name, version = registered["name"], registered["version"]
    assert name == "adapler-tiny" and version == "1"
    assert client.get_registered_model(name).name == name
    assert str(client.get_model_version_by_alias(name, "champion").version) == version

    mv = client.get_model_version(name, version)
    assert mv.tags["dataset"] == "rotten_tomatoes"
    assert mv.tags["backbone"] == tiny_backbone_dir
    assert float(mv.tags["dev_accuracy"]) == pytest.approx(0.8)
    assert float(mv.tags["test_accuracy"]) == pytest.approx(0.75)
    assert float(mv.tags["flops_speedup"]) == pytest.approx(1.5)
    assert "rotten_tomatoes" in mv.description and "dev accuracy 0.8000" in mv.description

    run = client.get_run(mv.run_id)  # the registration run: config and metrics next to the model
    assert run.data.params["stage2.phi"] == "0.003"
    assert run.data.metrics["dev_accuracy"] == pytest.approx(0.8)
    assert run.info.status == "FINISHED"


def test_pyfunc_predicts_like_predictor(registered):
    use_store(registered["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered['name']}@champion")
    expected = Predictor.from_directory(registered["model_dir"]).predict(TEXTS)
    assert any(p.kept_lengths[-1] < p.input_tokens for p in expected)  # tokens are dropped

    out = pyfunc.predict(TEXTS)  # a plain list of str
    assert isinstance(out, pd.DataFrame) and len(out) == len(TEXTS)
    assert list(out["label"]) == [p.label for p in expected]
    got = np.array([[row["neg"], row["pos"]] for row in out["probabilities"]])
    want = np.array([[p.probabilities["neg"], p.probabilities["pos"]] for p in expected])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(out["kept_tokens"]) == [p.kept_lengths[-1] for p in expected]
    np.testing.assert_allclose(out["flops_speedup"], [p.flops_speedup for p in expected], rtol=1e-6)

    # A frame with text only gives the same; text_pair is used (not dropped), ids are kept.
    same = pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    np.testing.assert_allclose(
        np.array([[r["neg"], r["pos"]] for r in same["probabilities"]]), want, rtol=1e-5, atol=1e-6
    )
    paired = pyfunc.predict(pd.DataFrame({"id": ["a", "b", "c"], "text": TEXTS, "text_pair": PAIRS}))
    expected_pairs = Predictor.from_directory(registered["model_dir"]).predict(TEXTS, PAIRS)
    assert list(paired["id"]) == ["a", "b", "c"]
    assert list(paired["input_tokens"]) == [p.input_tokens for p in expected_pairs]
    assert paired["input_tokens"][0] > out["input_tokens"][0]  # the pair reached the model
    np.testing.assert_allclose(
        np.array([[r["neg"], r["pos"]] for r in paired["probabilities"]]),
        np.array([[p.probabilities["neg"], p.probabilities["pos"]] for p in expected_pairs]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_registry_holds_code_and_safetensors_not_pickles(registered, tmp_path):
    use_store(registered["uri"])
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{registered['name']}/{registered['version']}", dst_path=str(tmp_path)
        )
    )
    names = [p.name for p in local.rglob("*") if p.is_file()]
    assert {"model.safetensors", "adapler.safetensors", "config.json"} <= set(names)
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".bin", ".pt", ".pth"))], names
    assert "python_model.pkl" not in names
    flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    assert (local / "code" / "adapler" / "inference.py").is_file()  # the model carries its code


def test_load_champion_and_download_model_dir(registered, tmp_path):
    name, uri = registered["name"], registered["uri"]
    out = registry.load_champion(name, uri=uri).predict(pd.DataFrame({"text": TEXTS[:2]}))
    assert list(out.columns) == [
        "label",
        "label_id",
        "probabilities",
        "input_tokens",
        "kept_tokens",
        "flops_speedup",
        "operating_point",
        "eta_factor",
    ]

    directory = registry.download_model_dir(name, "champion", dst_path=tmp_path / "dl", uri=uri)
    assert Path(directory).is_relative_to(tmp_path / "dl")
    assert sorted(p.name for p in Path(directory).glob("*.safetensors")) == ["adapler.safetensors", "model.safetensors"]
    got = Predictor.from_directory(directory).predict(TEXTS)
    want = Predictor.from_directory(registered["model_dir"]).predict(TEXTS)
    assert [p.label for p in got] == [p.label for p in want]
    assert [p.probabilities["pos"] for p in got] == pytest.approx([p.probabilities["pos"] for p in want])


def test_unknown_model_or_alias_is_a_registry_error(registered):
    name, uri = registered["name"], registered["uri"]
    with pytest.raises(RegistryError, match="no registered model 'no-such-model'"):
        registry.load_champion("no-such-model", uri=uri)
    with pytest.raises(RegistryError, match="no registered model"):
        registry.download_model_dir("no-such-model", uri=uri)
    with pytest.raises(RegistryError, match="has no alias 'staging'.*champion"):
        registry.load_champion(name, alias="staging", uri=uri)
    assert issubclass(RegistryError, ValueError)


def test_register_sets_no_alias_unless_asked_and_nests_under_parent(mlflow_uri, model_dir, tiny_backbone_dir):
    config = make_config(tiny_backbone_dir)  # URI from $MLFLOW_TRACKING_URI (the fixture)
    name, first = registry.register_model(model_dir, config, {"dev_accuracy": 0.7}, "tiny")
    client = MlflowClient(mlflow_uri, mlflow_uri)
    parent = client.create_run(client.get_experiment_by_name("adapler-test").experiment_id).info.run_id
    _, second = registry.register_model(model_dir, config, {"test_accuracy": 0.9}, "tiny", parent_run_id=parent)
    assert (first, second) == ("1", "2")
    assert not client.get_registered_model(name).aliases
    mv = client.get_model_version(name, "2")
    assert "dev_accuracy" not in mv.tags and mv.tags["test_accuracy"] == "0.9"
    assert client.get_run(mv.run_id).data.tags["mlflow.parentRunId"] == parent


def test_champion_moves_only_for_a_better_model_on_the_same_split(mlflow_uri, model_dir, tiny_backbone_dir):
    config = make_config(tiny_backbone_dir)
    client = MlflowClient(mlflow_uri, mlflow_uri)

    def run(accuracy: float, speedup: float, split: str = "split-a", policy: str = "better", warning: str = ""):
        config.mlflow.promote = policy
        metrics = {"test_accuracy": accuracy, "flops_speedup": speedup}
        _, version = registry.register_model(model_dir, config, metrics, "tiny", tags={TEST_SPLIT_TAG: split})
        return version, registry.promote("tiny", version, config, warning)

    def champion() -> str:
        return str(client.get_model_version_by_alias("tiny", "champion").version)

    _, promotion = run(0.9, 1.0, warning="removed no token")  # a warned run: not even a first champion
    assert promotion.alias == "challenger" and "warning" in promotion.reason
    assert "champion" not in client.get_registered_model("tiny").aliases
    version, promotion = run(0.73, 1.5)
    assert (promotion.alias, champion()) == ("champion", version) and "no champion yet" in promotion.reason
    worse, promotion = run(0.72, 2.0)  # faster but less accurate: stays a challenger
    assert (promotion.alias, champion()) == ("challenger", version)
    assert "less accurate" in promotion.reason and "0.7200 vs 0.7300" in promotion.reason
    assert str(client.get_model_version_by_alias("tiny", "challenger").version) == worse
    _, promotion = run(0.80, 3.0, split="split-b")  # another test split: not comparable
    assert (promotion.alias, champion()) == ("challenger", version) and "same test split" in promotion.reason
    _, promotion = run(0.95, 4.0, warning="lost accuracy on dev")  # better on test, but its run warned
    assert (promotion.alias, champion()) == ("challenger", version)
    better, promotion = run(0.73, 1.6)  # as accurate and faster
    assert (promotion.alias, champion()) == ("champion", better)
    assert str(client.get_model_version_by_alias("tiny", "challenger").version) == better  # every new version
    forced, promotion = run(0.5, 1.0, policy="always")
    assert (promotion.alias, champion()) == ("champion", forced)
    _, promotion = run(0.99, 9.0, policy="never")
    assert (promotion.alias, champion()) == ("challenger", forced)


def test_register_refuses_other_directories(tmp_path, model_dir, tiny_backbone_dir):
    config = make_config(tiny_backbone_dir, uri=f"sqlite:///{tmp_path / 'unused.db'}")
    with pytest.raises(ArtifactError, match="not an AdapLeR model directory"):
        registry.register_model(tiny_backbone_dir, config, {}, "x")  # a plain backbone
    pickled = tmp_path / "with-pickle"
    shutil.copytree(model_dir, pickled)
    (pickled / "training_args.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(ArtifactError, match="pickle"):
        registry.register_model(pickled, config, {}, "x")
    assert not (tmp_path / "unused.db").exists()  # refused before touching MLflow


# ----------------------------------------------------------------------------------- stage runs
def test_log_stage_run_records_config_metrics_and_files(mlflow_uri, tiny_backbone_dir, tmp_path):
    config = make_config(tiny_backbone_dir, phi=0.0025)
    client = MlflowClient(mlflow_uri)
    tracking.setup_mlflow(config.mlflow)
    experiment = client.get_experiment_by_name("adapler-test")
    assert Path(experiment.artifact_location) == (tmp_path / "mlartifacts").resolve()  # by the DB, not in the cwd
    parent = client.create_run(experiment.experiment_id, run_name="driver").info.run_id

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    folder = tmp_path / "saliency"
    folder.mkdir()
    (folder / "labels.json").write_text("{}")
    history = [
        {"dev_accuracy": 0.6, "dev_flops_speedup": 1.2},
        {"dev_accuracy": 0.7, "dev_flops_speedup": 1.6},
        {"dev_accuracy": 0.65, "dev_flops_speedup": 2.0},
    ]
    run_id = tracking.log_stage_run(
        config,
        "stage2",
        history,
        artifacts={"extra/notes.txt": notes, "saliency": folder},
        parent_run_id=parent,
        tags={"trial": 3},
    )

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == experiment.experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["adapler.stage"] == "stage2" and run.data.tags["trial"] == "3"
    assert run.data.params["stage2.phi"] == "0.0025"
    assert run.data.params["model.adapler.cp_hidden"] == "32"
    assert json.loads(run.data.params["tune.lrs"]) == [2e-5, 3e-5, 5e-5]
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "dev_accuracy"))
    assert steps == [(0, 0.6), (1, 0.7), (2, 0.65)]
    assert [m.step for m in client.get_metric_history(run_id, "dev_flops_speedup")] == [0, 1, 2]

    logged = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "extra")}
    assert {"config.json", "extra/notes.txt", "saliency"} <= logged
    local = client.download_artifacts(run_id, "config.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == json.loads(json.dumps(config_to_dict(config)))


def test_log_stage_run_without_parent_uses_the_configured_experiment(mlflow_uri, tiny_backbone_dir):
    config = make_config(tiny_backbone_dir)
    config.mlflow.experiment = "stage-runs"
    run_id = tracking.log_stage_run(config, "stage1", [{"train_loss": 1.0}, {"train_loss": 0.5}])
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("stage-runs").experiment_id
    assert "mlflow.parentRunId" not in run.data.tags
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [1.0, 0.5]
    with pytest.raises(TypeError, match="not a number"):
        tracking.log_stage_run(config, "stage1", [{"train_loss": "n/a"}])


# ----------------------------------------------------------------------------------- pure helpers
def test_flatten_config_keys_and_values():
    config = PipelineConfig()
    config.data.train_file = None
    config.name = "x" * 7000
    flat = tracking.flatten_config(config)
    assert flat["stage2.phi"] == str(config.stage2.phi)
    assert flat["model.adapler.beta"] == "0.1"
    assert flat["data.train_file"] == "null"
    assert json.loads(flat["tune.inits"]) == ["pretrained", "finetuned"]
    assert len(flat["name"]) == 6000  # MLflow's limit on a param value
    assert all(isinstance(v, str) for v in flat.values())
    assert tracking.flatten_config({"a b": {"c:d?": [1], "e": {}}}) == {"a b.c_d_": "[1]", "a b.e": "{}"}


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/mlflow.db")
    assert tracking.tracking_uri(MlflowConfig(tracking_uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"
    assert tracking.tracking_uri(MlflowConfig()) == "sqlite:////env/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(MlflowConfig()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    # a relative SQLite path is pinned to this working directory (Ray trials run elsewhere)
    assert (
        tracking.tracking_uri(MlflowConfig(tracking_uri="sqlite:///runs/m.db"))
        == f"sqlite:///{tmp_path.resolve() / 'runs/m.db'}"
    )


def test_pyfunc_input_checks():
    from adapler_pipelines.pyfunc_model import to_frame

    frame = to_frame(pd.DataFrame({"text": ["a", "b"], "text_pair": ["c", np.nan]}))
    assert frame["text_pair"].tolist() == ["c", None]
    assert to_frame(["a"])["text"].tolist() == ["a"]
    assert to_frame(pd.DataFrame({0: ["a"]}))["text"].tolist() == ["a"]  # MLflow's frame of a list
    assert to_frame({"text": ["a"], "text_pair": ["b"]})["text_pair"].tolist() == ["b"]
    with pytest.raises(ValueError, match="'text' column"):
        to_frame(pd.DataFrame({"sentence": ["a"], "other": ["b"]}))
    with pytest.raises(ValueError, match="must be a string"):
        to_frame([None, "a"])


def test_read_run_config_takes_runs_logged_before_champion_challenger(mlflow_uri, tiny_backbone_dir):
    config = make_config(tiny_backbone_dir, phi=0.004)
    client = MlflowClient(mlflow_uri)
    run = client.create_run(tracking.experiment_id(client, "adapler-test", mlflow_uri)).info.run_id
    legacy = config_to_dict(config)
    legacy["mlflow"]["alias"] = "champion"  # the field mlflow.promote replaced
    client.log_text(run, json.dumps(legacy), "config.json")
    assert tracking.read_run_config(mlflow_uri, run).stage2.phi == 0.004
    with pytest.raises(tracking.TrackingError, match="no config.json"):
        tracking.read_run_config(
            mlflow_uri, client.create_run(client.get_experiment_by_name("adapler-test").experiment_id).info.run_id
        )
