"""Fixtures for the Ray stages: a tiny random BERT saved as a backbone directory (with the real
MiniLM tokenizer), one local Ray cluster per test module (or a cluster of two nodes on this
machine), pipeline overrides for a tiny run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from helpers import TINY_RUN, save_tiny_backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60 turns token auth on for new local clusters; the tests start their own, in-process.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> str:
    """A tiny BERT with the packaged MiniLM tokenizer: a backbone that trains in seconds."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))


@pytest.fixture(scope="session")
def still_backbone_dir(tmp_path_factory) -> str:
    """The tiny BERT with dropout off: two runs of the same recipe differ only by float rounding."""
    return save_tiny_backbone(
        tmp_path_factory.mktemp("still-backbone"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray cluster for the module (~6 s to start); never one found running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cluster_env() -> dict:
    """Extra environment for every node of `two_node_cluster` (a module overrides this fixture,
    e.g. with S3 credentials, which the nodes' workers then read as on a real cluster)."""
    return {}


@pytest.fixture(scope="module")
def two_node_cluster(cluster_env):
    """Two Ray nodes on this machine, 2 CPUs each, for the scale-out tests of a module (~20 s):
    tests/local_cluster.py (`ray start --head` and `ray start --address`, own temp dirs
    and ports, stopped by process group), this process their driver."""
    import logging

    from local_cluster import RAY_CLI, local_cluster

    # Ray Data's usage poller (a daemon thread of the driver, polling every 10 s once a dataset
    # ran) logs each failed Prometheus query at debug level with a traceback; after pytest has
    # closed its streams that logging fails loudly at exit. Its debug lines say nothing here.
    logging.getLogger("ray.data._internal.usage").setLevel(logging.INFO)
    if not RAY_CLI.exists():
        pytest.skip("needs the `ray` command beside this Python")
    with local_cluster(nodes=2, cpus_per_node=2, env=cluster_env) as nodes:
        yield nodes


@contextlib.contextmanager
def restored_mlflow_globals():
    """setup_mlflow (called by register_model) sets MLflow's process-wide tracking / registry URI
    and experiment, and mirrors them into os.environ; put them back so that later tests (other
    modules too) do not write into a store that is gone."""
    import mlflow
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            if var in os.environ:
                mp.setenv(var, os.environ[var])  # records the value to restore
            else:
                mp.delenv(var, raising=False)
        mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        try:
            yield
        finally:
            while mlflow.active_run():
                mlflow.end_run()


@pytest.fixture(scope="session")
def mlflow_globals_restored():
    """The context manager above, for module-scoped fixtures that register models."""
    return restored_mlflow_globals


@pytest.fixture
def isolated_mlflow():
    """Use with pytest.mark.usefixtures in modules that call setup_mlflow / register_model."""
    with restored_mlflow_globals():
        yield


@pytest.fixture(scope="session")
def tiny_overrides(mlflow_store):
    """--set overrides for a pipeline run on a tiny slice with the tiny backbone, all under tmp_path
    (its MLflow store a copy of the migrated template)."""

    def tiny_overrides(backbone: str, tmp_path: Path, name: str) -> list[str]:
        return [
            f"name={name}",
            f"output_dir={tmp_path / 'runs'}",
            f"model.backbone={backbone}",
            *TINY_RUN,
            "tune.num_samples=2",
            "tune.inits=[finetuned]",
            "ray.cpus_per_worker=1",
            f"ray.storage_path={tmp_path / 'ray'}",
            f"mlflow.tracking_uri={mlflow_store(tmp_path / 'mlflow.db')}",
            "mlflow.registered_model=adapler-tiny",
        ]

    return tiny_overrides
