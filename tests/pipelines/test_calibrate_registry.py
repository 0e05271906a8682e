"""`adapler calibrate --model models:/<name>@<alias>`: the calibrated model becomes a new version
of the same registered model, with the curve in MLflow, and no alias moves unless asked."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from adapler.modeling import AdapLeRForSequenceClassification
from adapler_cli.main import main
from adapler_pipelines import registry
from adapler_pipelines.config import MlflowConfig, PipelineConfig

DATA = ["--data", "rotten_tomatoes", "--set", "limit=20"]
NAME = "adapler-tiny"


# setup_mlflow (register_model) sets MLflow's process-wide URIs and experiment: put them back.
pytestmark = pytest.mark.usefixtures("isolated_mlflow")


@pytest.fixture
def registered(mlflow_uri, tiny_backbone_dir, tmp_path) -> dict:
    """Version 1 of adapler-tiny, alias champion: a tiny model with the Rotten Tomatoes labels."""
    torch.manual_seed(0)
    model = AdapLeRForSequenceClassification.from_backbone(
        tiny_backbone_dir, num_labels=2, label_names=["rotten", "fresh"]
    )
    with torch.no_grad():  # uneven CP scores: the speedup grows gradually with the factor
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
    model.tokenizer.model_max_length = 64
    model.save_pretrained(tmp_path / "model")
    config = PipelineConfig()
    config.model.backbone = tiny_backbone_dir
    config.mlflow = MlflowConfig(tracking_uri=mlflow_uri, experiment="adapler-test")
    _, version = registry.register_model(tmp_path / "model", config, {"dev_accuracy": 0.5}, NAME, alias="champion")
    assert version == "1"
    return {"uri": mlflow_uri, "etas": model.etas.detach().clone(), "backbone": tiny_backbone_dir}


@pytest.mark.slow
def test_calibrated_model_is_a_new_version_with_its_curve(registered, tmp_path, capsys):
    uri = registered["uri"]
    argv = ["calibrate", "--model", f"models:/{NAME}@champion", "--tracking-uri", uri, *DATA, "--target-speedup", "2.5"]
    assert main([*argv, "--set-alias", "calibrated"]) == 0
    assert f"registered: {NAME} version 2 (alias calibrated)" in capsys.readouterr().out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # not moved
    assert str(client.get_model_version_by_alias(NAME, "calibrated").version) == "2"
    version = client.get_model_version(NAME, "2")
    factor = float(version.tags["calibration_factor"])
    assert factor > 1 and version.tags["calibrated_from"] == "1"
    assert version.tags["calibration_goal"] == "target_speedup=2.5"
    assert version.tags["calibration_data"] == "rotten_tomatoes dev (20 examples)"
    assert float(version.tags["flops_speedup"]) == float(version.tags["dev_flops_speedup"]) >= 2.5
    assert 0 <= float(version.tags["dev_accuracy"]) <= 1
    assert version.tags["backbone"] == registered["backbone"]  # carried over from the source's config
    assert "calibrated from version 1" in version.description

    # The calibrated weights: the source's etas times the factor, nothing else touched.
    directory = registry.download_model_dir(NAME, "calibrated", dst_path=tmp_path / "dl", uri=uri)
    etas = AdapLeRForSequenceClassification.from_pretrained(directory).etas.detach()
    torch.testing.assert_close(etas, registered["etas"] * factor)

    # The curve: a calibrate run (the registration run's parent) with the csv, png and metrics.
    calibrate_run = client.get_run(client.get_run(version.run_id).data.tags["mlflow.parentRunId"])
    assert calibrate_run.data.tags["adapler.stage"] == "calibrate"
    assert {a.path for a in client.list_artifacts(calibrate_run.info.run_id, "calibration")} == {
        "calibration/curve.csv",
        "calibration/curve.png",
    }
    curve = pd.read_csv(client.download_artifacts(calibrate_run.info.run_id, "calibration/curve.csv", str(tmp_path)))
    assert list(curve.columns) == ["factor", "accuracy", "flops_speedup", "examples_per_s", "chosen"]
    assert curve.factor.is_monotonic_increasing and len(curve) >= 4 and curve.chosen.sum() == 1
    assert curve[curve.chosen].factor.item() == pytest.approx(factor, rel=1e-5)
    history = client.get_metric_history(calibrate_run.info.run_id, "dev_flops_speedup")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(curve.flops_speedup.tolist())

    # Without --set-alias no alias moves at all.
    assert main([*argv[:-2], "--max-drop", "0"]) == 0  # the goal swapped: --target-speedup 2.5 out
    assert "version 3 (no alias moved; champion unchanged)" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert not client.get_model_version(NAME, "3").aliases


def test_unknown_registered_model_is_one_line_exit_2(mlflow_uri, capsys):
    assert (
        main(
            [
                "calibrate",
                "--model",
                "models:/no-such-model@champion",
                "--tracking-uri",
                mlflow_uri,
                *DATA,
                "--max-drop",
                "0.01",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "adapler: error: no registered model 'no-such-model'" in err and "Traceback" not in err


def test_points_round_trip_through_the_registry(registered, tmp_path, capsys):
    """`calibrate --points` on a registered model: a new version with the same etas and the points
    in its config.json, the curve in MLflow, the points as tags; the pyfunc takes a point."""
    uri = registered["uri"]
    assert (
        main(
            [
                "calibrate",
                "--model",
                f"models:/{NAME}@champion",
                "--tracking-uri",
                uri,
                *DATA,
                "--points",
                "--set-alias",
                "points",
            ]
        )
        == 0
    )
    assert f"registered: {NAME} version 2 (alias points)" in capsys.readouterr().out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(NAME, "2")
    directory = registry.download_model_dir(NAME, "points", dst_path=tmp_path / "dl", uri=uri)
    model = AdapLeRForSequenceClassification.from_pretrained(directory)
    torch.testing.assert_close(model.etas.detach(), registered["etas"])  # the weights as they were
    points = model.operating_points
    assert set(points.named) == {"accurate", "balanced", "fast"}
    for name, factor in points.named.items():
        assert float(version.tags[f"point.{name}.factor"]) == pytest.approx(factor, rel=1e-5)
    assert version.tags["operating_points"].startswith("accurate (factor ")
    assert "operating points added from version 1" in version.description

    calibrate_run = client.get_run(client.get_run(version.run_id).data.tags["mlflow.parentRunId"])
    assert {a.path for a in client.list_artifacts(calibrate_run.info.run_id, "operating_points")} == {
        "operating_points/curve.csv",
        "operating_points/curve.png",
    }
    curve = pd.read_csv(
        client.download_artifacts(calibrate_run.info.run_id, "operating_points/curve.csv", str(tmp_path)),
        keep_default_na=False,
    )
    assert curve.factor.tolist() == pytest.approx([p.factor for p in points.curve])
    named = {name: f for names, f in zip(curve.point, curve.factor) if names for name in names.split("/")}
    assert named == pytest.approx(dict(points.named))

    # The registered pyfunc takes the point as a param or as a column, and says which ran.
    texts = ["A gripping, beautifully acted film.", "Dull, and far too long.", "Not bad at all, really."]
    pyfunc = registry.load_champion(NAME, "points", uri)
    default = pyfunc.predict(texts)
    assert list(default.operating_point) == ["default"] * 3 and list(default.eta_factor) == [1.0] * 3
    fast = pyfunc.predict(texts, params={"operating_point": "fast"})
    assert list(fast.operating_point) == ["fast"] * 3
    assert list(fast.eta_factor) == pytest.approx([points.named["fast"]] * 3)
    assert fast.kept_tokens.sum() < default.kept_tokens.sum()
    mixed = pyfunc.predict(
        pd.DataFrame({"text": texts, "operating_point": ["fast", None, "accurate"]}), params={"factor": 1.0}
    )
    assert list(mixed.operating_point) == ["fast", "factor=1", "accurate"]
    assert mixed.kept_tokens[0] == fast.kept_tokens[0] and mixed.kept_tokens[1] == default.kept_tokens[1]
    with pytest.raises(ValueError, match="unknown operating point 'turbo'; stored points: accurate"):
        pyfunc.predict(texts, params={"operating_point": "turbo"})
