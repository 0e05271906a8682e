"""AdapLeRForSequenceClassification: parity with Hugging Face, hard removal (packed == masked),
the spec's thresholds and soft-removal function, gradient routing, save/load, backbone checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from adapler import modeling
from adapler.artifacts import ArtifactError
from adapler.batching import encode
from adapler.config import AdapLeRSettings, default_backbone
from adapler.modeling import (
    FIRST_STEP_TEMPERATURE,
    AdapLeRForSequenceClassification,
    UnsupportedBackbone,
    soft_removal,
    temperature_for_epoch,
)

# ---------------------------------------------------------------------------------------- helpers


def token_batch(tokenizer, lengths, seed=0):
    """A padded batch of random-word examples with exactly these token counts ([CLS] ... [SEP])."""
    g = torch.Generator().manual_seed(seed)
    batch, seq = len(lengths), max(lengths)
    ids = torch.full((batch, seq), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = tokenizer.cls_token_id
        if n >= 2:
            ids[i, 1 : n - 1] = torch.randint(2000, 20000, (n - 2,), generator=g)
            ids[i, n - 1] = tokenizer.sep_token_id
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def set_etas(model, values):
    with torch.no_grad():
        model.etas.copy_(torch.as_tensor(values, dtype=model.etas.dtype).expand_as(model.etas))


def sharpen_predictors(model, factor):
    """Scale the CPs' output layers so that their scores spread out and removal really happens."""
    with torch.no_grad():
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(factor)


@torch.no_grad()
def run(model, batch, removal):
    return model(**batch, removal=removal)


def assert_hard_invariants(out, batch):
    present = batch["attention_mask"].bool()
    kept = out.kept_mask
    B, L, T = kept.shape
    assert kept.dtype == torch.bool
    assert out.kept_lengths.shape == (B, L)
    assert torch.equal(out.kept_lengths, kept.sum(-1))
    assert kept[:, :, 0].all(), "[CLS] was removed"
    assert not (kept & ~present[:, None, :]).any(), "a padding position counted as kept"
    assert (out.kept_lengths <= present.sum(-1, keepdim=True)).all()
    assert (out.kept_lengths >= 1).all()
    # monotone: a token never comes back
    assert not (kept[:, 1:] & ~kept[:, :-1]).any(), "a removed token was re-inserted"
    assert torch.isfinite(out.logits).all()


class RowState:
    """Which example / slot each row handed to a CP belongs to (for the oracle CPs below)."""

    mode = "masked"
    seq = 0
    example = None
    slot = None


@pytest.fixture
def row_state(monkeypatch):
    """Record the packed layout: every _PackedGrid tells RowState which example each packed row is."""
    state = RowState()
    original = modeling._PackedGrid

    class RecordingGrid(original):
        def __init__(self, example, batch):
            super().__init__(example, batch)
            state.example, state.slot = example, self.slot

    monkeypatch.setattr(modeling, "_PackedGrid", RecordingGrid)
    return state


class OracleCP(nn.Module):
    """A CP whose logits we dictate per example: rule(z, example, slot) edits the real CP's z in place."""

    def __init__(self, real: nn.Module, state: RowState, rule, scale: float = 1.0):
        super().__init__()
        self.real, self.state, self.rule, self.scale = real, state, rule, scale

    def forward(self, x):
        z = self.real(x) * self.scale
        rows = torch.arange(x.shape[0])
        if self.state.mode == "masked":  # x is the whole (B * T) grid
            example, slot = rows // self.state.seq, rows % self.state.seq
        else:  # x holds the packed kept rows
            example, slot = self.state.example, self.state.slot
            assert example.shape[0] == x.shape[0]
        self.rule(z, example, slot)
        return z


def install_oracle(model, state, rule, scale=1.0):
    for index in range(model.num_layers):
        model.predictors[index] = OracleCP(model.predictors[index], state, rule, scale)


def run_both(model, batch, state=None):
    if state is not None:
        state.mode, state.seq = "masked", batch["input_ids"].shape[1]
    masked = run(model, batch, "masked")
    if state is not None:
        state.mode = "packed"
    packed = run(model, batch, "packed")
    return masked, packed


# ---------------------------------------------------------------------------------------- parity


