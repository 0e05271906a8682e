"""ERASER rationale data (Movie Reviews): documents with human rationales, cut into model windows.

Spec section 7: documents are split into windows of the model's max length; windows without
rationale are dropped. Sources (:func:`load_rationale_documents`):

* an ERASER directory: ``docs/<docid>`` (plain text, tokens separated by whitespace) and
  ``{train,val,test}.jsonl``, one annotation per line with ``annotation_id``, ``evidences``
  (a list of lists of ``{docid, start_token, end_token, text, ...}``, token offsets into the
  whitespace-split document, end exclusive), ``classification`` and ``query``. Only the
  document and the evidences are used: the classifier reads the review alone (no query) and its
  prediction, not the gold class, is what the baselines explain;
* the hub copy ``eraser-benchmark/movie_rationales`` (online users), whose rows carry the review
  and the evidence *texts* without offsets: each evidence is located as the first occurrence of
  its whitespace tokens in the review.

Windows (:func:`split_windows`) hold whole words: a window takes words while their word pieces
fit in ``window`` minus the special tokens; the next window starts at the first word at least
``stride`` pieces after the previous start (default: no overlap). With overlap a word sits in
several windows, and it is evaluated in one only: the window where it has the most context,
``min(pieces before it, pieces after it)``, ties to the earlier window (the "max context" rule
of sliding-window QA). So each document token counts exactly once. Word pieces inherit the
rationale flag of their word (:func:`encode_windows`).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adapler.data import DataError

HUB_NAME = "eraser-benchmark/movie_rationales"
SPLITS = ("train", "val", "test")
_HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class RationaleDocument:
    """One annotated document: its whitespace tokens and a per-token human rationale flag."""

    annotation_id: str
    words: tuple[str, ...]
    rationale: tuple[bool, ...]  # per word: inside some evidence span


@dataclass(frozen=True)
class Window:
    """A run of whole words of one document that fits the model, with per-word flags."""

    annotation_id: str
    first_word: int  # index of words[0] in the document
    words: tuple[str, ...]
    rationale: tuple[bool, ...]
    owned: tuple[bool, ...]  # the word is evaluated in this window (max-context rule)

    @property
    def has_rationale(self) -> bool:
        return any(r and o for r, o in zip(self.rationale, self.owned))


# ---------------------------------------------------------------------------------- reading
def load_rationale_documents(source: str, split: str = "test") -> list[RationaleDocument]:
    """Documents of one split from an ERASER directory or the hub name :data:`HUB_NAME`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; ERASER splits are {', '.join(SPLITS)}")
    if Path(source).is_dir():
        return read_eraser_directory(source, split)
    if source == HUB_NAME:
        return read_hub(split)
    raise DataError(
        f"data not found: {source} is neither an ERASER directory (docs/ and {split}.jsonl) "
        f"nor the hub data set {HUB_NAME}"
    )


