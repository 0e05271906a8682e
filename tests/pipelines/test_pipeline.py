"""The pipeline for real on a tiny slice: local Ray (Train, Data, Tune), SQLite MLflow registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from adapler.config import load_config
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.run import run_pipeline
from adapler_pipelines.train import fit_stage


def tiny_overrides(backbone: str, tmp_path: Path, name: str) -> list[str]:
    return [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", f"model.backbone={backbone}",
        "data.source=rotten_tomatoes", "data.limit=48", "data.max_length=32",
        "stage1.epochs=1", "stage1.batch_size=16", "stage1.lr=1e-3",
        "stage2.epochs=1", "stage2.batch_size=16", "stage2.eta_lr=0.1", "stage2.predictor_lr=1e-3",
        "saliency_checkpoints=1", "tune.num_samples=2", "tune.inits=[finetuned]",
        "ray.cpus_per_worker=1", f"ray.storage_path={tmp_path / 'ray'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "mlflow.registered_model=adapler-tiny",
    ]


def test_pipeline_end_to_end_registers_a_champion(ray_local, tiny_backbone_dir, tmp_path):
    config = load_config(None, tiny_overrides(tiny_backbone_dir, tmp_path, "e2e"), cls=PipelineConfig)
    summary = run_pipeline(config)

    assert summary.registered_model == "adapler-tiny"
    assert summary.flops_speedup > 0 and 0.0 <= summary.adapler_test_accuracy <= 1.0
    out = tmp_path / "runs" / "e2e"
    for name in ("config.json", "stage1.json", "summary.json", "report/pareto.csv", "report/pareto.png"):
        assert (out / name).is_file(), name

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    names = {run.info.run_name for run in runs}
    assert {"e2e", "e2e-stage1", "register-adapler-tiny"} <= names
    assert sum(name.startswith("e2e-stage2-") for name in names) == 2  # one run per Tune trial
    version = client.get_model_version_by_alias("adapler-tiny", "champion")
    assert str(version.version) == summary.version

    model = mlflow.pyfunc.load_model("models:/adapler-tiny@champion")
    predictions = model.predict(["a gripping, beautifully made film", "dull and far too long"])
    assert len(predictions) == 2


def test_worker_failure_resumes_from_the_last_checkpoint(ray_local, tiny_backbone_dir, tmp_path):
    # 48 rows / batch 16 = 3 steps per epoch: step 4 is the middle of epoch 1, after epoch 0's checkpoint.
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "chaos") + ["stage1.epochs=2", "ray.fail_once_at_step=4"]
    config = load_config(None, overrides, cls=PipelineConfig)
    marker = Path("/tmp") / "adapler-fail-once-chaos-stage1"
    marker.unlink(missing_ok=True)
    epochs = fit_stage(config, "stage1", "chaos-stage1")

    assert marker.exists(), "the injected failure never fired"
    # Resumed from epoch 0's checkpoint: epoch 0 was not trained (and reported) a second time.
    assert [c.epoch for c in epochs] == [0, 1]
    marker.unlink()


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head(tiny_backbone_dir, tmp_path):
    """`ray start --head`, then `ray job submit -- adapler run`, as on a cluster."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "adapler").exists() or shutil.which("ray", path=str(bin_dir)) is None:
        pytest.skip("needs the installed `adapler` and `ray` commands beside this Python")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "job") + ["tune.num_samples=0"]
    config = load_config(None, overrides, cls=PipelineConfig)
    from adapler.config import config_to_dict

    (job_dir / "job.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    ray = str(bin_dir / "ray")
    subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    subprocess.run(
        [ray, "start", "--head", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         "--dashboard-port=8265", "--disable-usage-stats"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # the head's job agent comes up some seconds after `ray start` returns
            job = subprocess.run(
                [ray, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(job_dir),
                 "--", "adapler", "run", "--config", "job.yaml"],
                env=env, capture_output=True, text=True, timeout=900,
            )
            if "No available agent" not in job.stderr or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    assert str(client.get_model_version_by_alias("adapler-tiny", "champion").version) == "1"