def test_none_equals_hf_logits_tiny(tiny_model, sentence_batch):
    reference = BertForSequenceClassification(
        BertConfig(**{**tiny_model.config.to_dict(), "attn_implementation": "eager"})
    )
    reference.load_state_dict(tiny_model.backbone.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = reference(**sentence_batch).logits
        own = tiny_model.backbone(**sentence_batch).logits
    out = run(tiny_model, sentence_batch, "none")
    assert out.logits.shape == (len(sentence_batch["input_ids"]), 3)
    assert torch.allclose(out.logits, own, atol=1e-5)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.equal(out.kept_lengths, sentence_batch["attention_mask"].sum(-1, keepdim=True).expand(-1, 3))


def test_none_equals_hf_logits_minilm(minilm, sentence_batch):
    assert minilm.num_layers == 6 and minilm.config.hidden_size == 384
    assert len(set(sentence_batch["attention_mask"].sum(-1).tolist())) >= 4  # really different lengths
    plain = AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=2).eval()
    plain.load_state_dict(minilm.backbone.state_dict())
    with torch.no_grad():
        expected = plain(**sentence_batch).logits
    out = run(minilm, sentence_batch, "none")
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("removal", ["masked", "packed"])
def test_zero_etas_keep_everything_and_match_hf_tiny(tiny_model, sentence_batch, removal):
    set_etas(tiny_model, 0.0)
    sharpen_predictors(tiny_model, 10.0)  # scores spread out, but threshold 0 keeps all
    with torch.no_grad():
        expected = tiny_model.backbone(**sentence_batch).logits
    out = run(tiny_model, sentence_batch, removal)
    assert torch.allclose(out.logits, expected, atol=1e-5), (out.logits - expected).abs().max()
    n = sentence_batch["attention_mask"].sum(-1, keepdim=True)
    assert torch.equal(out.kept_lengths, n.expand(-1, 3))
    assert torch.equal(out.kept_mask, sentence_batch["attention_mask"].bool()[:, None, :].expand(-1, 3, -1))


@pytest.mark.parametrize("removal", ["masked", "packed"])
def test_zero_etas_match_hf_minilm(minilm, sentence_batch, removal):
    set_etas(minilm, 0.0)
    with torch.no_grad():
        expected = minilm.backbone(**sentence_batch).logits
    out = run(minilm, sentence_batch, removal)
    assert torch.allclose(out.logits, expected, atol=1e-5), (out.logits - expected).abs().max()
    assert torch.equal(out.kept_lengths, sentence_batch["attention_mask"].sum(-1, keepdim=True).expand(-1, 6))


def test_zero_etas_batch_of_one_unpadded(tiny_model, tokenizer):
    # batch size 1: the packed grid has no padding (no scatter, no mask) -- a separate code path
    batch = token_batch(tokenizer, [17], seed=3)
    set_etas(tiny_model, 0.0)
    with torch.no_grad():
        expected = tiny_model.backbone(**batch).logits
    assert torch.allclose(run(tiny_model, batch, "packed").logits, expected, atol=1e-5)


@pytest.mark.parametrize("removal", ["none", "masked", "packed"])
def test_roberta_backbone_matches_hf(removal):
    # RoBERTa: position ids from the padding index, a head without pooler, no token types
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=2,
        max_position_embeddings=80,
        attn_implementation="sdpa",
    )
    model = AdapLeRForSequenceClassification(RobertaForSequenceClassification(config)).eval()
    set_etas(model, 0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (3, 25), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate([25, 9, 2]):
        ids[i, 0], ids[i, n - 1] = 0, 2  # <s> ... </s>
        ids[i, n:], mask[i, n:] = config.pad_token_id, 0
    with torch.no_grad():
        expected = model.backbone(input_ids=ids, attention_mask=mask).logits
        out = model(input_ids=ids, attention_mask=mask, removal=removal)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert out.kept_lengths[:, -1].tolist() == [25, 9, 2]


# ---------------------------------------------------------------------------------------- hard removal


def test_packed_equals_masked_with_forced_extremes(tiny_model, tokenizer, row_state):
    lengths = [3, 20, 60, 2, 45]
    keep_all, lose_all = 1, 2
    batch = token_batch(tokenizer, lengths, seed=1)

    def rule(z, example, slot):
        z[example == keep_all] = 0.0  # uniform scores: every token sits at 1/n >= eta/n
        drop = example == lose_all
        z[drop] = torch.where(slot[drop] == 0, 30.0, 0.0)  # all mass on [CLS]: the rest goes

    set_etas(tiny_model, 0.9)
    install_oracle(tiny_model, row_state, rule, scale=3.0)
    masked, packed = run_both(tiny_model, batch, row_state)

    # the two forced cases really happened
    assert packed.kept_lengths[lose_all].tolist() == [1, 1, 1]
    assert packed.kept_lengths[keep_all].tolist() == [20, 20, 20]
    # and the free examples were pruned somewhere
    assert packed.kept_lengths[4, 0] < 45 and packed.kept_lengths[4, -1] < packed.kept_lengths[4, 0]

    assert torch.equal(packed.kept_mask, masked.kept_mask)
    assert torch.equal(packed.kept_lengths, masked.kept_lengths)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-4), (packed.logits - masked.logits).abs().max()
    for out in (masked, packed):
        assert_hard_invariants(out, batch)


