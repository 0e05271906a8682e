"""ERASER reading, windowing and evidence-to-word-piece alignment, on tests/fixtures/eraser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapler.data import DataError
from adapler.eraser import (
    document_from_evidence_texts,
    encode_windows,
    load_rationale_documents,
    rationale_windows,
    split_windows,
)

FIXTURE = Path(__file__).parent / "fixtures" / "eraser"


def test_reads_documents_and_marks_evidence_words():
    documents = {d.annotation_id: d for d in load_rationale_documents(str(FIXTURE), "test")}
    assert list(documents) == ["posR_001.txt", "negR_002.txt", "posR_003.txt", "negR_007.txt"]
    lazy = documents["negR_002.txt"]
    assert lazy.words[:6] == ("the", "script", "is", "unbelievably", "lazy", ".")
    # evidences: tokens [3, 5) "unbelievably lazy" and [13, 17) "the actors look bored"
    assert lazy.rationale == (
        False,
        False,
        False,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
    )
    assert not any(documents["negR_007.txt"].rationale)  # an annotation without evidence
    assert [d.annotation_id for d in load_rationale_documents(str(FIXTURE), "val")] == ["negR_004.txt"]
    assert len(load_rationale_documents(str(FIXTURE), "train")) == 2


def test_fixture_evidence_offsets_match_their_texts():
    for split in ("train", "val", "test"):
        for line in (FIXTURE / f"{split}.jsonl").read_text().splitlines():
            for group in json.loads(line)["evidences"]:
                for e in group:
                    words = (FIXTURE / "docs" / e["docid"]).read_text().split()
                    assert " ".join(words[e["start_token"] : e["end_token"]]) == e["text"]


def _lazy_review():
    return next(d for d in load_rationale_documents(str(FIXTURE), "test") if d.annotation_id == "negR_002.txt")


def test_windows_without_overlap_align_evidence_to_word_pieces(tokenizer):
    windows = split_windows(_lazy_review(), tokenizer, window=16)
    assert [(w.first_word, len(w.words)) for w in windows] == [(0, 10), (10, 14)]
    batch, evaluated, rationale = encode_windows(tokenizer, windows, max_length=16)
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in batch["input_ids"].tolist()]
    assert tokens == [
        [
            "[CLS]",
            "the",
            "script",
            "is",
            "un",
            "##bel",
            "##ie",
            "##va",
            "##bly",
            "lazy",
            ".",
            "every",
            "joke",
            "lands",
            "with",
            "[SEP]",
        ],
        [
            "[CLS]",
            "a",
            "thud",
            "and",
            "the",
            "actors",
            "look",
            "bored",
            ".",
            "i",
            "checked",
            "my",
            "watch",
            "twice",
            ".",
            "[SEP]",
        ],
    ]
    # "unbelievably" is five word pieces, all of them rationale; [CLS]/[SEP] are never evaluated
    assert evaluated.int().tolist() == [
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    ]
    assert rationale.int().tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]


def test_overlapping_windows_evaluate_each_word_where_it_has_most_context(tokenizer):
    windows = split_windows(_lazy_review(), tokenizer, window=16, stride=8)
    # starts: word 0, then the first word >= 8 pieces later ("lazy", after the 5 pieces of
    # "unbelievably"), then the first word >= 16 pieces from the start ("and")
    assert [(w.first_word, len(w.words)) for w in windows] == [(0, 10), (4, 14), (12, 12)]
    batch, evaluated, rationale = encode_windows(tokenizer, windows, max_length=16)
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in batch["input_ids"].tolist()]
    assert tokens[1] == [
        "[CLS]",
        "lazy",
        ".",
        "every",
        "joke",
        "lands",
        "with",
        "a",
        "thud",
        "and",
        "the",
        "actors",
        "look",
        "bored",
        ".",
        "[SEP]",
    ]
    assert tokens[2][-4:] == [".", "[SEP]", "[PAD]", "[PAD]"] and batch["attention_mask"][2].tolist()[-3:] == [1, 0, 0]
    # "every": 10 pieces before / 3 after in window 0, 2 before / 11 after in window 1 -> window 0;
    # "joke": min(11, 2) = 2 in window 0 < min(3, 10) = 3 in window 1 -> window 1
    assert evaluated.int().tolist() == [
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    ]
    assert rationale.int().tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize("window, stride", [(16, None), (16, 8), (32, 5), (12, 1)])
def test_every_word_is_evaluated_exactly_once_and_windows_fit(tokenizer, window, stride):
    for document in load_rationale_documents(str(FIXTURE), "test"):
        windows = split_windows(document, tokenizer, window, stride)
        owners = [0] * len(document.words)
        for w in windows:
            for offset, owned in enumerate(w.owned):
                owners[w.first_word + offset] += owned
            assert w.words == document.words[w.first_word : w.first_word + len(w.words)]
        assert owners == [1] * len(document.words)
        batch, evaluated, _ = encode_windows(tokenizer, windows, max_length=window)
        assert batch["input_ids"].shape[1] <= window
        # nothing is truncated: the evaluated pieces are the whole document's pieces
        assert int(evaluated.sum()) == len(tokenizer(" ".join(document.words), add_special_tokens=False)["input_ids"])


def test_windows_without_rationale_are_dropped(tokenizer):
    documents = load_rationale_documents(str(FIXTURE), "test")
    long_review = split_windows(documents[0], tokenizer, window=32)
    assert [(w.first_word, len(w.words), w.has_rationale) for w in long_review] == [
        (0, 29, False),
        (29, 30, True),
        (59, 4, True),
    ]
    windows, dropped = rationale_windows(documents, tokenizer, window=32)
    # the first window of posR_001 and the only one of negR_007 hold no evidence
    assert dropped == 2
    assert [(w.annotation_id, w.first_word) for w in windows] == [
        ("posR_001.txt", 29),
        ("posR_001.txt", 59),
        ("negR_002.txt", 0),
        ("posR_003.txt", 0),
    ]


def test_evidence_texts_are_located_in_the_document():
    document = document_from_evidence_texts("row 0", "a b c\nd b c e", ["b c e", "a"])
    assert document.rationale == (True, False, False, False, True, True, True)
    with pytest.raises(DataError, match="not in the document"):
        document_from_evidence_texts("row 1", "a b c", ["c a"])


def _copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "eraser"
    shutil.copytree(FIXTURE, target)
    return target


def _rewrite_first_record(directory: Path, change) -> None:
    path = directory / "test.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    change(record)
    lines[0] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def test_bad_data_raises_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        load_rationale_documents(str(tmp_path / "missing"), "test")
    directory = _copy_fixture(tmp_path)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_rationale_documents(str(directory), "dev")
    (directory / "val.jsonl").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*val.jsonl"):
        load_rationale_documents(str(directory), "val")
    (directory / "docs" / "negR_002.txt").unlink()
    with pytest.raises(DataError, match=r"test.jsonl:2: document file not found: .*negR_002.txt"):
        load_rationale_documents(str(directory), "test")


def test_evidence_outside_the_document_is_an_error(tmp_path):
    directory = _copy_fixture(tmp_path)
    _rewrite_first_record(directory, lambda r: r["evidences"][0][0].update(end_token=64))
    with pytest.raises(
        DataError, match=r"test.jsonl:1: evidence span \[35, 64\) is outside document posR_001.txt \(63 tokens\)"
    ):
        load_rationale_documents(str(directory), "test")
