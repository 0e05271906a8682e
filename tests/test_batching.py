"""Training batches of similar length (adapler.batching.LengthGroupedBatches, make_loader)."""

from __future__ import annotations

import random

import torch

from adapler.batching import LengthGroupedBatches, encode, make_loader, sorted_batches
from adapler.training import _set_epoch


def padded_tokens(batches, counts) -> int:
    return sum(max(counts[i] for i in batch) * len(batch) for batch in batches)


def test_length_grouped_batches_cover_every_example_once_and_pad_little():
    draw = random.Random(0)
    counts = [draw.randint(3, 64) for _ in range(1000)]
    batches = LengthGroupedBatches(counts, batch_size=32, seed=1, group=10)
    epoch0 = list(batches)
    assert len(epoch0) == len(batches) == 32  # as many batches as plain random ones
    assert sorted(i for batch in epoch0 for i in batch) == list(range(1000))
    plain = [list(range(s, min(s + 32, 1000))) for s in range(0, 1000, 32)]  # counts are in random order
    assert padded_tokens(epoch0, counts) < min(1.2 * sum(counts), 0.7 * padded_tokens(plain, counts))
    assert list(batches) == epoch0  # the same epoch again: the same batches (a resumed run)
    batches.set_epoch(1)
    epoch1 = list(batches)
    assert epoch1 != epoch0 and sorted(i for batch in epoch1 for i in batch) == list(range(1000))


def test_length_grouped_batches_are_the_same_global_batches_on_two_workers():
    counts = [n % 37 + 1 for n in range(100)]
    one = LengthGroupedBatches(counts, batch_size=16, seed=3)
    workers = [LengthGroupedBatches(counts, batch_size=8, seed=3, replicas=2, rank=rank) for rank in range(2)]
    for epoch in (0, 2):
        for batches in [one, *workers]:
            batches.set_epoch(epoch)
        shares = [list(batches) for batches in workers]
        assert len(shares[0]) == len(shares[1]) == len(workers[0]) == 7  # 50 rows each
        for step, whole in enumerate(one):  # each step, the two workers' slices make the one-worker batch
            assert sorted(shares[0][step] + shares[1][step]) == sorted(whole)


def test_length_grouped_batches_give_every_worker_as_many_rows():
    counts = [n % 37 + 1 for n in range(101)]  # padded to 102, as DistributedSampler does
    shares = [
        [i for batch in LengthGroupedBatches(counts, 8, seed=3, replicas=2, rank=rank) for i in batch]
        for rank in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 51 and set(shares[0] + shares[1]) == set(range(101))


def test_training_loader_batches_by_length_and_reshuffles_per_epoch(tokenizer, make_rows):
    texts = [" ".join(["word"] * n) for n in random.Random(2).choices(range(1, 40), k=64)]
    loader = make_loader(make_rows(texts), tokenizer, batch_size=8, max_length=64, shuffle=True, seed=0)
    epoch0 = [batch["ids"] for batch in loader]
    widths = [batch["attention_mask"].shape[1] for batch in loader]
    lengths = [batch["attention_mask"].sum(-1) for batch in loader]
    assert sum(w * len(n) for w, n in zip(widths, lengths)) < 1.25 * sum(int(n.sum()) for n in lengths)
    _set_epoch(loader, 1)
    epoch1 = [batch["ids"] for batch in loader]
    assert epoch1 != epoch0 and sorted(sum(epoch1, [])) == sorted(sum(epoch0, [])) == sorted(
        f"ex{i}" for i in range(64)
    )
    evaluation = make_loader(make_rows(texts), tokenizer, batch_size=8, max_length=64)
    assert sum((batch["ids"] for batch in evaluation), []) == [f"ex{i}" for i in range(64)]  # in row order


def test_sorted_batches_equal_encode_of_each_chunk_with_and_without_pairs(tokenizer, sentences):
    texts = sentences * 3
    pairs = [None if i % 3 else "a second segment" for i in range(len(texts))]
    for text_pairs in (None, pairs):
        batches = sorted_batches(tokenizer, texts, text_pairs, batch_size=4, max_length=12)
        assert sorted(i for chunk, _ in batches for i in chunk) == list(range(len(texts)))
        for chunk, batch in batches:
            chunk_pairs = None if text_pairs is None else [text_pairs[i] for i in chunk]
            expected = encode(tokenizer, [texts[i] for i in chunk], chunk_pairs, 12)
            assert batch.keys() == expected.keys()
            for name, values in expected.items():
                assert torch.equal(batch[name], values), name
