"""`ray job submit` against a real local head node, as on a cluster (its own module: `ray stop`
ends every Ray process on the machine, so no other test's cluster may be up meanwhile)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from adapler.config import config_to_dict, load_config
from adapler_pipelines.config import PipelineConfig


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head(tiny_backbone_dir, tiny_overrides, tmp_path):
    """`ray start --head`, then `ray job submit -- adapler run`, as on a cluster."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "adapler").exists() or shutil.which("ray", path=str(bin_dir)) is None:
        pytest.skip("needs the installed `adapler` and `ray` commands beside this Python")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "job") + ["tune.num_samples=0"]
    config = load_config(None, overrides, cls=PipelineConfig)
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
