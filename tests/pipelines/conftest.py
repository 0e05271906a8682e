"""Fixtures for the Ray stages: a tiny random BERT saved as a backbone directory (with the real
MiniLM tokenizer), one local Ray cluster per test module, a throwaway SQLite MLflow store."""

from __future__ import annotations

import os

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


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
