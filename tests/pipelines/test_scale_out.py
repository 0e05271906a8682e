"""Scale-out on one machine: a Ray cluster of two nodes (2 CPUs each), data-parallel stages on
two workers (one per node), saliency over two actors, storage in a real S3-compatible server
(moto, on 127.0.0.1), and `ray job submit` against the cluster.

The two-worker stages are compared with the same loop run alone (``run_stage`` in this process,
world size 1): with dropout off, the same seed and the same global batch, the two runs see the
same rows in the same steps (adapler.batching.LengthGroupedBatches forms the global batches
whatever the number of replicas, and the workers' halves of a step are the rows of the lone
run's step), and DDP averages the gradients of equal halves, which is the gradient of the
whole batch. What is left is float32 rounding: each worker pads its half to its own longest
row, and the all-reduce sums in its own order. Measured over the 6 steps of each stage here
(with the DistributedSampler the loop had before): equal losses in stage 1, 1e-7 relative in
stage 2. The tolerance, 1e-4 relative, leaves 1000x that, and stays well under what
a changed recipe does: each worker loading the whole batch_size (a doubled global batch, half
the steps) moves the first epoch's loss by 1.5e-3 relative. A dev prediction may flip where a
logit margin is of rounding size, so dev accuracy may differ by one example (1/48).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chaos import HOOK
from chaos import marker as chaos_marker

from adapler.batching import make_loader
from adapler.config import ConfigError, load_config
from adapler.data import load_data
from adapler.evaluate import evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.run_layout import CHECKPOINT_MODEL_SUBDIR
from adapler_pipelines.config import PipelineConfig, worker_batch_size
from adapler_pipelines.saliency import SUCCESS_MARKER, compute_saliency, load_saliency
from adapler_pipelines.storage import join, local_copy
from adapler_pipelines.train import STATE_FILE, fit_stage, run_stage

BUCKET = "adapler-test"
DEV_ROWS = 48  # data.limit in tiny_overrides: every split has 48 rows
LOSS_RTOL = 1e-4  # see the module docstring
TWO_WORKERS = ["ray.num_workers=2", "ray.placement_strategy=SPREAD"]


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port), its credentials and endpoint in the
    environment of this process and, through cluster_env, of every Ray node."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    server.stop()


@pytest.fixture(scope="module")
def cluster_env(s3_server) -> dict:
    return s3_server


@pytest.fixture(scope="module")
def scale_config(still_backbone_dir, tiny_overrides, tmp_path_factory) -> PipelineConfig:
    tmp = tmp_path_factory.mktemp("scale")
    overrides = tiny_overrides(still_backbone_dir, tmp, "scale") + TWO_WORKERS + ["stage1.epochs=2", "stage2.epochs=2"]
    return load_config(None, overrides, cls=PipelineConfig)


@pytest.fixture(scope="module")
def stage1_two_workers(two_node_cluster, scale_config):
    return fit_stage(scale_config, "stage1", "scale-stage1")


@pytest.fixture(scope="module")
def saliency_one_actor(stage1_two_workers, scale_config, tmp_path_factory) -> str:
    data = load_data(scale_config)
    best = stage1_two_workers[-1]
    return compute_saliency(
        data.train,
        [join(best.path, CHECKPOINT_MODEL_SUBDIR)],
        scale_config.data.max_length,
        tmp_path_factory.mktemp("saliency-1"),
        num_actors=1,
        batch_size=8,
    )


def alone(config: PipelineConfig, stage: str, **kwargs) -> list[dict]:
    """The same stage's loop in this process, one worker, no Ray: its per-epoch metrics."""
    history: list[dict] = []
    run_stage(config, stage, lambda metrics, _directory: history.append(metrics), **kwargs)
    return history


def assert_agree(two: list[dict], one: list[dict], losses: tuple[str, ...]) -> None:
    assert [m["epoch"] for m in two] == [m["epoch"] for m in one]
    for epoch, (a, b) in enumerate(zip(two, one)):
        for key in losses:
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL), (epoch, key, a[key], b[key])
        assert abs(a["dev_accuracy"] - b["dev_accuracy"]) <= 1 / DEV_ROWS + 1e-9, (epoch, a, b)
        # the whole dev split on both sides (a worker's half would have another mean length)
        assert a["dev_mean_input_length"] == pytest.approx(b["dev_mean_input_length"], rel=1e-9)


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_the_cluster_has_two_nodes_with_their_own_cpus(two_node_cluster):
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert sorted(node["NodeID"] for node in nodes) == sorted(two_node_cluster.node_ids)
    assert [node["Resources"]["CPU"] for node in nodes] == [two_node_cluster.cpus_per_node] * 2


