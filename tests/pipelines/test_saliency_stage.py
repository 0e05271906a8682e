"""The Ray Data saliency stage: same labels as the direct computation, keyed by id, resumable,
and checked against the rows when loaded back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adapler.batching import SaliencyMismatch
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.saliency import average_saliency, saliency_for_rows
from adapler_pipelines.saliency import (
    MANIFEST,
    SUCCESS_MARKER,
    SaliencyLabeler,
    compute_saliency,
    fingerprint,
    load_saliency,
)

MAX_LENGTH = 24
WORDS = [
    "the",
    "movie",
    "was",
    "good",
    "bad",
    "great",
    "awful",
    "plot",
    "actors",
    "boring",
    "fun",
    "long",
    "short",
    "story",
    "music",
    "dull",
]


@pytest.fixture(scope="module")
def checkpoints(tiny_backbone_dir, tmp_path_factory) -> list[str]:
    """Two checkpoints of one tiny AdapLeR model; the second with perturbed weights."""
    torch.manual_seed(0)
    model = AdapLeRForSequenceClassification.from_backbone(tiny_backbone_dir, num_labels=2)
    root = tmp_path_factory.mktemp("checkpoints")
    model.save_pretrained(root / "epoch-1")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(root / "epoch-2")
    return [str(root / "epoch-1"), str(root / "epoch-2")]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """40 single-text rows of different lengths (some truncated at MAX_LENGTH)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(40)]
    return pd.DataFrame(
        {
            "id": [f"ex-{i:02d}" for i in range(40)],
            "text": texts,
            "text_pair": pd.Series([None] * 40, dtype=object),
            "label": pd.Series([i % 2 for i in range(40)], dtype="int64"),
        }
    )


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoints[0])


@pytest.fixture(scope="module")
def direct(checkpoints, rows) -> dict[str, np.ndarray]:
    maps = []
    for directory in checkpoints:
        model = AdapLeRForSequenceClassification.from_pretrained(directory)
        maps.append(saliency_for_rows(model, rows, MAX_LENGTH, batch_size=16))
    # The second checkpoint must matter, or the averaging test would prove nothing.
    assert any(not np.allclose(maps[0][i], maps[1][i], atol=1e-4) for i in maps[0])
    return average_saliency(maps)