def test_lose_all_example_logits_do_not_depend_on_batch(tiny_model, tokenizer, row_state):
    # an example alone vs inside a padded batch gives the same packed prediction
    lengths = [3, 20, 60]
    batch = token_batch(tokenizer, lengths, seed=2)
    set_etas(tiny_model, [0.7, 0.9, 1.0])
    sharpen_predictors(tiny_model, 20.0)
    together = run(tiny_model, batch, "packed")
    for i, n in enumerate(lengths):
        single = {k: v[i : i + 1, :n] for k, v in batch.items()}
        alone = run(tiny_model, single, "packed")
        assert torch.equal(alone.kept_lengths[0], together.kept_lengths[i])
        assert torch.allclose(alone.logits[0], together.logits[i], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_equals_masked_random_cps(tiny_model_factory, tokenizer, seed):
    model = tiny_model_factory(seed=seed)
    set_etas(model, [0.6, 0.8, 1.0])
    sharpen_predictors(model, 20.0)
    batch = token_batch(tokenizer, [3, 20, 60, 1, 37, 8], seed=seed)
    masked, packed = run_both(model, batch)
    n0 = batch["attention_mask"].sum(-1)
    assert (packed.kept_lengths[:, -1] < n0).any(), "no removal happened: the test would prove nothing"
    assert torch.equal(packed.kept_mask, masked.kept_mask)
    assert torch.equal(packed.kept_lengths, masked.kept_lengths)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-4)
    for out in (masked, packed):
        assert_hard_invariants(out, batch)


def test_packed_equals_masked_minilm(minilm, sentence_batch):
    set_etas(minilm, 1.0)
    sharpen_predictors(minilm, 20.0)
    masked, packed = run_both(minilm, sentence_batch)
    assert (packed.kept_lengths[:, -1] < sentence_batch["attention_mask"].sum(-1)).all()
    assert torch.equal(packed.kept_mask, masked.kept_mask)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-4)
    for out in (masked, packed):
        assert_hard_invariants(out, sentence_batch)


def test_cls_is_never_removed(tiny_model, tokenizer, row_state):
    batch = token_batch(tokenizer, [5, 30, 12], seed=4)

    def rule(z, example, slot):
        z[slot == 0] = -30.0  # [CLS] scores ~0

    set_etas(tiny_model, 1.0)
    install_oracle(tiny_model, row_state, rule, scale=3.0)
    masked, packed = run_both(tiny_model, batch, row_state)
    for out in (masked, packed):
        assert out.kept_mask[:, :, 0].all()
        assert_hard_invariants(out, batch)
    assert torch.equal(packed.kept_mask, masked.kept_mask)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-4)


def test_padding_never_counts_and_removal_is_monotone(tiny_model, tokenizer):
    set_etas(tiny_model, [0.5, 0.8, 1.0])
    sharpen_predictors(tiny_model, 20.0)
    batch = token_batch(tokenizer, [60, 4, 33, 2], seed=5)
    for removal in ("masked", "packed"):
        out = run(tiny_model, batch, removal)
        present = batch["attention_mask"].bool()
        assert not out.kept_mask[~present[:, None, :].expand_as(out.kept_mask)].any()
        assert (out.kept_lengths <= batch["attention_mask"].sum(-1, keepdim=True)).all()
        for layer in range(out.kept_mask.shape[1] - 1):
            later, earlier = out.kept_mask[:, layer + 1], out.kept_mask[:, layer]
            assert torch.equal(later & earlier, later)
        # strictly fewer tokens somewhere, so the subset check is not vacuous
        assert (out.kept_lengths[:, 1:] < out.kept_lengths[:, :-1]).any()


