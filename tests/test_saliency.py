"""Gradient x input saliency (spec section 2) against an independent computation, id keying,
averaging, and the collator's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapler.batching import Collator, SaliencyMismatch, encode
from adapler.saliency import average_saliency, saliency_for_rows, saliency_from_checkpoints, saliency_of_batch


def reference_saliency(model, input_ids, label, token_type_ids=None):
    """|| d z_y / d e * e ||_2 per token for ONE unpadded example, written out by hand:
    embeddings -> encoder (no mask needed) -> pooler -> classifier."""
    bert = model.backbone.bert
    ids = input_ids[None, :]
    types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids[None, :]
    with torch.enable_grad():
        e = bert.embeddings(input_ids=ids, token_type_ids=types).detach().requires_grad_(True)
        hidden = bert.encoder(e).last_hidden_state
        logits = model.backbone.classifier(bert.pooler(hidden))
        (grad,) = torch.autograd.grad(logits[0, label], e)
    return (grad * e).norm(dim=-1)[0].detach(), logits[0].detach()


@pytest.fixture
def model(tiny_model_factory):
    return tiny_model_factory(seed=11)


def test_saliency_of_batch_matches_per_example_reference(model, tokenizer, sentences):
    batch = encode(tokenizer, sentences, None, 64)
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) > 2
    with torch.no_grad():
        predicted = model(**batch, removal="none").logits.argmax(-1)
    # gold labels that disagree with the prediction for most examples
    labels = torch.tensor([(int(p) + 1 + (i % 2)) % 3 for i, p in enumerate(predicted)])
    assert (labels != predicted).all()
    values = saliency_of_batch(model, batch, labels)
    assert values.shape == batch["input_ids"].shape
    assert not values.requires_grad
    for i, n in enumerate(lengths.tolist()):
        expected, _ = reference_saliency(model, batch["input_ids"][i, :n], int(labels[i]))
        assert torch.allclose(values[i, :n], expected, rtol=1e-4, atol=1e-6), i
        assert (values[i, :n] > 0).all()  # [CLS] and [SEP] keep their (non-zero) value
        assert (values[i, n:] == 0).all()  # padding is 0


def test_saliency_uses_gold_label_not_prediction(model, tokenizer, sentences):
    batch = encode(tokenizer, sentences, None, 64)
    with torch.no_grad():
        predicted = model(**batch, removal="none").logits.argmax(-1)
    other = (predicted + 1) % 3
    with_predicted = saliency_of_batch(model, batch, predicted)
    with_other = saliency_of_batch(model, batch, other)
    n = int(batch["attention_mask"][0].sum())
    expected, _ = reference_saliency(model, batch["input_ids"][0, :n], int(other[0]))
    assert torch.allclose(with_other[0, :n], expected, rtol=1e-4, atol=1e-6)
    for i in range(len(sentences)):
        assert not torch.allclose(with_predicted[i], with_other[i], rtol=1e-3, atol=0), i


def test_saliency_for_rows_runs_length_sorted_batches(model, sentences, make_rows, monkeypatch):
    import adapler.saliency as saliency_module

    widths = []

    def recording(model, batch, labels):
        widths.append(batch["attention_mask"].sum(-1).tolist())
        return saliency_of_batch(model, batch, labels)

    monkeypatch.setattr(saliency_module, "saliency_of_batch", recording)
    texts = ["x", sentences[0] * 3, "short one", sentences[1], "y y", sentences[2] * 2]
    rows = make_rows(texts, labels=[i % 3 for i in range(len(texts))], ids=[f"id-{i}" for i in range(len(texts))])
    out = saliency_for_rows(model, rows, max_length=32, batch_size=2)
    assert len(widths) == 3 and set(out) == set(rows["id"])
    flat = [n for batch in widths for n in batch]
    assert flat == sorted(flat)  # padding only up to similar lengths, not to the longest of random rows


def test_saliency_for_rows_survives_shuffling(model, tokenizer, sentences, make_rows):
    texts = sentences + [s.upper() for s in sentences] + ["short one", "x"]
    rows = make_rows(texts, labels=[i % 3 for i in range(len(texts))], ids=[f"id-{i:02d}" for i in range(len(texts))])
    original = saliency_for_rows(model, rows, max_length=32, batch_size=4)
    shuffled_rows = rows.sample(frac=1.0, random_state=3)
    assert list(shuffled_rows["id"]) != list(rows["id"])
    shuffled = saliency_for_rows(model, shuffled_rows, max_length=32, batch_size=5)
    assert set(original) == set(shuffled) == set(rows["id"])
    for example_id, values in original.items():
        assert values.dtype == np.float32
        np.testing.assert_allclose(shuffled[example_id], values, rtol=1e-4, atol=1e-6)
    for _, row in rows.iterrows():
        n_tokens = len(tokenizer(row["text"], truncation=True, max_length=32)["input_ids"])
        assert len(original[row["id"]]) == n_tokens  # padding not stored, truncation respected
        assert (original[row["id"]] > 0).all()
    assert len(original["id-02"]) == 32  # the long sentence was truncated


def test_saliency_for_rows_with_text_pairs(model, tokenizer, make_rows):
    rows = make_rows(["the cat sat", "a long premise about the weather today"], labels=[1, 2], ids=["a", "b"])
    rows["text_pair"] = ["on the mat", "it rains"]
    out = saliency_for_rows(model, rows, max_length=64)
    for _, row in rows.iterrows():
        enc = tokenizer(row["text"], row["text_pair"], return_tensors="pt")
        assert len(out[row["id"]]) == enc["input_ids"].shape[1]
        assert enc["token_type_ids"].sum() > 0
        expected, _ = reference_saliency(model, enc["input_ids"][0], int(row["label"]), enc["token_type_ids"][0])
        np.testing.assert_allclose(out[row["id"]], expected.numpy(), rtol=1e-4, atol=1e-6)
        # token types matter: the same ids as one segment give other values
        single, _ = reference_saliency(model, enc["input_ids"][0], int(row["label"]))
        assert not np.allclose(out[row["id"]], single.numpy(), rtol=1e-4, atol=1e-6)


def test_saliency_for_rows_accepts_column_dict_and_matches_batch(model, tokenizer, sentences, make_rows):
    rows = make_rows(sentences[:3], labels=[2, 0, 1], ids=[10, 11, 12])  # int ids come back as str
    as_dict = {k: rows[k].tolist() for k in rows.columns}
    out = saliency_for_rows(model, as_dict, max_length=64)
    assert set(out) == {"10", "11", "12"}
    batch = encode(tokenizer, sentences[:3], None, 64)
    direct = saliency_of_batch(model, batch, torch.tensor([2, 0, 1]))
    for i, key in enumerate(["10", "11", "12"]):
        n = int(batch["attention_mask"][i].sum())
        np.testing.assert_allclose(out[key], direct[i, :n].numpy(), rtol=1e-5, atol=1e-7)


def test_saliency_for_rows_puts_model_in_eval(model, make_rows, sentences):
    rows = make_rows(sentences[:2], labels=[0, 1])
    model.train()  # dropout on: saliency must still be deterministic (spec: eval mode)
    a = saliency_for_rows(model, rows, max_length=32)
    model.train()
    b = saliency_for_rows(model, rows, max_length=32)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_saliency_from_checkpoints_averages_saved_models(tiny_model_factory, make_rows, sentences, tmp_path):
    rows = make_rows(sentences, labels=[0, 1, 2, 0, 1])
    maps, dirs = [], []
    for seed in (1, 2):
        model = tiny_model_factory(seed=seed)
        model.save_pretrained(tmp_path / f"ckpt{seed}")
        dirs.append(str(tmp_path / f"ckpt{seed}"))
        maps.append(saliency_for_rows(model, rows, max_length=32))
    averaged = saliency_from_checkpoints(dirs, rows, max_length=32, batch_size=2)
    assert set(averaged) == set(rows["id"])
    for key in averaged:
        assert not np.allclose(maps[0][key], maps[1][key])  # two different models
        np.testing.assert_allclose(averaged[key], (maps[0][key] + maps[1][key]) / 2, rtol=1e-4, atol=1e-7)


def test_average_saliency():
    m1 = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([3.0], np.float32)}
    m2 = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([5.0], np.float32)}
    m3 = {"b": np.array([1.0], np.float32), "a": np.array([2.0, 0.0], np.float32)}
    avg = average_saliency([m1, m2, m3])
    np.testing.assert_allclose(avg["a"], [2.0, 2.0])
    np.testing.assert_allclose(avg["b"], [3.0])
    assert avg["a"].dtype == np.float32
    assert set(average_saliency([m1])) == {"a", "b"}
    with pytest.raises(ValueError, match="different example ids"):
        average_saliency([m1, {"a": m2["a"], "c": m2["b"]}])
    with pytest.raises(ValueError, match="different example ids"):
        average_saliency([m1, {"a": m2["a"]}])
    with pytest.raises(ValueError):
        average_saliency([m1, {"a": np.array([1.0, 2.0, 3.0]), "b": m2["b"]}])  # different lengths
    with pytest.raises(ValueError):
        average_saliency([])


def test_collator_joins_saliency_by_id(tokenizer, make_rows):
    rows = make_rows(["a fine day", "rain"], labels=[1, 0], ids=["p", "q"])
    items = [row.to_dict() for _, row in rows.iterrows()]
    lengths = [len(tokenizer(t)["input_ids"]) for t in rows["text"]]
    saliency = {"q": np.arange(1, lengths[1] + 1, dtype=np.float32), "p": np.full(lengths[0], 0.5, np.float32)}
    batch = Collator(tokenizer, 16, saliency)(items)
    assert batch["ids"] == ["p", "q"]
    assert batch["saliency"].shape == batch["input_ids"].shape
    assert torch.allclose(batch["saliency"][0, : lengths[0]], torch.full((lengths[0],), 0.5))
    assert torch.equal(batch["saliency"][1, : lengths[1]], torch.arange(1, lengths[1] + 1, dtype=torch.float32))
    assert (batch["saliency"][1, lengths[1] :] == 0).all()
    # reversed order: still joined by id
    flipped = Collator(tokenizer, 16, saliency)(items[::-1])
    assert torch.equal(flipped["saliency"][0, : lengths[1]], batch["saliency"][1, : lengths[1]])


def test_collator_rejects_missing_or_wrong_length_saliency(tokenizer, make_rows):
    rows = make_rows(["a fine day", "rain"], labels=[1, 0], ids=["p", "q"])
    items = [row.to_dict() for _, row in rows.iterrows()]
    lengths = [len(tokenizer(t)["input_ids"]) for t in rows["text"]]
    with pytest.raises(SaliencyMismatch, match="'q'"):
        Collator(tokenizer, 16, {"p": np.ones(lengths[0])})(items)
    with pytest.raises(SaliencyMismatch, match="'p'"):
        Collator(tokenizer, 16, {"p": np.ones(lengths[0] + 1), "q": np.ones(lengths[1])})(items)
    assert issubclass(SaliencyMismatch, ValueError)
