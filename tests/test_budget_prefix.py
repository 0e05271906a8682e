"""Tokenize only what the budget reaches (adapler.batching.budget_prefix): the tokens kept, and so
the logits, are those of the whole text, for every space-splitting tokenizer kind."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from adapler import batching
from adapler.batching import budget_prefix, encode, token_counts
from adapler.inference import Predictor

# words that stress the cut: accents, CJK (split per character), digits, punctuation, a word over
# BERT's 100-character limit ([UNK]), control characters the normalizer drops, tabs and newlines
WORDS = [
    "the",
    "bank",
    "raised",
    "rates",
    "naïve",
    "café",
    "東京",
    "2026",
    "3.5%",
    "U.S.",
    "don't",
    "!!",
    "x" * 120,
    "a\x1cb",
    "tab\there",
    "new\nline",
    "unbelievably",
    "Zürich",
    "—",
    "ok,",
    "(yes)",
]
texts_strategy = st.lists(st.sampled_from(WORDS), max_size=80).map(" ".join) | st.text(max_size=300)


def _trained(pre_tokenizer, model, trainer, normalizer=None, decoder=None) -> PreTrainedTokenizerFast:
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        backend.normalizer = normalizer
    if decoder is not None:
        backend.decoder = decoder
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def tokenizers_of_each_kind(request):
    minilm = request.getfixturevalue("tokenizer")  # BERT WordPiece (BertPreTokenizer, BertNormalizer)
    special = ["[UNK]", "[PAD]"]
    metaspace = _trained(
        pre_tokenizers.Metaspace(),
        models.Unigram(),  # DeBERTa-v2/3's kind
        trainers.UnigramTrainer(vocab_size=120, special_tokens=special, unk_token="[UNK]"),
        normalizers.NFKC(),
        decoders.Metaspace(),
    )
    byte_level = _trained(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        models.BPE(unk_token="[UNK]"),
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=special,  # RoBERTa/ModernBERT's
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return {"wordpiece": minilm, "metaspace": metaspace, "byte_level": byte_level}


def _whole(tokenizer, texts, max_length):
    """What the tokenizer gives on the whole texts: the reference the cut must match."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


@pytest.mark.parametrize("kind", ["wordpiece", "metaspace", "byte_level"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(texts_strategy, min_size=1, max_size=4),
    max_length=st.integers(3, 48),
    chars_per_token=st.sampled_from([1, 2, 8]),
)
def test_the_kept_tokens_are_those_of_the_whole_text(
    kind, tokenizers_of_each_kind, monkeypatch, texts, max_length, chars_per_token
):
    tokenizer = tokenizers_of_each_kind[kind]
    assert batching._splits_at_spaces(tokenizer)  # the cut is on for this kind
    monkeypatch.setattr(batching, "CHARS_PER_TOKEN", chars_per_token)  # 1 and 2 cut short often: the fallback runs
    whole = _whole(tokenizer, texts, max_length)
    assert token_counts(tokenizer, texts, None, max_length) == [len(ids) for ids in whole]
    batch = encode(tokenizer, texts, None, max_length)
    for row, ids in enumerate(whole):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert int(batch["attention_mask"][row].sum()) == len(ids)


def test_a_long_article_is_cut_before_a_space_near_its_budget():
    article = " ".join(["word"] * 1000)
    prefix = budget_prefix(article, 32)
    assert article.startswith(prefix) and article[len(prefix)] == " "
    assert 8 * 32 <= len(prefix) < 8 * 32 + 5
    assert budget_prefix("short text", 32) == "short text"
    assert budget_prefix("x" * 1000, 32) == "x" * 1000  # no space after the limit: the whole text


def test_pairs_and_tokenizers_that_do_not_split_at_spaces_read_the_whole_text(tokenizer, monkeypatch):
    calls = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k))
    article = " ".join(["word"] * 1000)
    token_counts(tokenizer, [article], ["a second segment"], 32)
    assert calls[-1] == [article]  # pairs: truncation weighs both segments' whole lengths
    token_counts(tokenizer, [article], None, 32)
    assert calls[-1] == [budget_prefix(article, 32)]
    split_on_x = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    split_on_x.pre_tokenizer = pre_tokenizers.CharDelimiterSplit("x")
    assert not batching._splits_at_spaces(PreTrainedTokenizerFast(tokenizer_object=split_on_x))


@pytest.mark.parametrize("max_length", [8, 16, 64])
def test_predictions_and_logits_do_not_change(tiny_model, monkeypatch, max_length):
    words = ["The", "central", "bank", "raised", "interest", "rates", "again,", "said", "analysts."]
    generator = torch.Generator().manual_seed(max_length)
    texts = [
        " ".join(words[i] for i in torch.randint(len(words), (n,), generator=generator).tolist())
        for n in (3, 40, 200, 900)
    ]
    predictor = Predictor(tiny_model, batch_size=2, max_length=max_length)
    cut = predictor.predict(texts, explain=True)
    monkeypatch.setattr(batching, "_splits_at_spaces", lambda tokenizer: False)  # the whole text, as before
    whole = predictor.predict(texts, explain=True)
    assert [p.probabilities for p in cut] == [p.probabilities for p in whole]
    assert [p.kept_tokens for p in cut] == [p.kept_tokens for p in whole]
    assert [p.input_tokens for p in cut] == [p.input_tokens for p in whole]