def test_threshold_is_eta_over_n(tiny_model, tokenizer):
    # Example 0 (6 tokens, padded to 9), example 1 (9 tokens); CP_1 returns log-probabilities.
    p0 = [0.10, 0.30, 0.12, 0.18, 0.10, 0.20]
    p1 = [0.05, 0.25, 0.02, 0.10, 0.12, 0.08, 0.30, 0.04, 0.04]
    eta = 0.96
    # eta/6 = 0.16, eta/9 = 0.1067: [CLS] forced, ties avoided. Wrong rules would give:
    #   eta/T (padded length 9) keeps p0[2]=0.12; eta/(n-1) = 0.192 drops p0[3]=0.18; eta drops all.
    expected0 = [True, True, False, True, False, True]
    expected1 = [True, True, False, False, True, False, True, False, False]
    batch = token_batch(tokenizer, [6, 9], seed=6)
    z0, z1 = torch.tensor(p0).log(), torch.tensor(p1).log()

    class FixedCP(nn.Module):
        def forward(self, x):
            if x.shape[0] == 15:  # packed: the 6 + 9 real tokens, example-major
                return torch.cat([z0, z1])
            assert x.shape[0] == 18  # masked: the (2, 9) grid; padding gets a large logit on purpose
            return torch.cat([z0, torch.full((3,), 5.0), z1])

    # hand computation of the rule, for the record
    assert [bool(v) for v in (torch.softmax(z0, 0) >= eta / 6)] == [False, True, False, True, False, True]
    set_etas(tiny_model, [eta, 0.01, 0.01])
    tiny_model.predictors[0] = FixedCP()
    for removal in ("packed", "masked"):
        out = run(tiny_model, batch, removal)
        assert out.kept_mask[0, 0, :6].tolist() == expected0, removal
        assert out.kept_mask[1, 0].tolist() == expected1, removal
        assert out.kept_lengths[:, 0].tolist() == [4, 4]


# --------------------------------------------------------------------------- per-example eta factors

MIXED_LENGTHS = [3, 20, 60, 1, 37, 8, 45]
MIXED_FACTORS = [0.5, 1.0, 2.0, 1.0, 1.3, 0.8, 3.0]


@pytest.mark.parametrize("removal", ["packed", "masked"])
def test_mixed_eta_factors_in_one_batch_equal_each_example_alone(tiny_model, tokenizer, removal):
    """Requests at different operating points share a batch: each example's kept tokens and logits
    are what it gets alone (batch of one: packed's no-grid path) at its own factor."""
    set_etas(tiny_model, [0.5, 0.7, 0.9])
    sharpen_predictors(tiny_model, 20.0)
    batch = token_batch(tokenizer, MIXED_LENGTHS, seed=4)
    factors = torch.tensor(MIXED_FACTORS)
    with torch.no_grad():
        together = tiny_model(**batch, removal=removal, eta_factors=factors)
    for i, n in enumerate(MIXED_LENGTHS):
        single = {k: v[i : i + 1, :n] for k, v in batch.items()}
        with torch.no_grad():
            alone = tiny_model(**single, removal="packed", eta_factors=factors[i : i + 1])
        assert torch.equal(alone.kept_mask[0], together.kept_mask[i, :, :n]), i
        assert not together.kept_mask[i, :, n:].any()
        torch.testing.assert_close(alone.logits[0], together.logits[i], atol=1e-5, rtol=0)
    # The factors really act: at one factor for all, the batch keeps other tokens than mixed.
    uniform = run(tiny_model, batch, removal)
    differ = [i for i, f in enumerate(MIXED_FACTORS) if f != 1.0]
    assert all(
        torch.equal(uniform.kept_mask[i], together.kept_mask[i]) for i, f in enumerate(MIXED_FACTORS) if f == 1.0
    )
    assert any(not torch.equal(uniform.kept_mask[i], together.kept_mask[i]) for i in differ)
    n0 = batch["attention_mask"].sum(-1)
    assert bool((together.kept_lengths[:, -1] < n0).any()), "no removal happened: the test would prove nothing"


