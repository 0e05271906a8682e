"""Rows -> padded tensor batches: the one place that tokenizes, for training, evaluation and serving.

Rows are a pandas DataFrame with columns ``id, text, text_pair, label`` (adapler.data). Saliency
labels, when given, join by ``id`` (never by position) and are padded to the batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SaliencyMismatch(ValueError):
    """Saliency labels that do not belong to these rows (missing ids or wrong token counts)."""


def _pairs(text_pairs: Sequence[str | None] | None) -> list[str] | None:
    """Second segments for the tokenizer: None when no example has one ("" for those without)."""
    if text_pairs is None or all(p is None for p in text_pairs):
        return None
    return [p or "" for p in text_pairs]


# A prefix of this many characters a token nearly always holds a token budget (English prose
# averages 4 to 5 characters a token with WordPiece, BPE or SentencePiece vocabularies); a text
# whose prefix falls short is tokenized whole, so the figure only moves speed, never tokens.
CHARS_PER_TOKEN = 8
# Pre-tokenizers that split at spaces (and maybe also at punctuation or digits): the pieces before a
# space never depend on the text after it. BERT, DistilBERT, ELECTRA (BertPreTokenizer), DeBERTa-v2/3
# (Metaspace), RoBERTa and ModernBERT (ByteLevel) all use one of them.
_SPACE_SPLITTING = {
    "BertPreTokenizer",
    "Whitespace",
    "WhitespaceSplit",
    "Metaspace",
    "ByteLevel",
    "Punctuation",
    "Digits",
}


def _splits_at_spaces(tokenizer) -> bool:
    """Whether a text cut just before a space keeps its tokens: a fast tokenizer whose
    pre-tokenizer splits at spaces (Metaspace with its split on, ByteLevel with its regex on)."""
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre_tokenizer is None:
        return False
    spec = json.loads(pre_tokenizer.__getstate__())
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    return bool(parts) and all(
        part.get("type") in _SPACE_SPLITTING and part.get("split", True) and part.get("use_regex", True)
        for part in parts
    )


def budget_prefix(text: str, max_length: int) -> str:
    """``text`` up to the first space at or after ``CHARS_PER_TOKEN * max_length`` characters (the
    whole text when shorter or when no space follows). Tokenized, such a prefix gives a space-splitting
    tokenizer the same first tokens as the whole text: every word before the cut is whole."""
    cut = text.find(" ", CHARS_PER_TOKEN * max_length) if len(text) > CHARS_PER_TOKEN * max_length else -1
    return text if cut < 0 else text[:cut]


def _lengths(enc) -> list[int]:
    """Tokens per row of a tokenizer's output: padded (B, T) tensors or ragged lists."""
    if isinstance(enc["input_ids"], torch.Tensor):
        return enc["attention_mask"].sum(-1).tolist()
    return [len(row) for row in enc["input_ids"]]


def _tokenize(
    tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None, max_length: int | None, **padding
):
    """The tokenizer on texts cut to what ``max_length`` can reach (:func:`budget_prefix`): a long
    article costs the tokens it keeps, not its whole length. The first ``max_length`` tokens are
    those of the whole text whenever the prefix's own tokens reach ``max_length``; the rare rows
    whose prefix falls short are tokenized whole. Pairs (whose truncation weighs both segments'
    full lengths) and tokenizers that do not split at spaces read the whole text."""
    max_length = max_length or tokenizer.model_max_length
    pairs = _pairs(text_pairs)
    texts = list(texts)
    if pairs is not None or not _splits_at_spaces(tokenizer):
        return tokenizer(texts, pairs, truncation=True, max_length=max_length, **padding)
    cut = [budget_prefix(text, max_length) for text in texts]
    enc = tokenizer(cut, truncation=True, max_length=max_length, **padding)
    short = [i for i, n in enumerate(_lengths(enc)) if n < max_length and len(cut[i]) < len(texts[i])]
    if short:
        for i in short:
            cut[i] = texts[i]
        enc = tokenizer(cut, truncation=True, max_length=max_length, **padding)
    return enc


