"""Users' data files with arbitrary columns and cell values (Hypothesis): CSV and JSON lines
become splits, or a DataError whose one line names the file, never another exception (a
traceback in the CLI)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapler.data import DataError, DatasetSplits, load_splits

PROPERTY = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
COLUMNS = ["text", "label", "id", "pair"]
column_names = st.sampled_from(COLUMNS) | st.text(max_size=6)
# Cells of every kind: texts with lone surrogates, line breaks, whitespace only; JSON numbers
# beyond the float range and of more than 4,300 digits are written by hand (json.dumps can not).
tricky = st.sampled_from(["", "  ", "\ud800", "x\udc00", "a\nb", "1", "1.0", "NA", "null", "-3"])
texts = st.text(max_size=20) | tricky
json_cells = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)


def write(path: Path, content: str) -> Path:
    # surrogatepass: a lone surrogate in a cell becomes bytes that are not UTF-8
    path.write_bytes(content.encode("utf-8", "surrogatepass"))
    return path


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def check(path: Path, **columns) -> None:
    try:
        splits = load_splits("files", train_file=path, **columns)
    except DataError as err:
        message = str(err).strip()
        assert message and len(message.splitlines()) == 1, message
        assert str(path) in message, message  # names the file
        return
    assert isinstance(splits, DatasetSplits)
    for frame in (splits.train, splits.dev, splits.test):
        for text in frame["text"]:
            assert isinstance(text, str) and text.strip()
            text.encode("utf-8")  # what the tokenizer takes
        assert frame["id"].map(lambda i: i.encode("utf-8")).notna().all()
    for name in splits.label_names:
        name.encode("utf-8")  # saved in the model's config.json


column_options = st.fixed_dictionaries({}, optional={"id_column": st.just("id"), "text_pair_column": st.just("pair")})


@PROPERTY
@given(
    st.lists(column_names, min_size=1, max_size=4, unique=True),
    st.lists(st.lists(texts, min_size=1, max_size=5), max_size=30),
    column_options,
)
def test_csv_with_arbitrary_columns_and_cells(header, rows, columns):
    with tempfile.TemporaryDirectory() as tmp:
        check(write(Path(tmp) / "train.csv", csv_text(header, rows)), **columns)


# A file of good rows (enough to carve dev and test from, every column of COLUMNS) with wild
# cells put in one column, so that most files get as far as splitting, ids and labels.
good_rows = st.lists(
    st.fixed_dictionaries(
        {
            "text": st.sampled_from(["A good film.", "Dull.", "Not bad"]),
            "label": st.sampled_from([0, 1]),
            "pair": st.just("Yes."),
        }
    ),
    min_size=20,
    max_size=30,
)
wild_values = st.one_of(tricky, texts, json_cells)


def spoil(rows: list[dict], column: str, cells: list[tuple[int, object]]) -> list[dict]:
    rows = [{**row, "id": i} for i, row in enumerate(rows)]
    for i, value in cells:
        rows[i % len(rows)][column] = value
    return rows


def write_json_lines(path: Path, records: list, ensure_ascii: bool) -> Path:
    # ensure_ascii: a lone surrogate as JSON's escape "\ud800" (valid JSON), else as raw bytes
    return write(path, "\n".join(json.dumps(record, ensure_ascii=ensure_ascii) for record in records))


@pytest.mark.parametrize("column", [*COLUMNS, "other"])
@settings(PROPERTY, max_examples=50)  # each column
@given(data=st.data())
def test_json_lines_with_wild_cells(column, data):
    cells = data.draw(st.lists(st.tuples(st.integers(0, 29), wild_values), min_size=1, max_size=3))
    records = spoil(data.draw(good_rows), column, cells)
    columns, ensure_ascii = data.draw(column_options), data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        check(write_json_lines(Path(tmp) / "train.jsonl", records, ensure_ascii), **columns)


@PROPERTY
@given(
    st.lists(st.dictionaries(column_names, json_cells, max_size=5) | json_cells, max_size=20),
    column_options,
    st.booleans(),
)
def test_json_lines_with_arbitrary_records(records, columns, ensure_ascii):
    with tempfile.TemporaryDirectory() as tmp:
        check(write_json_lines(Path(tmp) / "train.jsonl", records, ensure_ascii), **columns)


@PROPERTY
@given(st.text(max_size=300), st.sampled_from(["train.csv", "train.tsv", "train.jsonl"]), column_options)
def test_arbitrary_file_content(content, name, columns):
    with tempfile.TemporaryDirectory() as tmp:
        check(write(Path(tmp) / name, content), **columns)


# Rows the loader took before and that failed later, far from the file: a lone surrogate (valid
# JSON, "\ud800", but no UTF-8 encoder, tokenizer or config.json takes it) and a 5,000-digit label.
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "caf\\ud800", "label": 1}', "row 1, column text: not valid Unicode"),
        ('{"text": "a", "label": "x\\udc00"}', "row 1, column label: not valid Unicode"),
        ('{"text": "a", "label": ' + "1" * 5000 + "}", "row 1 is not valid JSON"),
    ],
)
def test_rows_that_failed_later_are_named(tmp_path, line, message):
    path = write(tmp_path / "train.jsonl", "\n".join([line] + ['{"text": "b", "label": 0}'] * 20))
    with pytest.raises(DataError, match=message):
        load_splits("files", train_file=path)