def test_eta_factor_scales_the_threshold_like_scaled_etas(tiny_model, tokenizer):
    """eta_factors = f for every example is the model with every eta multiplied by f."""
    set_etas(tiny_model, [0.5, 0.7, 0.9])
    sharpen_predictors(tiny_model, 20.0)
    batch = token_batch(tokenizer, MIXED_LENGTHS, seed=5)
    with torch.no_grad():
        factored = tiny_model(**batch, eta_factors=torch.full((len(MIXED_LENGTHS),), 1.7))
    set_etas(tiny_model, torch.tensor([0.5, 0.7, 0.9]) * 1.7)
    scaled = run(tiny_model, batch, "packed")
    assert torch.equal(factored.kept_mask, scaled.kept_mask)
    torch.testing.assert_close(factored.logits, scaled.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "factors, removal, message",
    [
        (torch.tensor([1.0, -0.5, 1.0, 1.0, 1.0]), "packed", "finite and > 0"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0]), "packed", "finite and > 0"),
        (torch.tensor([1.0, 2.0]), "packed", "shape"),
        (torch.ones(5, dtype=torch.long), "masked", "float tensor"),
        (torch.ones(5), "none", "hard removal"),
        (torch.ones(5), "soft", "hard removal"),
    ],
)
def test_bad_eta_factors_are_refused(tiny_model, sentence_batch, factors, removal, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**sentence_batch, removal=removal, eta_factors=factors)


def test_invalid_removal_mode(tiny_model, sentence_batch):
    with pytest.raises(ValueError, match="removal"):
        tiny_model(**sentence_batch, removal="hard")


@pytest.mark.parametrize("removal", ["none", "soft", "masked", "packed"])
def test_left_padding_is_refused_right_padding_works(tiny_model, tokenizer, sentences, removal):
    left = dict(tokenizer(sentences, padding=True, padding_side="left", return_tensors="pt"))
    assert not left["attention_mask"][:, 0].all()  # really left-padded
    with pytest.raises(ValueError, match=r"right padding \(\[CLS\] first\)"):
        tiny_model(**left, removal=removal)
    no_cls = {**left, "attention_mask": torch.ones_like(left["attention_mask"])}
    no_cls["attention_mask"][1] = 0  # an empty row: never increasing, but position 0 is missing
    with pytest.raises(ValueError, match="right padding"):
        tiny_model(**no_cls, removal=removal)
    right = encode(tokenizer, sentences)  # the one place that tokenizes pads on the right
    assert torch.equal(right["attention_mask"], left["attention_mask"].flip(-1))
    out = tiny_model(**right, removal=removal)
    assert torch.isfinite(out.logits).all() and out.logits.shape == (len(sentences), 3)


def test_padding_side_is_forced_right(tiny_model, sentences):
    tokenizer = AutoTokenizer.from_pretrained(default_backbone(), padding_side="left")
    assert encode(tokenizer, sentences)["attention_mask"][:, 0].all()  # encode pads right regardless
    model = AdapLeRForSequenceClassification(tiny_model.backbone, tokenizer=tokenizer)
    assert model.tokenizer.padding_side == "right"


def test_default_mode_is_packed_in_eval(tiny_model, tokenizer):
    set_etas(tiny_model, 1.0)
    sharpen_predictors(tiny_model, 20.0)
    batch = token_batch(tokenizer, [40, 9], seed=7)
    with torch.no_grad():
        default = tiny_model(**batch)
    packed = run(tiny_model, batch, "packed")
    assert default.scores is None and default.soft_lengths is None
    assert torch.equal(default.kept_mask, packed.kept_mask)
    assert torch.equal(default.logits, packed.logits)


# ---------------------------------------------------------------------------------------- soft removal fn


def test_soft_removal_hand_values():
    lam, delta, beta = 10.0, torch.tensor(0.2), 0.1
    x = torch.tensor([0.05, 0.19, 0.2, 0.5, 1.0])
    expected = torch.tensor(
        [
            (10 / 0.2) * (0.05 - 0.2) - 0.1 / 10,  # -7.51
            (10 / 0.2) * (0.19 - 0.2) - 0.1 / 10,  # -0.51
            -(0.1 / 10) * (1 - 0.2) / (1 - 0.2),  # -0.01 (x == delta takes the upper branch)
            -(0.1 / 10) * (1 - 0.5) / (1 - 0.2),  # -0.00625
            0.0,
        ]
    )
    assert torch.allclose(expected, torch.tensor([-7.51, -0.51, -0.01, -0.00625, 0.0]))
    assert torch.allclose(soft_removal(x, delta, lam, beta), expected, atol=1e-6)