def encode(
    tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Tokenize and pad on the right to the longest in the batch ([CLS] at position 0, as the
    model requires). (B, T) input_ids, attention_mask, token_type_ids."""
    enc = _tokenize(tokenizer, texts, text_pairs, max_length, padding=True, padding_side="right", return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def token_counts(
    tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None, max_length: int | None = None
) -> list[int]:
    """Tokens each example becomes as :func:`encode` tokenizes it (after truncation, special
    tokens counted, no padding): the unit of length sorting and of token budgets."""
    return _lengths(_tokenize(tokenizer, texts, text_pairs, max_length))


def input_budgets(max_length: int, longest: int, smallest: int = 32) -> list[int]:
    """The input budgets a search tries when none are given: powers of two from ``smallest``
    that cut some text (below ``longest``, the most tokens any example has) and stay under
    ``max_length``, then ``max_length`` itself. A budget at or above the longest text would be
    the full input again."""
    budgets, budget = [], smallest
    while budget < min(max_length, longest):
        budgets.append(budget)
        budget *= 2
    return [*budgets, max_length]


def sorted_batches(
    tokenizer,
    texts: Sequence[str],
    text_pairs: Sequence[str | None] | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """The batches inference runs: examples sorted by token count (stable), ``batch_size`` per
    batch, each padded on the right to its own longest, as :func:`encode` pads. ``(indices into
    texts, batch)`` pairs. The texts are tokenized once, unpadded; the sort reads those lengths and
    each batch is padded from them (no second tokenization: on short texts the tokenizer is a
    large share of a pruned model's time, bench/champion_runtime.py)."""
    enc = _tokenize(tokenizer, texts, text_pairs, max_length)
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    pad = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": tokenizer.pad_token_type_id}
    lengths = np.asarray(_lengths(enc))
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = int(lengths[chunk].max())
        batch = {}
        for name in names:
            grid = np.full((len(chunk), width), pad[name], dtype=np.int64)  # (B, T)
            for row, i in enumerate(chunk):
                grid[row, : lengths[i]] = enc[name][i]
            batch[name] = torch.from_numpy(grid)
        batches.append((chunk, batch))
    return batches


class RowsDataset(Dataset):
    def __init__(self, rows: pd.DataFrame):
        self.rows = rows.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows.iloc[index].to_dict()


class Collator:
    """Turns a list of row dicts into a batch; picklable, so DataLoader workers can use it."""

    def __init__(self, tokenizer, max_length: int, saliency: Mapping[str, np.ndarray] | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.saliency = saliency

    def __call__(self, items: list[dict]) -> dict:
        pairs = [item.get("text_pair") for item in items]
        batch = encode(self.tokenizer, [item["text"] for item in items], pairs, self.max_length)
        batch["labels"] = torch.tensor([int(item["label"]) for item in items])
        batch["ids"] = [str(item["id"]) for item in items]
        if self.saliency is not None:
            batch["saliency"] = self._saliency(batch["ids"], batch["attention_mask"])
        return batch

    def _saliency(self, ids: list[str], attention_mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(attention_mask.shape, dtype=torch.float32)  # (B, T), padding 0
        lengths = attention_mask.sum(-1).tolist()
        for row, (example_id, length) in enumerate(zip(ids, lengths)):
            values = self.saliency.get(example_id)
            if values is None:
                raise SaliencyMismatch(f"no saliency labels for example id {example_id!r}")
            if len(values) != length:
                raise SaliencyMismatch(
                    f"saliency for id {example_id!r} has {len(values)} values but the example has "
                    f"{length} tokens: labels were computed with another tokenizer or max_length"
                )
            out[row, :length] = torch.as_tensor(np.asarray(values, dtype=np.float32))
        return out


class LengthGroupedBatches(Sampler[list[int]]):
    """Training batches of similar token counts, in a random order, the same whatever the number
    of workers. Each epoch a permutation (seeded by ``seed`` and the epoch) is cut into groups of
    ``group`` global batches (``batch_size`` x ``replicas`` examples); each group is sorted by
    token count and cut into global batches; the epoch's global batches are shuffled, and worker
    ``rank`` of ``replicas`` (Ray Train's DDP workers) takes every replicas-th example of each.
    Every example once per epoch (as DistributedSampler, the permutation is padded by repeating
    its start so that each worker gets as many), as many batches as plain random batches, each
    padding to about its own length: Rotten Tomatoes at 64 tokens computes ~27 tokens per review
    instead of ~52."""

    def __init__(
        self, counts: Sequence[int], batch_size: int, seed: int = 0, replicas: int = 1, rank: int = 0, group: int = 50
    ):
        self.counts, self.batch_size, self.seed, self.group = list(counts), batch_size, seed, group
        self.replicas, self.rank, self.epoch = replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        """A new order per epoch (the training loop calls it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        per_worker = -(-len(self.counts) // self.replicas)
        return -(-per_worker // self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # one stream per (seed, epoch)
        order = torch.randperm(len(self.counts), generator=generator).tolist()
        total = -(-len(order) // self.replicas) * self.replicas
        order = (order * self.replicas)[:total]
        size = self.batch_size * self.replicas  # a global batch; every one a multiple of replicas
        batches = []
        for start in range(0, total, size * self.group):
            group = sorted(order[start : start + size * self.group], key=self.counts.__getitem__)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
        for k in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[k][self.rank :: self.replicas]


def make_loader(
    rows: pd.DataFrame,
    tokenizer,
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    seed: int = 0,
    saliency: Mapping[str, np.ndarray] | None = None,
    replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader over rows, in order; with ``shuffle``, a training loader of
    :class:`LengthGroupedBatches` (worker ``rank``'s share of ``replicas`` under DDP)."""
    collate = Collator(tokenizer, max_length, saliency)
    if not shuffle:
        return DataLoader(RowsDataset(rows), batch_size=batch_size, collate_fn=collate)
    pairs = rows["text_pair"].tolist() if "text_pair" in rows else None
    batches = LengthGroupedBatches(
        token_counts(tokenizer, rows["text"].tolist(), pairs, max_length), batch_size, seed, replicas, rank
    )
    return DataLoader(RowsDataset(rows), batch_sampler=batches, collate_fn=collate)
