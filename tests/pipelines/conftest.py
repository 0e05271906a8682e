"""Fixtures for the Ray stages: a tiny random BERT saved as a backbone directory (with the real
MiniLM tokenizer), one local Ray cluster per test module, a throwaway SQLite MLflow store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60 turns token auth on for new local clusters; the tests start their own, in-process.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT with the packaged MiniLM tokenizer: a backbone that trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from adapler.config import default_backbone

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    directory = tmp_path_factory.mktemp("tiny-backbone")
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray cluster for the module (~6 s to start); never one found running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


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


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def tiny_overrides():
    """--set overrides for a pipeline run on a tiny slice with the tiny backbone, all under tmp_path."""

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

    return tiny_overrides
