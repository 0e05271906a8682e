"""Shared fixtures: the packaged MiniLM tokenizer, a tiny random BERT wrapped in AdapLeR, row frames,
throwaway SQLite MLflow stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402

from adapler.config import default_backbone  # noqa: E402
from adapler.modeling import AdapLeRForSequenceClassification  # noqa: E402

# The models here are tiny: with several intra-op threads, every small op waits on the thread pool,
# and on a shared 2-core machine that turns a 2 s run into 40 s. One thread is fastest.
torch.set_num_threads(int(os.environ.get("ADAPLER_TEST_THREADS", "1")))

# Real sentences of very different lengths (token counts 4 .. ~40 with the MiniLM tokenizer).
SENTENCES = [
    "A gripping, beautifully acted film.",
    "Dull.",
    "The plot wanders for two hours, the dialogue is stiff, and not even the excellent score "
    "can rescue a story that never decides what it wants to be or why we should care about it.",
    "I laughed, I cried, and then I went to see it again with my whole family on Sunday.",
    "Not bad at all.",
]


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports (--runtime onnx) go to this session's temporary folder, not ~/.cache."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    os.environ["ADAPLER_ONNX_CACHE"] = str(cache)  # before any Ray worker starts: they inherit it
    return cache


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store, migrated once per session: a fresh store runs MLflow's schema
    migrations on first use (10 s and more on two busy cores), a copy of this one does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
    return path


@pytest.fixture(scope="session")
def mlflow_store(mlflow_template):
    """``mlflow_store(path)``: the URI of a SQLite store at ``path``, started as a copy of the
    migrated template unless a store is there already (a test may open its store twice)."""

    def store(path: Path) -> str:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mlflow_template, path)
        return f"sqlite:///{path}"

    return store


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch, mlflow_store) -> str:
    """The test's own store (``tmp_path/mlflow.db``), also in $MLFLOW_TRACKING_URI."""
    uri = mlflow_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone())


def spread_predictors(model: AdapLeRForSequenceClassification) -> None:
    """Redraw the CPs with PyTorch's default Linear init (uniform, +-1/sqrt(fan_in)).

    The authors' init (normal, std initializer_range = 0.02) makes a random CP score every token
    nearly alike, so nothing would leave; tests of the removal mechanics need random CPs whose
    scores spread, as trained ones do.
    """
    for predictor in model.predictors:
        for module in predictor.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()


def make_tiny_model(
    tokenizer, seed: int = 0, num_labels: int = 3, spread_cps: bool = True, **settings
) -> AdapLeRForSequenceClassification:
    """A seeded, random 3-layer BERT (hidden 32) with the MiniLM tokenizer, in eval mode.

    spread_cps: random CPs that really remove tokens (:func:`spread_predictors`); False keeps
    the authors' near-uniform initial CPs (a training run's start)."""
    from adapler.config import AdapLeRSettings

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
        attn_implementation="sdpa",
    )
    backbone = BertForSequenceClassification(config)
    cp_draws = torch.get_rng_state()
    model = AdapLeRForSequenceClassification(backbone, AdapLeRSettings(**settings), tokenizer=tokenizer)
    if spread_cps:
        torch.set_rng_state(cp_draws)  # the very values nn.Linear's own init drew for these CPs
        spread_predictors(model)
    return model.eval()


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


@pytest.fixture(scope="session")
def save_review_model():
    """Save a 2-label model as a Rotten Tomatoes classifier (labels rotten/fresh, max length 64)."""

    def save(model: AdapLeRForSequenceClassification, directory) -> str:
        model.backbone.config.id2label = {0: "rotten", 1: "fresh"}
        model.backbone.config.label2id = {"rotten": 0, "fresh": 1}
        model.tokenizer.model_max_length = 64
        model.save_pretrained(directory)
        return str(directory)

    return save


@pytest.fixture(scope="session")
def spread_cps():
    """:func:`spread_predictors`, for test modules (they do not import conftest)."""
    return spread_predictors


@pytest.fixture(scope="session")
def tiny_model_factory(tokenizer):
    return lambda seed=0, **kw: make_tiny_model(tokenizer, seed=seed, **kw)


@pytest.fixture(scope="session")
def _minilm_session():
    torch.manual_seed(0)
    model = AdapLeRForSequenceClassification.from_backbone(default_backbone(), num_labels=2)
    return model.eval()


@pytest.fixture
def minilm(_minilm_session):
    """The packaged MiniLM-L6 (random head and CPs, seeded), eval mode; etas and CPs restored after the test."""
    model = _minilm_session
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("predictors") or k == "etas"}
    yield model.eval()
    with torch.no_grad():
        state = model.state_dict()
        for k, v in saved.items():
            state[k].copy_(v)


def rows_frame(texts, labels=None, ids=None) -> pd.DataFrame:
    """Rows as adapler.data produces them: id, text, text_pair (None), label."""
    n = len(texts)
    labels = list(labels) if labels is not None else [i % 3 for i in range(n)]
    ids = list(ids) if ids is not None else [f"ex{i}" for i in range(n)]
    return pd.DataFrame({"id": ids, "text": list(texts), "text_pair": [None] * n, "label": labels})


@pytest.fixture
def make_rows():
    return rows_frame


@pytest.fixture
def sentences():
    return list(SENTENCES)


@pytest.fixture
def sentence_batch(tokenizer):
    """A padded batch of real sentences of different lengths."""
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
