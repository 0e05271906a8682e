"""What removal means for ModernBERT (adapler.backbones.modernbert): original positions for rotary
and the sliding window, mean pooling over the kept tokens, and what the family refuses. The
contract every family keeps runs on ModernBERT's two classifier poolings in
tests/test_backbones.py (entries modernbert, modernbert-mean: a global layer then two
sliding-window layers whose window, 8 tokens, is shorter than the test sentences).
"""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertConfig

from adapler.backbones import UnsupportedBackbone, family_class
from adapler.backbones.modernbert import ModernBertFamily
from adapler.batching import encode, make_loader
from adapler.calibration import apply_factor, calibrate
from adapler.evaluate import evaluate
from adapler.training import attention_dropout
from test_backbones import HIDDEN, LAYERS, TINY_BACKBONES, WINDOW, _modernbert, tiny_family_model

MODERNBERT = sorted(name for name in TINY_BACKBONES if name.startswith("modernbert"))


@pytest.fixture
def batch(tokenizer, sentences):
    return encode(tokenizer, sentences)


def test_the_tiny_config_exercises_both_attentions_and_the_window(tokenizer, batch):
    """Layers global, local, local; a window of 8 over sentences of up to 40 tokens changes the
    Hugging Face forward's logits (so the tests above would see a wrong window)."""
    torch.manual_seed(0)
    backbone = _modernbert(tokenizer.vocab_size).eval()
    assert backbone.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert int(batch["attention_mask"].sum(-1).max()) > 2 * WINDOW
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        windowed = backbone(**inputs).logits
        backbone.config.local_attention = 1024  # wider than any sentence: every layer global
        unwindowed = backbone(**inputs).logits
    assert (windowed - unwindowed).abs().max() > 1e-2


@pytest.mark.parametrize("name", MODERNBERT)
@torch.no_grad()
def test_removed_tokens_leave_the_positions_and_window_of_the_others_unchanged(name, tokenizer, spread_cps, batch):
    """Removal at layer 1 only (etas 0 after it) equals the Hugging Face forward whose attention
    mask hides the removed tokens in every layer: the kept tokens keep their original rotary
    positions and sliding windows (HF's position ids and window are those of the full input),
    and mean pooling averages the kept tokens (HF averages the unmasked ones). The same tokens
    moved together, positions shifted, give other logits: the comparison tells them apart."""
    model = tiny_family_model(name, tokenizer, spread_cps)
    model.etas.data = torch.tensor([0.9, 0.0, 0.0])  # the longest sentence keeps 33 of 41
    out = model(**batch, removal="packed")
    kept = out.kept_mask[:, 0]  # (B, T) the tokens entering layer 1
    assert torch.equal(out.kept_mask, kept[:, None].expand_as(out.kept_mask))
    present = batch["attention_mask"].bool()
    long = int(present.sum(-1).argmax())
    assert (kept[long] < present[long]).sum() > 3 and kept[long].sum() > WINDOW  # holes; a window among the kept
    expected = model.backbone(input_ids=batch["input_ids"], attention_mask=kept.long()).logits
    assert torch.allclose(out.logits, expected, atol=1e-5)
    shifted = model.backbone(input_ids=batch["input_ids"][long][kept[long]][None]).logits  # positions 0..n-1
    assert (shifted[0] - out.logits[long]).abs().max() > 1e-3


@torch.no_grad()
def test_mean_pooling_reads_the_tokens_kept_at_the_last_layer(tokenizer, spread_cps, batch):
    """Mean pooling over the tokens that entered the last layer, not over the whole input: the
    packed logits are head(final_norm(mean of those rows)), and differ from a mean that would
    also count the removed tokens' last states (masked removal still computes those)."""
    model = tiny_family_model("modernbert-mean", tokenizer, spread_cps)
    out = model(**batch, removal="packed")
    captured = []
    hook = model.backbone.model.final_norm.register_forward_hook(lambda _m, _i, y: captured.append(y))
    try:
        masked = model(**batch, removal="masked")
    finally:
        hook.remove()
    final = captured[-1].view(*batch["input_ids"].shape, HIDDEN)  # (B, T, H) every slot's final state
    last = masked.kept_mask[:, -1, :, None].float()
    head = model.backbone
    over_kept = head.classifier(head.head((final * last).sum(1) / last.sum(1)))
    present = batch["attention_mask"][..., None].float()
    over_input = head.classifier(head.head((final * present).sum(1) / present.sum(1)))
    assert torch.allclose(out.logits, over_kept, atol=1e-5)
    assert (over_input - out.logits).abs().max() > 1e-3


def test_model_without_token_types_ignores_them(tokenizer, spread_cps, batch):
    model = tiny_family_model("modernbert", tokenizer, spread_cps)
    assert "token_type_ids" not in model.family.hf_inputs(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    with torch.no_grad():  # a ModernBERT tokenizer gives none; MiniLM's gives zeros: neither counts
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        typed = model(**{**batch, "token_type_ids": torch.ones_like(batch["token_type_ids"])})
    assert torch.equal(plain.logits, typed.logits) and torch.equal(plain.kept_mask, typed.kept_mask)


def test_stage1_attention_dropout_reaches_the_attention_modules(tokenizer, spread_cps):
    """ModernBERT's attention-probability dropout is a rate on each attention module (no
    nn.Dropout): stage 1's setting sets it for the duration and puts the backbone's own back."""
    model = tiny_family_model("modernbert", tokenizer, spread_cps)
    rates = [layer.attn.attention_dropout for layer in model.family.layers]
    with attention_dropout(model, 0.3):
        assert [layer.attn.attention_dropout for layer in model.family.layers] == [0.3] * LAYERS
    assert [layer.attn.attention_dropout for layer in model.family.layers] == rates


def test_calibration_meets_a_speedup_target(tokenizer, spread_cps, sentences, make_rows):
    model = tiny_family_model("modernbert-mean", tokenizer, spread_cps)
    model.etas.data = torch.tensor([0.3, 0.3, 0.3])
    loader = make_loader(make_rows(sentences * 2), tokenizer, 4, 64)
    result = calibrate(model, loader, target_speedup=2.0)
    assert result.baseline.flops_speedup < 2.0 <= result.chosen.flops_speedup
    assert evaluate(apply_factor(model, result.chosen.factor), loader).flops_speedup >= 2.0


def test_length_dependent_rope_is_refused_in_one_line():
    rope = {
        "full_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 160000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    config = ModernBertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, rope_parameters=rope
    )
    with pytest.raises(UnsupportedBackbone) as error:
        family_class(config)
    assert "\n" not in str(error.value) and "'dynamic'" in str(error.value)
    assert (
        family_class(ModernBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)) is ModernBertFamily
    )