def test_soft_removal_clips_at_minus_10000():
    x = torch.tensor([0.0, 0.05, 0.3])
    out = soft_removal(x, torch.tensor(0.2), 1e5, 0.1)
    assert out[0].item() == -10000.0 and out[1].item() == -10000.0
    assert -1e-5 < out[2].item() < 0
    assert (soft_removal(torch.linspace(0, 1, 101), torch.tensor(0.3), 50.0, 0.1) <= 0).all()


def test_soft_removal_broadcasts_per_example_delta():
    x = torch.tensor([[0.1, 0.4], [0.1, 0.4]])
    delta = torch.tensor([[0.2], [0.05]])
    out = soft_removal(x, delta, 10.0, 0.1)
    assert out[0, 0].item() == pytest.approx((10 / 0.2) * (0.1 - 0.2) - 0.01, abs=1e-5)
    assert out[1, 0].item() == pytest.approx(-(0.01) * 0.9 / 0.95, abs=1e-6)


def test_soft_scores_with_every_token_gone_and_cls_underflowed_are_finite():
    # [CLS] (mask 1) has softmax weight exp(-200) / 2 = 0 in float32; both other masks are 0
    z = torch.tensor([[-200.0, 0.0, 0.0], [0.3, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    present = torch.ones(2, 3, dtype=torch.bool)
    naive = torch.softmax(z, -1) * mask / (torch.softmax(z, -1) * mask).sum(-1, keepdim=True)
    assert naive[0].isnan().all()  # 0 / 0 without a floor
    scores = modeling._soft_scores(z, mask, present)
    assert torch.equal(scores[0], torch.zeros(3))
    assert torch.equal(scores[1], naive[1])  # an ordinary row is unchanged, bit for bit


def test_temperature_schedules():
    assert FIRST_STEP_TEMPERATURE == 1000
    for e in range(5):
        assert temperature_for_epoch(e, 5) == pytest.approx(10 * 10**e)
    for e in range(10):
        assert temperature_for_epoch(e, 10) == pytest.approx(10 * 3**e)
    for e in range(3):
        assert temperature_for_epoch(e, 3) == pytest.approx(50 * 50**e)
    other = [temperature_for_epoch(e, 7) for e in range(7)]
    assert other[0] == pytest.approx(10.0)
    assert other[-1] == pytest.approx(1e5, rel=1e-6)
    assert all(b > a for a, b in zip(other, other[1:]))
    assert temperature_for_epoch(0, 1) == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------- soft mode


def soft_setup(model, tokenizer):
    batch = token_batch(tokenizer, [3, 20, 40, 11], seed=8)
    set_etas(model, [0.6, 0.8, 1.0])
    sharpen_predictors(model, 5.0)
    return batch


def test_soft_outputs_shapes_and_masks(tiny_model, tokenizer):
    batch = soft_setup(tiny_model, tokenizer)
    tiny_model.train()
    out = tiny_model(**batch)  # default in train mode: soft
    n0 = batch["attention_mask"].sum(-1).float()
    present = batch["attention_mask"].bool()
    assert out.soft_lengths is not None and out.soft_lengths.shape == (4, 3)
    assert len(out.scores) == 3 and len(out.masks_before) == 3
    sl = out.soft_lengths.detach()
    assert (sl >= 1 - 1e-5).all() and (sl <= n0[:, None] + 1e-4).all()
    assert (sl[:, 1:] <= sl[:, :-1] + 1e-5).all()
    assert (sl[:, -1] < n0 - 0.5).any(), "soft removal removed nothing"
    for layer, (scores, mask) in enumerate(zip(out.scores, out.masks_before)):
        assert scores.shape == mask.shape == (4, 40)
        assert torch.all(mask[:, 0] == 1.0), f"[CLS] mask changed at layer {layer}"
        assert torch.all(mask[~present] == 0.0) and torch.all(scores[~present] == 0.0)
        assert torch.allclose(scores.sum(-1), torch.ones(4), atol=1e-5)
        assert (mask >= 0).all() and (mask <= 1).all()
    assert torch.equal(out.masks_before[0], present.float())
    # n_l = 1 + sum over non-[CLS] tokens of the mask leaving layer l == mask entering l+1
    assert torch.allclose(out.soft_lengths[:, 0], out.masks_before[1].sum(-1), atol=1e-5)


def test_soft_with_huge_temperature_is_the_hard_cut(tiny_model, tokenizer):
    batch = soft_setup(tiny_model, tokenizer)
    with torch.no_grad():
        soft = tiny_model(**batch, removal="soft", temperature=1e9)
    hard = run(tiny_model, batch, "masked")
    assert (hard.kept_lengths[:, -1] < batch["attention_mask"].sum(-1)).any()
    assert torch.allclose(soft.soft_lengths, hard.kept_lengths.float(), atol=1e-3)
    assert torch.allclose(soft.logits, hard.logits, atol=1e-4)


def _grads(model):
    etas = model.etas.grad
    others = {n: p.grad for n, p in model.named_parameters() if n != "etas"}
    return etas, others


def _nonzero(grad):
    return grad is not None and bool(grad.abs().sum() > 0)


def _soft_forward(model, tokenizer):
    batch = soft_setup(model, tokenizer)
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**batch, removal="soft", temperature=10.0)
    labels = torch.tensor([0, 1, 2, 1])
    g = torch.Generator().manual_seed(0)
    saliency = torch.rand(batch["attention_mask"].shape, generator=g) * batch["attention_mask"]
    return out, labels, saliency


def test_length_term_trains_only_the_etas(tiny_model, tokenizer):
    out, _, _ = _soft_forward(tiny_model, tokenizer)
    (0.5 * out.soft_lengths.sum()).backward()
    etas, others = _grads(tiny_model)
    assert _nonzero(etas)
    leaking = [n for n, g in others.items() if _nonzero(g)]
    assert not leaking, f"length term reached model parameters: {leaking[:5]}"


def test_kl_target_mask_of_first_cut_carries_no_eta_gradient(tiny_model, tokenizer):
    # The KL's masks are cut with detached etas: m_1 (from CP_1 on the embeddings) has no eta in it.
    # (Later masks read CP scores of hidden states that depend on the etas; train_stage2 removes
    # that share of the KL's gradient: tests/test_training.py::test_stage2_step_kl_does_not_reach_the_etas.)
    out, _, saliency = _soft_forward(tiny_model, tokenizer)
    assert bool((out.masks_before[1][:, 1:] < 0.99).any())  # the mask really moved
    total = (out.masks_before[1] * saliency).sum()
    total.backward()
    etas, others = _grads(tiny_model)
    assert not _nonzero(etas)
    assert _nonzero(others["predictors.0.net.0.weight"])  # the masks do depend on the CPs


def test_kl_of_first_layer_gives_no_gradient_to_etas(tiny_model, tokenizer):
    # layer 1 scores read the embeddings and m_0 only: no eta anywhere
    out, _, saliency = _soft_forward(tiny_model, tokenizer)
    ((out.scores[0] + 1e-6).log() * saliency).sum().backward()
    assert not _nonzero(tiny_model.etas.grad)
    assert _nonzero(tiny_model.predictors[0].net[0].weight.grad)


def test_ce_trains_etas_cps_and_backbone(tiny_model, tokenizer):
    out, labels, _ = _soft_forward(tiny_model, tokenizer)
    F.cross_entropy(out.logits, labels).backward()
    etas, others = _grads(tiny_model)
    assert _nonzero(etas)
    assert _nonzero(others["predictors.0.net.0.weight"])
    assert _nonzero(others["backbone.bert.encoder.layer.0.attention.self.query.weight"])
    assert _nonzero(others["backbone.classifier.weight"])


def test_clip_etas(tiny_model):
    set_etas(tiny_model, [-1.0, 0.5, 5.0])
    tiny_model.clip_etas()
    assert torch.allclose(tiny_model.etas, torch.tensor([0.01, 0.5, 1.0]))
    assert tiny_model.etas.requires_grad
    model = AdapLeRForSequenceClassification(tiny_model.backbone, AdapLeRSettings(eta_init=0.3))
    assert torch.allclose(model.etas, torch.full((3,), 0.3))


# ---------------------------------------------------------------------------------------- io


def test_fresh_cps_follow_the_authors_init(tiny_model, tmp_path):
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        initializer_range=0.05,
    )
    torch.manual_seed(0)
    model = AdapLeRForSequenceClassification(BertForSequenceClassification(config))
    weights = torch.cat([m.weight.flatten() for m in model.predictors.modules() if isinstance(m, nn.Linear)])
    biases = torch.cat([m.bias for m in model.predictors.modules() if isinstance(m, nn.Linear)])
    assert weights.numel() > 8000 and abs(weights.mean().item()) < 0.005
    assert weights.std().item() == pytest.approx(0.05, rel=0.05)  # normal(0, initializer_range)
    assert torch.equal(biases, torch.zeros_like(biases))
    # from_pretrained puts the saved CPs over the fresh init
    tiny_model.save_pretrained(tmp_path)
    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path)
    saved = tiny_model.predictors.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.predictors.state_dict().items())
    assert loaded.predictors[0].net[0].bias.abs().sum() > 0  # really the saved ones, not zeros