@pytest.fixture(scope="module")
def computed(ray_local, checkpoints, rows, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("saliency-out")
    # One actor: a second one costs ~10 s of start-up on a 2-core machine. The rows still go
    # out as 5 blocks, processed and written in whatever order Ray picks.
    shuffled = rows.sample(frac=1.0, random_state=1).reset_index(drop=True)
    return Path(compute_saliency(shuffled, checkpoints, MAX_LENGTH, output_dir, num_actors=1, batch_size=8))


def test_labeler_without_ray(checkpoints, rows, direct):
    labeler = SaliencyLabeler(checkpoints, MAX_LENGTH, batch_size=8)
    batch = {column: rows[column].to_numpy()[:5] for column in rows}
    out = labeler(batch)
    assert list(out["id"]) == rows["id"].tolist()[:5]
    for example_id, values in zip(out["id"], out["saliency"]):
        np.testing.assert_allclose(np.asarray(values, dtype=np.float32), direct[example_id], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ray_data_saliency_equals_direct_average(computed, rows, tokenizer, direct):
    assert (computed / SUCCESS_MARKER).is_file()
    table = pq.read_table([str(p) for p in computed.glob("*.parquet")])
    assert table.schema.field("id").type == pa.string()
    saliency_type = table.schema.field("saliency").type
    assert pa.types.is_list(saliency_type) and saliency_type.value_type == pa.float32()
    assert table.num_rows == len(rows)
    loaded = load_saliency(computed, rows, tokenizer, MAX_LENGTH)
    assert set(loaded) == set(direct) == set(rows["id"])
    for example_id, expected in direct.items():
        assert loaded[example_id].dtype == np.float32
        np.testing.assert_allclose(loaded[example_id], expected, rtol=1e-5, atol=1e-5, err_msg=example_id)


@pytest.mark.slow
def test_second_run_reuses_result(computed, checkpoints, rows, caplog):
    manifest = (computed / MANIFEST).read_text()
    assert '"num_rows": 40' in manifest
    mtimes = {p.name: p.stat().st_mtime_ns for p in computed.iterdir()}
    reordered = rows.iloc[::-1].reset_index(drop=True)
    with caplog.at_level(logging.INFO, logger="adapler_pipelines.saliency"):
        again = compute_saliency(reordered, list(reversed(checkpoints)), MAX_LENGTH, computed.parent, num_actors=2)
    assert Path(again) == computed
    assert {p.name: p.stat().st_mtime_ns for p in computed.iterdir()} == mtimes
    assert any("reusing" in record.getMessage() for record in caplog.records)
    assert not [p for p in computed.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_fingerprint_follows_inputs(checkpoints, rows, tmp_path):
    base = fingerprint(rows, checkpoints, MAX_LENGTH)
    assert fingerprint(rows.sample(frac=1.0, random_state=3), checkpoints, MAX_LENGTH) == base
    moved = tmp_path / "moved"
    shutil.copytree(checkpoints[0], moved)
    assert fingerprint(rows, [str(moved), checkpoints[1]], MAX_LENGTH) == base

    relabelled = rows.copy()
    relabelled.loc[3, "label"] = 1 - relabelled.loc[3, "label"]
    assert fingerprint(relabelled, checkpoints, MAX_LENGTH) != base
    assert fingerprint(rows, [checkpoints[0], checkpoints[0]], MAX_LENGTH) != base
    assert fingerprint(rows, checkpoints, MAX_LENGTH + 1) != base
    edited = rows.copy()
    edited.loc[0, "text"] = edited.loc[0, "text"] + " fun"
    assert fingerprint(edited, checkpoints, MAX_LENGTH) != base


def test_split_rows_gives_every_actor_blocks(rows):
    from adapler_pipelines.saliency import _split_rows

    blocks = _split_rows(rows, num_actors=2, batch_size=4)
    assert len(blocks) >= 2 and all(len(b) % 4 == 0 for b in blocks[:-1])
    assert pd.concat(blocks)["id"].tolist() == rows["id"].tolist()
    assert len(_split_rows(rows, num_actors=1, batch_size=64)) == 1


def _write(path: Path, ids: list[str], values: list[np.ndarray]) -> Path:
    path.mkdir()
    table = pa.table({"id": ids, "saliency": pa.array([v.tolist() for v in values], type=pa.list_(pa.float32()))})
    pq.write_table(table, path / "part-0.parquet")
    return path


def test_load_saliency_rejects_missing_id(rows, tokenizer, direct, tmp_path):
    ids = [i for i in rows["id"] if i != "ex-07"] + ["extra-id"]
    path = _write(tmp_path / "missing", ids, [direct.get(i, np.ones(3, np.float32)) for i in ids])
    with pytest.raises(SaliencyMismatch, match="ex-07") as error:
        load_saliency(path, rows, tokenizer, MAX_LENGTH)
    assert str(path) in str(error.value)
    # The rows without ex-07 load fine, and the extra id in the file is ignored.
    loaded = load_saliency(path, rows[rows["id"] != "ex-07"], tokenizer, MAX_LENGTH)
    assert "extra-id" not in loaded and len(loaded) == 39


def test_load_saliency_rejects_wrong_length(rows, tokenizer, direct, tmp_path):
    ids = rows["id"].tolist()
    values = [np.append(direct[i], 0.5).astype(np.float32) if i == "ex-12" else direct[i] for i in ids]
    path = _write(tmp_path / "wrong-length", ids, values)
    with pytest.raises(SaliencyMismatch, match="ex-12") as error:
        load_saliency(path, rows, tokenizer, MAX_LENGTH)
    assert str(path) in str(error.value)
    # Labels computed with another max_length do not pass either.
    good = _write(tmp_path / "good", ids, [direct[i] for i in ids])
    with pytest.raises(SaliencyMismatch, match="max_length=12"):
        load_saliency(good, rows, tokenizer, 12)


def test_load_saliency_rejects_duplicate_ids(rows, tokenizer, direct, tmp_path):
    ids = rows["id"].tolist() + ["ex-05"]
    path = _write(tmp_path / "duplicate", ids, [direct[i] for i in ids])
    with pytest.raises(SaliencyMismatch, match="duplicate ids: 'ex-05'"):
        load_saliency(path, rows, tokenizer, MAX_LENGTH)