def read_eraser_directory(directory: str | Path, split: str) -> list[RationaleDocument]:
    directory = Path(directory)
    annotations = directory / f"{split}.jsonl"
    if not annotations.is_file():
        raise DataError(f"annotation file not found: {annotations}")
    documents = []
    for line_number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{annotations}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or "annotation_id" not in record:
            raise DataError(f"{where}: expected an object with an 'annotation_id'")
        annotation_id = str(record["annotation_id"])
        evidences = [e for group in record.get("evidences") or [] for e in group]
        docids = {str(e["docid"]) for e in evidences if e.get("docid") is not None}
        docids |= {str(d) for d in record.get("docids") or []}
        if len(docids) > 1:
            raise DataError(
                f"{where}: annotation {annotation_id!r} spans several documents {sorted(docids)}; "
                f"only single-document tasks such as Movie Reviews are supported"
            )
        docid = docids.pop() if docids else annotation_id
        path = directory / "docs" / docid
        if not path.is_file():
            raise DataError(f"{where}: document file not found: {path}")
        words = tuple(path.read_text(encoding="utf-8").split())
        if not words:
            raise DataError(f"{where}: document {path} is empty")
        rationale = [False] * len(words)
        for evidence in evidences:
            try:
                start, end = int(evidence["start_token"]), int(evidence["end_token"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: every evidence needs integer start_token and end_token") from None
            if not 0 <= start <= end <= len(words):
                raise DataError(
                    f"{where}: evidence span [{start}, {end}) is outside document {docid} ({len(words)} tokens)"
                )
            rationale[start:end] = [True] * (end - start)
        documents.append(RationaleDocument(annotation_id, words, tuple(rationale)))
    return documents


def document_from_evidence_texts(annotation_id: str, text: str, evidences: Sequence[str]) -> RationaleDocument:
    """A document whose evidences are given as texts: each marks the first occurrence of its
    whitespace tokens in the text's whitespace tokens."""
    words = tuple(text.split())
    rationale = [False] * len(words)
    for evidence in evidences:
        span = evidence.split()
        start = next((i for i in range(len(words) - len(span) + 1) if list(words[i : i + len(span)]) == span), None)
        if not span or start is None:
            raise DataError(f"{annotation_id}: evidence {evidence[:60]!r} is not in the document")
        rationale[start : start + len(span)] = [True] * len(span)
    return RationaleDocument(annotation_id, words, tuple(rationale))


def read_hub(split: str, name: str = HUB_NAME) -> list[RationaleDocument]:
    """The hub copy of ERASER Movie Reviews (needs network access): rows review, label, evidences."""
    import datasets  # slow to import; only this source needs it

    hub_split = _HUB_SPLITS[split]
    try:
        table = datasets.load_dataset(name, split=hub_split)
    except Exception as exc:  # offline, renamed, gated, ...
        raise DataError(
            f"cannot load hub data set {name!r} split {hub_split!r}: {exc}. Offline, pass an ERASER "
            f"directory (docs/ and {split}.jsonl) instead"
        ) from exc
    return [
        document_from_evidence_texts(f"{name} {hub_split} row {index}", row["review"], row["evidences"])
        for index, row in enumerate(table)
    ]


# ---------------------------------------------------------------------------------- windows
def _word_starts(words: Sequence[str]) -> list[int]:
    """Character offset of each word in ``" ".join(words)``."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return starts


def _piece_words(offsets, special, starts: list[int]) -> list[int]:
    """Word index of each word piece (-1 for special tokens and padding), from character offsets."""
    return [
        bisect.bisect_right(starts, begin) - 1 if not is_special and end > begin else -1
        for (begin, end), is_special in zip(offsets, special)
    ]


def piece_counts(tokenizer, words: Sequence[str]) -> list[int]:
    """Word pieces of each word, as the tokenizer splits the words joined by spaces."""
    encoding = tokenizer(
        " ".join(words),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        verbose=False,
    )
    counts = [0] * len(words)
    for word in _piece_words(encoding["offset_mapping"], encoding["special_tokens_mask"], _word_starts(words)):
        if word >= 0:
            counts[word] += 1
    return counts


def split_windows(document: RationaleDocument, tokenizer, window: int, stride: int | None = None) -> list[Window]:
    """All windows of a document (see the module docstring); ``window`` counts special tokens."""
    capacity = window - tokenizer.num_special_tokens_to_add(pair=False)  # word pieces per window
    if capacity < 1:
        raise ValueError(f"window {window} leaves no room for text next to the special tokens")
    stride = capacity if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be at least 1 word piece, got {stride}")
    if not document.words:
        return []
    counts = piece_counts(tokenizer, document.words)
    first_piece = [0]  # first_piece[j]: pieces before word j; first_piece[-1]: all pieces
    for count in counts:
        first_piece.append(first_piece[-1] + count)
    spans = []  # (first word, end word) per window
    start, n = 0, len(counts)
    while True:
        end = start + 1  # at least one word, even one longer than the window (then truncated)
        while end < n and first_piece[end + 1] - first_piece[start] <= capacity:
            end += 1
        spans.append((start, end))
        if end == n:
            break
        # next start: first word >= stride pieces later, but no word skipped and some progress
        start = bisect.bisect_left(first_piece, first_piece[start] + stride, start + 1, end)
    owner = {}  # word -> (context, window index); max context wins, ties the earlier window
    for index, (start, end) in enumerate(spans):
        for word in range(start, end):
            context = min(first_piece[word] - first_piece[start], first_piece[end] - first_piece[word + 1])
            if word not in owner or context > owner[word][0]:
                owner[word] = (context, index)
    return [
        Window(
            document.annotation_id,
            start,
            document.words[start:end],
            document.rationale[start:end],
            tuple(owner[word][1] == index for word in range(start, end)),
        )
        for index, (start, end) in enumerate(spans)
    ]


def rationale_windows(
    documents: Sequence[RationaleDocument], tokenizer, window: int, stride: int | None = None
) -> tuple[list[Window], int]:
    """Windows of all documents that hold some (evaluated) rationale word, and how many were
    dropped for holding none (spec 7)."""
    kept, dropped = [], 0
    for document in documents:
        for piece in split_windows(document, tokenizer, window, stride):
            if piece.has_rationale:
                kept.append(piece)
            else:
                dropped += 1
    return kept, dropped


def encode_windows(
    tokenizer, windows: Sequence[Window], max_length: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Tokenize windows into a padded batch, with two (B, T) bool masks on the word pieces:
    ``evaluated`` (a piece of an owned word; never a special token or padding) and
    ``rationale`` (a piece of a rationale word).

    Same arguments as :func:`adapler.batching.encode` (truncation at ``max_length``, right padding to
    the longest), plus the character offsets that map pieces to words.
    """
    encoding = tokenizer(
        [" ".join(w.words) for w in windows],
        truncation=True,
        max_length=max_length,
        padding=True,
        padding_side="right",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    evaluated, rationale = [], []
    for row, window in enumerate(windows):
        pieces = _piece_words(
            encoding["offset_mapping"][row], encoding["special_tokens_mask"][row], _word_starts(window.words)
        )
        evaluated.append([w >= 0 and window.owned[w] for w in pieces])
        rationale.append([w >= 0 and window.rationale[w] for w in pieces])
    batch = {
        key: torch.tensor(encoding[key]) for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoding
    }
    return batch, torch.tensor(evaluated, dtype=torch.bool), torch.tensor(rationale, dtype=torch.bool)