def test_base_model_is_the_backbones_encoder(tiny_model):
    assert tiny_model.base_model is tiny_model.backbone.bert
    assert not hasattr(tiny_model, "_encoder")
    config = RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=80,
    )
    roberta = AdapLeRForSequenceClassification(RobertaForSequenceClassification(config))
    assert roberta.base_model is roberta.backbone.roberta


def test_save_and_load_round_trip(tiny_model, tokenizer, tmp_path):
    set_etas(tiny_model, [0.5, 0.8, 1.0])
    sharpen_predictors(tiny_model, 20.0)
    batch = token_batch(tokenizer, [30, 7, 18], seed=9)
    before = run(tiny_model, batch, "packed")
    assert (before.kept_lengths[:, -1] < batch["attention_mask"].sum(-1)).any()
    tiny_model.save_pretrained(tmp_path)

    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "adapler.safetensors", "tokenizer_config.json"} <= names
    assert "tokenizer.json" in names or "vocab.txt" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))], names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["adapler"]["cp_hidden"] == 32 and config["adapler"]["eta_init"] == 0.25

    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path)
    assert not loaded.training
    assert torch.equal(loaded.etas, tiny_model.etas)
    after = run(loaded, batch, "packed")
    assert torch.equal(after.logits, before.logits)
    assert torch.equal(after.kept_mask, before.kept_mask)
    assert loaded.tokenizer("a test")["input_ids"] == tokenizer("a test")["input_ids"]

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, tiny_model.backbone(**batch).logits, atol=1e-6)


