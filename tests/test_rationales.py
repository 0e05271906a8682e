"""False positive rate, the attention / rollout / top-k baselines, and the per-layer evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapler.eraser import encode_windows, load_rationale_documents, rationale_windows
from adapler.rationales import (
    METHODS,
    RationaleReport,
    attention_rollout,
    cls_attention,
    eager_attention,
    evaluate_rationales,
    false_positives,
    top_k_mask,
)

FIXTURE = Path(__file__).parent / "fixtures" / "eraser"


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_false_positive_rate_by_hand():
    # position 0 is [CLS] and the last of row 2 padding: not evaluated, so never counted
    evaluated = _mask([[0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0]])
    rationale = _mask([[0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0]])
    selected = _mask([[1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 0, 0, 0, 1]])
    # outside the rationale: row 1 positions 3, 4, 5 (selected: 3, 5); row 2 positions 1, 2, 4
    # (selected: 1, 2) -> 4 false positives of 6 negatives
    assert false_positives(selected, rationale, evaluated) == 4
    report = RationaleReport(
        num_layers=1, evaluated_tokens=int(evaluated.sum()), rationale_tokens=int((rationale & evaluated).sum())
    )
    report.false_positives["adapler"][0] = false_positives(selected, rationale, evaluated)
    assert report.negatives == 6
    assert report.fpr()["adapler"] == [pytest.approx(4 / 6)]
    assert RationaleReport(num_layers=1, evaluated_tokens=3, rationale_tokens=3).fpr()["adapler"] == [None]


def test_top_k_mask_picks_the_k_best_candidates_per_row():
    scores = torch.tensor([[9.0, 1.0, 5.0, 5.0, 3.0], [9.0, 0.5, 0.1, 0.7, 0.2]])
    candidates = _mask([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    picked = top_k_mask(scores, torch.tensor([2, 1]), candidates)
    # position 0 scores highest but is no candidate; the tie 5.0/5.0 is broken in token order
    assert picked.int().tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 0]]
    assert top_k_mask(scores, torch.tensor([0, 3]), candidates).int().tolist() == [
        [0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0],
    ]


def _two_layer_attentions():
    layer1 = torch.tensor(
        [  # (heads=2, T=3, T=3)
            [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]],
            [[0.5, 0.1, 0.4], [0.2, 0.6, 0.2], [0.2, 0.3, 0.5]],
        ]
    )
    layer2 = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 1.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 1.0]],
        ]
    )
    return layer1[None], layer2[None]  # batch of one


def test_raw_attention_is_the_cls_row_averaged_over_heads():
    rows = cls_attention(_two_layer_attentions())[0]  # (L, T)
    assert rows[0].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert rows[1].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_attention_rollout_matches_its_definition_on_two_layers():
    # A'_1 = 0.5 * mean_heads + 0.5 * I = [[.75, .15, .10], [.05, .90, .05], [.10, .15, .75]]
    # A'_2 = [[.5, .5, 0], [.25, .75, 0], [0, 0, 1]]
    # rollout_2 = A'_2 @ A'_1, whose [CLS] row is 0.5 * A'_1[0] + 0.5 * A'_1[1]
    rollout = attention_rollout(_two_layer_attentions())[0]
    assert rollout[0].tolist() == pytest.approx([0.75, 0.15, 0.10])
    assert rollout[1].tolist() == pytest.approx([0.40, 0.525, 0.075])


def test_rollout_renormalises_the_mixed_rows():
    # a row of A summing to 0.5 (say, dropped attention): A' row = 0.5 * [.25, .25] + 0.5 * [1, 0]
    # = [.625, .125], renormalised to [5/6, 1/6]
    attention = torch.tensor([[[[0.25, 0.25], [0.0, 0.5]]]])
    assert attention_rollout([attention])[0, 0].tolist() == pytest.approx([5 / 6, 1 / 6])


@pytest.fixture(scope="module")
def documents():
    return load_rationale_documents(str(FIXTURE), "test")


def test_everything_kept_means_every_method_selects_every_token(tiny_model_factory, documents):
    model = tiny_model_factory(num_labels=2, eta_init=0.01)  # threshold 0.01 / n: nothing is dropped
    report = evaluate_rationales(model, documents, window=32)
    # counted by hand from the fixture: windows posR_001 words 29-62 (34 pieces, 25 rationale),
    # negR_002 (28 pieces, 10 rationale: "un ##bel ##ie ##va ##bly lazy", "the actors look
    # bored"), posR_003 (15 pieces, 11 rationale)
    assert (report.documents, report.windows, report.windows_dropped) == (4, 4, 2)
    assert (report.evaluated_tokens, report.rationale_tokens) == (77, 46)
    assert report.kept == [77, 77, 77]
    assert report.false_positives == {m: [31, 31, 31] for m in METHODS}
    assert report.fpr()["adapler"] == [1.0, 1.0, 1.0]


def test_adapler_row_counts_the_tokens_the_model_keeps(tiny_model_factory, documents):
    model = tiny_model_factory(num_labels=2, eta_init=1.0)  # about half the tokens go at each layer
    report = evaluate_rationales(model, documents, window=32, batch_size=3)
    # the same counts from the masked removal path, all windows in one batch
    windows, _ = rationale_windows(documents, model.tokenizer, window=32)
    batch, evaluated, rationale = encode_windows(model.tokenizer, windows, 32)
    with torch.no_grad():
        kept = model(**batch, removal="masked").kept_mask & evaluated[:, None, :]
    negatives = evaluated & ~rationale
    assert report.kept == kept.sum(dim=(0, 2)).tolist()
    assert report.false_positives["adapler"] == (kept & negatives[:, None, :]).sum(dim=(0, 2)).tolist()
    assert report.kept[0] > report.kept[-1] > 0  # tokens are dropped layer by layer
    # batching (padding) changes nothing
    assert evaluate_rationales(model, documents, window=32, batch_size=1).to_dict() == report.to_dict()
    assert model.backbone.config._attn_implementation == "sdpa"  # eager only for the baselines


def test_eager_attention_gives_probabilities_and_restores_sdpa(tiny_model_factory, documents):
    model = tiny_model_factory(num_labels=2)
    windows, _ = rationale_windows(documents, model.tokenizer, window=32)
    batch, _, _ = encode_windows(model.tokenizer, windows, 32)
    with torch.no_grad(), eager_attention(model):
        attentions = model.backbone(**batch, output_attentions=True).attentions
    assert model.backbone.config._attn_implementation == "sdpa"
    assert len(attentions) == 3
    cls_rows = cls_attention(attentions)  # (B, L, T)
    torch.testing.assert_close(cls_rows.sum(-1), torch.ones(len(windows), 3))
    assert (cls_rows * (1 - batch["attention_mask"][:, None, :])).abs().max() < 1e-6  # padding gets none
