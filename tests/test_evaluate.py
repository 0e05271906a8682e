"""Throughput that compares like with like: both models on the same length-sorted batches,
tokenized before the clock starts (adapler.evaluate.paired_throughput; no timed assertion)."""

from __future__ import annotations

import copy

import torch

from adapler.backbones import encoder_size
from adapler.batching import input_budgets, sorted_batches, token_counts
from adapler.evaluate import budget_gain, paired_throughput
from adapler.flops import backbone_flops


class Recorder(torch.nn.Module):
    """Wraps a model: records the batches and removal mode of every forward pass, and whether the
    tokenizer was called while a forward pass ran."""

    def __init__(self, model, calls: list):
        super().__init__()
        self.model, self.calls = model, calls
        self.tokenizer = model.tokenizer

    def forward(self, removal: str, **batch):
        self.calls.append((removal, batch["input_ids"].clone(), batch["attention_mask"].clone()))
        return self.model(**batch, removal=removal)


def test_sorted_batches_are_sorted_and_cover_every_example(tokenizer, sentences):
    texts = sentences * 3
    batches = sorted_batches(tokenizer, texts, None, batch_size=4, max_length=32)
    indices = [i for chunk, _ in batches for i in chunk]
    assert sorted(indices) == list(range(len(texts)))
    lengths = [int(n) for _, batch in batches for n in batch["attention_mask"].sum(-1)]
    assert lengths == sorted(lengths) == sorted(token_counts(tokenizer, texts, None, 32))
    for chunk, batch in batches:  # each batch padded to its own longest
        assert batch["input_ids"].shape[1] == max(token_counts(tokenizer, [texts[i] for i in chunk], None, 32))


def test_both_models_are_timed_on_the_same_sorted_batches_without_tokenizing(
    tiny_model_factory, make_rows, sentences, monkeypatch
):
    rows = make_rows(sentences * 4)
    calls: list = []
    backbone = Recorder(tiny_model_factory(eta_init=0.01), calls)
    model = Recorder(tiny_model_factory(eta_init=1.0), calls)
    tokenizer_calls = []
    original = type(model.tokenizer).__call__

    def counting(self, *args, **kwargs):
        tokenizer_calls.append(len(calls))  # forward passes made so far
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.tokenizer), "__call__", counting)
    tokenizer = copy.deepcopy(model.tokenizer)  # the session's tokenizer stays as it is
    tokenizer.model_max_length = 32
    backbone.tokenizer = model.tokenizer = tokenizer
    base, ours = paired_throughput(backbone, model, rows, batch_size=8, repeats=2)
    assert base > 0 and ours > 0

    assert tokenizer_calls and max(tokenizer_calls) == 0  # all tokenization happened before any forward pass
    none = [c for c in calls if c[0] == "none"]
    packed = [c for c in calls if c[0] == "packed"]
    assert len(none) == len(packed) == 1 + 2 * 3  # one warm-up, then 2 passes over 3 batches
    assert calls.index(packed[0]) == len(none)  # the backbone's passes first, then the model's
    for (_, ids_a, mask_a), (_, ids_b, mask_b) in zip(none, packed):
        assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    lengths = [int(n) for _, _, mask in none[1:4] for n in mask.sum(-1)]
    assert lengths == sorted(lengths) and len(lengths) == len(rows)


def test_a_model_at_a_shorter_input_budget_is_timed_on_the_texts_cut_to_it(tiny_model_factory, make_rows, sentences):
    rows = make_rows(sentences * 2)
    calls: list = []
    backbone = Recorder(tiny_model_factory(eta_init=0.01), calls)
    model = Recorder(tiny_model_factory(eta_init=1.0), calls)
    backbone.tokenizer, model.tokenizer = (
        copy.deepcopy(model.tokenizer) for _ in range(2)
    )  # one each, not the session's
    backbone.tokenizer.model_max_length, model.tokenizer.model_max_length = 32, 6
    paired_throughput(backbone, model, rows, batch_size=4)
    longest = {
        removal: max(int(mask.sum(-1).max()) for r, _, mask in calls if r == removal) for removal in ("none", "packed")
    }
    assert longest["packed"] == 6 < longest["none"]


def test_budget_gain_is_the_backbone_flops_ratio_of_full_to_cut_inputs(tiny_model_factory, make_rows, sentences):
    rows = make_rows(sentences)
    model = tiny_model_factory()
    model.tokenizer = tokenizer = copy.deepcopy(model.tokenizer)  # not the session's: its budget changes below
    full = token_counts(tokenizer, rows["text"].tolist(), None, 32)
    cut = token_counts(tokenizer, rows["text"].tolist(), None, 6)
    assert max(full) > 6  # some text is cut
    size = encoder_size(model.config, model.settings.cp_hidden)
    expected = backbone_flops(full, size).sum() / backbone_flops(cut, size).sum()
    assert budget_gain(model, rows, 32, budget=6) > 1
    assert budget_gain(model, rows, 32, budget=6) == expected
    model.tokenizer.model_max_length = 6  # default: the model's own budget
    assert budget_gain(model, rows, 32) == expected
    assert budget_gain(model, rows, 6) == 1.0


def test_input_budgets_are_powers_of_two_that_cut_some_text_then_the_full_length():
    assert input_budgets(512, longest=900) == [32, 64, 128, 256, 512]
    assert input_budgets(512, longest=100) == [32, 64, 512]  # 128 and 256 would cut no text
    assert input_budgets(64, longest=60) == [32, 64]
    assert input_budgets(128, longest=25) == [128]  # short texts: nothing to search