def test_settings_survive_round_trip(tiny_model_factory, tmp_path):
    model = tiny_model_factory(cp_hidden=8, beta=0.2)
    model.save_pretrained(tmp_path)
    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.settings == AdapLeRSettings(cp_hidden=8, beta=0.2)
    assert loaded.predictors[0].net[0].out_features == 8


def test_from_pretrained_rejects_plain_directory(tmp_path, tiny_model):
    tiny_model.backbone.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="adapler.safetensors"):
        AdapLeRForSequenceClassification.from_pretrained(tmp_path)


def test_unsupported_backbones():
    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(UnsupportedBackbone, match="gpt2.*not supported"):
        AdapLeRForSequenceClassification(gpt2)
    albert = AlbertForSequenceClassification(
        AlbertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    )
    with pytest.raises(UnsupportedBackbone, match="albert.*not supported.*distilbert"):  # names the supported
        AdapLeRForSequenceClassification(albert)
    relative = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            position_embedding_type="relative_key",
        )
    )
    with pytest.raises(UnsupportedBackbone, match="position"):
        AdapLeRForSequenceClassification(relative)
    assert issubclass(UnsupportedBackbone, ValueError)


def test_from_backbone_local_dir_with_label_names(tiny_model, tmp_path):
    tiny_model.backbone.bert.save_pretrained(tmp_path)  # a plain encoder checkpoint, as on the hub
    tiny_model.tokenizer.save_pretrained(tmp_path)
    model = AdapLeRForSequenceClassification.from_backbone(
        str(tmp_path), num_labels=2, label_names=["neg", "pos"], eta_init=0.4
    )
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    assert model.config.num_labels == 2 and model.backbone.classifier.out_features == 2
    assert torch.allclose(model.etas, torch.full((3,), 0.4))
    assert model.tokenizer is not None and model.num_layers == 3
    # the encoder weights came from the directory
    assert torch.equal(
        model.backbone.bert.encoder.layer[0].attention.self.query.weight,
        tiny_model.backbone.bert.encoder.layer[0].attention.self.query.weight,
    )


def test_from_backbone_rejects_unsupported_config(tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedBackbone):
        AdapLeRForSequenceClassification.from_backbone(str(tmp_path), num_labels=2)
