"""`ray job submit` against a real local head node, as on a cluster.

The head is `ray start --head --block` in a process group of its own, on free ports, and it is
ended by signalling that group: never `ray stop`, which ends every Ray instance on the machine
(a pipeline that a developer runs beside the tests included)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
    gcs, dashboard, agent = _free_ports(3)
    # its own temp dir (short: Ray's socket paths must fit 107 bytes), so that the address file
    # /tmp/ray/ray_current_cluster of other Ray instances is left alone
    temp_dir = tempfile.mkdtemp(prefix="ray-job-test-", dir="/tmp")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # the head's job server and agent come up some seconds after the start
            job = subprocess.run(
                [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(job_dir),
                 "--", "adapler", "run", "--config", "job.yaml"],
                env=env, capture_output=True, text=True, timeout=900,
            )
            not_up = "No available agent" in job.stderr or "Failed to connect" in job.stderr
            if not not_up or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(5)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    assert str(client.get_model_version_by_alias("adapler-tiny", "champion").version) == "1"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (raylet, GCS, dashboard, workers), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(2)  # the group's other processes end after their parent