def test_batch_size_is_the_global_batch():
    assert worker_batch_size(32, 4) == 8
    with pytest.raises(ConfigError, match="stage1.batch_size=16 is the global batch .* ray.num_workers=3"):
        load_config(None, ["stage1.batch_size=16", "ray.num_workers=3"], cls=PipelineConfig)


def test_an_indivisible_batch_is_one_line_from_the_cli(capsys):
    from adapler_cli.main import main

    assert main(["run", "--config", "demo", "--set", "ray.num_workers=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapler: error: stage1.batch_size=32 is the global batch") and "\n" not in err


@pytest.mark.slow
def test_stage1_on_two_nodes_agrees_with_one_worker(stage1_two_workers, scale_config, two_node_cluster):
    epochs = stage1_two_workers
    assert [c.epoch for c in epochs] == [0, 1]
    assert all(sorted(c.nodes) == sorted(two_node_cluster.node_ids) for c in epochs)  # one worker per node
    # one checkpoint per epoch, written by rank 0 alone: the model and the state, nothing else
    for checkpoint in epochs:
        assert sorted(p.name for p in Path(checkpoint.path).iterdir()) == [CHECKPOINT_MODEL_SUBDIR, STATE_FILE]
    assert len(list(Path(scale_config.ray.storage_path).glob(f"scale-stage1-*/**/{STATE_FILE}"))) == 2
    # dev metrics are those of the whole dev split, computed once: the checkpoint evaluated here agrees
    data = load_data(scale_config)
    model = AdapLeRForSequenceClassification.from_pretrained(Path(epochs[-1].path) / CHECKPOINT_MODEL_SUBDIR)
    whole = evaluate(model, make_loader(data.dev, model.tokenizer, 16, scale_config.data.max_length), removal="none")
    assert whole.num_examples == DEV_ROWS
    assert epochs[-1].metrics["dev_accuracy"] == pytest.approx(whole.accuracy, abs=1e-9)

    assert_agree([c.metrics for c in epochs], alone(scale_config, "stage1"), ("train_loss",))


@pytest.mark.slow
def test_stage2_under_ddp_on_two_nodes_agrees_with_one_worker(stage1_two_workers, saliency_one_actor, scale_config):
    init = join(stage1_two_workers[-1].path, CHECKPOINT_MODEL_SUBDIR)
    reference = stage1_two_workers[-1].metrics["dev_accuracy"]
    common = dict(init_dir=init, saliency_path=saliency_one_actor, reference_dev_score=reference)
    epochs = fit_stage(scale_config, "stage2", "scale-stage2", **common)
    assert len(set(epochs[-1].nodes)) == 2
    two, one = [c.metrics for c in epochs], alone(scale_config, "stage2", **common)
    assert_agree(two, one, ("train_loss", "train_ce", "train_kl"))
    for a, b in zip(two, one):
        assert a["dev_flops_speedup"] == pytest.approx(b["dev_flops_speedup"], rel=LOSS_RTOL)
        for layer in (1, 2):
            assert a[f"eta_layer{layer}"] == pytest.approx(b[f"eta_layer{layer}"], rel=LOSS_RTOL)


@pytest.mark.slow
def test_two_saliency_actors_give_the_labels_of_one(saliency_one_actor, stage1_two_workers, scale_config, tmp_path):
    data = load_data(scale_config)
    shuffled = data.train.sample(frac=1.0, random_state=7).reset_index(drop=True)  # other blocks, other order
    best = stage1_two_workers[-1]
    two = compute_saliency(
        shuffled,
        [join(best.path, CHECKPOINT_MODEL_SUBDIR)],
        scale_config.data.max_length,
        tmp_path,
        num_actors=2,
        batch_size=4,
    )
    assert Path(two, SUCCESS_MARKER).is_file()
    tokenizer = AdapLeRForSequenceClassification.from_pretrained(Path(best.path) / CHECKPOINT_MODEL_SUBDIR).tokenizer
    one_labels = load_saliency(saliency_one_actor, data.train, tokenizer, scale_config.data.max_length)
    two_labels = load_saliency(two, data.train, tokenizer, scale_config.data.max_length)
    assert sorted(two_labels) == sorted(one_labels) == sorted(data.train["id"].astype(str))
    for example_id, values in one_labels.items():
        np.testing.assert_allclose(two_labels[example_id], values, rtol=1e-5, atol=1e-6, err_msg=example_id)


def _bucket_keys(prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.slow
def test_pipeline_with_storage_in_s3_and_a_failing_worker(
    two_node_cluster, tiny_backbone_dir, tiny_overrides, tmp_path, isolated_mlflow
):
    """ray.storage_path and MLflow's artefacts in one bucket; a worker fails once mid-epoch."""
    from mlflow import MlflowClient

    from adapler_pipelines.model_source import resolve_model
    from adapler_pipelines.run import run_pipeline

    storage = f"s3://{BUCKET}/adapler"
    overrides = (
        tiny_overrides(tiny_backbone_dir, tmp_path, "s3run")
        + TWO_WORKERS
        + [
            "stage1.epochs=2",
            f"ray.loader_hook={HOOK}",
            "tune.num_samples=1",
            f"ray.storage_path={storage}",
            f"mlflow.artifact_location={storage}/mlflow",
            "mlflow.experiment=adapler-s3",
            "mlflow.promote=always",  # @champion whether or not the tiny model's run warns: storage is the subject
        ]
    )
    config = load_config(None, overrides, cls=PipelineConfig)
    marker = chaos_marker(config.name)
    marker.unlink(missing_ok=True)
    summary = run_pipeline(config)

    assert marker.exists(), "the injected failure never fired"
    marker.unlink()
    keys = _bucket_keys("adapler/")
    states = [k for k in keys if k.startswith("adapler/s3run-stage1-") and k.endswith(f"/{STATE_FILE}")]
    # resumed from epoch 0's checkpoint in the bucket: epoch 0 was not trained (and saved) twice
    assert len(states) == 2, states
    stage1 = json.loads((Path(summary.run_dir) / "stage1.json").read_text())
    assert stage1["checkpoints"][0]["path"].startswith(f"{storage}/s3run-stage1-")
    assert stage1["saliency_path"].startswith(f"{storage}/s3run/saliency/saliency-")
    saliency = stage1["saliency_path"].removeprefix(f"s3://{BUCKET}/")
    assert f"{saliency}/{SUCCESS_MARKER}" in keys and any(
        k.startswith(saliency) and k.endswith(".parquet") for k in keys
    )
    assert any(k.startswith("adapler/s3run-tune/") for k in keys)  # Tune's results and trial checkpoints
    model_files = [k for k in keys if k.startswith("adapler/mlflow/") and k.endswith("/model.safetensors")]
    assert model_files, "the registered model is not in the bucket"
    assert not (tmp_path / "mlartifacts").exists()

    # `adapler serve` / predict resolve the registered model from the bucket
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    assert client.get_experiment_by_name("adapler-s3").artifact_location == f"{storage}/mlflow"
    directory = resolve_model("models:/adapler-tiny@champion", config.mlflow.tracking_uri)
    assert (directory / "model.safetensors").read_bytes() == Path(summary.model_dir, "model.safetensors").read_bytes()
    stage1_run = stage1["checkpoints"][0]["path"].rsplit("/", 1)[0]
    assert local_copy(stage1_run) != stage1_run


@pytest.mark.slow
def test_ray_job_submit_runs_the_demo_on_both_nodes(two_node_cluster, tiny_backbone_dir, tiny_overrides, tmp_path):
    """`ray job submit --working-dir . -- adapler demo ...` against the two-node cluster."""
    from mlflow import MlflowClient

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "adapler").exists():
        pytest.skip("needs the installed `adapler` command beside this Python")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    overrides = (
        tiny_overrides(tiny_backbone_dir, tmp_path, "job")
        + TWO_WORKERS
        + ["tune.num_samples=0", "mlflow.promote=always"]
    )  # @champion whether or not the tiny model's run warns
    job = subprocess.run(
        [
            str(bin_dir / "ray"),
            "job",
            "submit",
            "--address",
            two_node_cluster.dashboard,
            "--working-dir",
            ".",
            "--",
            "adapler",
            "demo",
            *[arg for item in overrides for arg in ("--set", item)],
        ],
        cwd=job_dir,
        env=two_node_cluster.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    for node in two_node_cluster.node_ids:  # the driver names the nodes that did the work
        assert f"node {node[:8]}" in job.stdout, job.stdout[-3000:]
    assert "stage1 on 2 worker(s) on 2 node(s)" in job.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert str(MlflowClient(uri, uri).get_model_version_by_alias("adapler-tiny", "champion").version) == "1"
