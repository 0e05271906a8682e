"""ModernBERT (adapler.backbones.modernbert) on tiny random models, both classifier poolings.

The tiny config has a global layer then two sliding-window layers whose window (8 tokens, 4 each
side) is shorter than the test sentences (up to 40 tokens), so the window matters, and weights
drawn wide enough (initializer_range 0.2) that a wrong position, window or pooling moves the
logits well past the tolerances.

Two parts:
  * the contract every family keeps (the cases of the shared tests/test_backbones.py), run here
    on TINY_MODERNBERT; merged into that file, its entries join TINY_BACKBONES and this part goes;
  * what removal means for ModernBERT: original positions for rotary and the window, mean
    pooling over the kept tokens, and what the family refuses.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, ModernBertConfig, ModernBertForSequenceClassification

from adapler.backbones import UnsupportedBackbone, encoder_size, family_class
from adapler.backbones.modernbert import ModernBertFamily
from adapler.batching import encode, make_loader
from adapler.calibration import apply_factor, calibrate
from adapler.evaluate import evaluate
from adapler.flops import layer_flops
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import quantize_int8
from adapler.saliency import saliency_of_batch
from adapler.training import attention_dropout

LAYERS, HIDDEN, HEADS, FFN, LABELS = 3, 32, 4, 48, 3
WINDOW = 8  # local_attention: a sliding layer sees 4 tokens each side, in original positions


def _modernbert(vocab: int, pooling: str = "cls") -> ModernBertForSequenceClassification:
    """Token ids as the packaged MiniLM tokenizer's ([PAD] 0, [CLS] 101, [SEP] 102)."""
    return ModernBertForSequenceClassification(
        ModernBertConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            num_labels=LABELS,
            max_position_embeddings=128,
            local_attention=WINDOW,
            global_attn_every_n_layers=3,
            classifier_pooling=pooling,
            initializer_range=0.2,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
            cls_token_id=101,
            sep_token_id=102,
        )
    )


# The entries tests/test_backbones.py takes (name -> builder of a seeded tiny backbone from a vocab size).
TINY_MODERNBERT = {"modernbert": _modernbert, "modernbert-mean": functools.partial(_modernbert, pooling="mean")}
ETAS = [0.9, 1.1, 1.0]  # with spread random CPs, each layer removes some tokens of the test sentences
FACTORS = torch.tensor([0.5, 1.0, 1.4, 0.8, 2.0])


def tiny_modernbert(name: str, tokenizer, spread_cps) -> AdapLeRForSequenceClassification:
    torch.manual_seed(0)
    backbone = TINY_MODERNBERT[name](tokenizer.vocab_size)
    backbone.set_attn_implementation("sdpa")
    model = AdapLeRForSequenceClassification(backbone, tokenizer=tokenizer)
    spread_cps(model)
    model.etas.data = torch.tensor(ETAS)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(TINY_MODERNBERT))
def family_model(request, tokenizer, spread_cps):
    return tiny_modernbert(request.param, tokenizer, spread_cps)


@pytest.fixture
def batch(tokenizer, sentences):
    return encode(tokenizer, sentences)


def hf_logits(model, batch) -> torch.Tensor:
    inputs = model.family.hf_inputs(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return model.backbone(**inputs).logits


def _alone(batch, row: int, n: int) -> dict[str, torch.Tensor]:
    return {k: v[row : row + 1, :n] for k, v in batch.items()}


# ---------------------------------------------------------------------------- the contract
@torch.no_grad()
def test_nothing_removed_is_the_hugging_face_forward(family_model, batch):
    expected = hf_logits(family_model, batch)
    saved = family_model.etas.detach().clone()
    family_model.etas.data.zero_()  # threshold 0: every token stays
    try:
        lengths = batch["attention_mask"].sum(-1)
        for removal in ("none", "masked", "packed"):
            out = family_model(**batch, removal=removal)
            assert torch.allclose(out.logits, expected, atol=1e-5), removal
            assert torch.equal(out.kept_lengths, lengths[:, None].expand(-1, LAYERS)), removal
        single = _alone(batch, 0, int(lengths[0]))  # batch 1, no padding
        assert torch.allclose(family_model(**single).logits, expected[:1], atol=1e-5)
    finally:
        family_model.etas.data = saved


@torch.no_grad()
def test_packed_equals_masked_and_removes_tokens(family_model, batch):
    packed = family_model(**batch, removal="packed")
    masked = family_model(**batch, removal="masked")
    assert torch.equal(packed.kept_mask, masked.kept_mask)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    final = packed.kept_lengths[:, -1]
    assert (final < batch["attention_mask"].sum(-1)).all() and len(set(final.tolist())) > 1  # tokens did leave


@torch.no_grad()
def test_an_example_in_a_mixed_length_batch_equals_itself_alone(family_model, batch):
    together = family_model(**batch)
    for row, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        alone = family_model(**_alone(batch, row, n))
        assert torch.equal(alone.kept_mask[0], together.kept_mask[row, :, :n])
        assert torch.allclose(alone.logits[0], together.logits[row], atol=1e-5)


@torch.no_grad()
def test_per_example_factors_equal_scaled_etas_alone(family_model, batch):
    together = family_model(**batch, eta_factors=FACTORS)
    saved = family_model.etas.detach().clone()
    try:
        for row, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
            family_model.etas.data = saved * FACTORS[row]
            alone = family_model(**_alone(batch, row, n))
            assert torch.equal(alone.kept_mask[0], together.kept_mask[row, :, :n])
            assert torch.allclose(alone.logits[0], together.logits[row], atol=1e-5)
    finally:
        family_model.etas.data = saved


def test_save_and_load_round_trip(family_model, batch, tmp_path):
    family_model.save_pretrained(tmp_path)
    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded.family) is ModernBertFamily
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "modernbert"
    assert saved["classifier_pooling"] == family_model.config.classifier_pooling
    with torch.no_grad():
        expected, got = family_model(**batch), loaded(**batch)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-6)


def test_soft_removal_trains_every_part(family_model, batch):
    model = family_model.train()
    try:
        out = model(**batch, removal="soft", temperature=10.0)
        assert torch.isfinite(out.logits).all()
        loss = out.logits.logsumexp(-1).sum() + out.soft_lengths.sum()
        loss.backward()
        groups = model.parameter_groups()
        for name in ("backbone", "predictors", "etas"):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in groups[name]), name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_saliency_reads_the_input_of_layer_one(family_model, batch):
    saliency = saliency_of_batch(family_model, batch, torch.zeros(len(batch["input_ids"]), dtype=torch.long))
    assert saliency.shape == batch["input_ids"].shape
    present = batch["attention_mask"].bool()
    assert (saliency[~present] == 0).all() and (saliency[present] > 0).all()
    captured = []  # e_i is what enters layer 1 in the family's own forward: the normed embeddings
    hook = family_model.family.embedding_output.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            embedded = family_model.family.embed(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    finally:
        hook.remove()
    assert captured and captured[-1] is embedded and embedded.shape[-1] == HIDDEN


def test_int8_keeps_the_kept_tokens_close(family_model, batch):
    quantized = quantize_int8(family_model)
    with torch.no_grad():
        out, reference = quantized(**batch), family_model(**batch)
    assert out.logits.shape == reference.logits.shape
    assert (out.kept_mask == reference.kept_mask).float().mean() > 0.95  # the CPs stay float


def test_flops_of_an_unpruned_pass_equal_a_count_of_the_familys_matmuls(family_model):
    """The family's own forward (eager attention, so that every matmul is counted), one example of
    n tokens: the FLOPs of its encoder layers (Wqkv, QK^T and PV over all n keys in the sliding
    layers too, Wo, the GeGLU's Wi to 2I and Wo) equal L * layer_flops(n) of adapler.flops."""
    n = 11
    ids = torch.randint(2000, 20000, (1, n))
    inputs = family_model.family.hf_inputs(ids, torch.ones_like(ids), None)
    backbone = family_model.backbone
    backbone.set_attn_implementation("eager")
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            backbone(**inputs)
    finally:
        backbone.set_attn_implementation("sdpa")
    names = {module: name for name, module in backbone.named_modules()}
    counts = counter.get_flop_counts()
    counted = sum(
        sum(counts[f"{type(backbone).__name__}.{names[layer]}"].values()) for layer in family_model.family.layers
    )
    size = encoder_size(family_model.config, family_model.settings.cp_hidden)
    assert size.num_layers == LAYERS and size.hidden == HIDDEN and size.intermediate == FFN and size.gated_ffn
    assert counted == LAYERS * float(layer_flops(n, size))


def test_onnx_runtime_matches_torch(family_model, batch, tokenizer, sentences, tmp_path):
    from adapler.onnx_runtime import OnnxAdapLeR

    family_model.save_pretrained(tmp_path)
    onnx_model = OnnxAdapLeR.from_pretrained(tmp_path)
    for removal in ("packed", "none"):
        with torch.no_grad():
            expected = family_model(**batch, removal=removal)
        got = onnx_model(**batch, removal=removal)
        assert torch.equal(expected.kept_mask, got.kept_mask), removal
        assert torch.allclose(expected.logits, got.logits, atol=1e-4), removal
    with torch.no_grad():
        expected = family_model(**batch, eta_factors=FACTORS)
    got = onnx_model(**batch, eta_factors=FACTORS)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-4)
    single = encode(tokenizer, sentences[2:3])  # batch 1: the single-example graph
    with torch.no_grad():
        expected = family_model(**single)
    got = onnx_model(**single)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_MODERNBERT))
def test_adapler_train_end_to_end(name, tokenizer, tmp_path):
    """``adapler train`` on a tiny random backbone of the family (saved as a plain HF checkpoint)."""
    from adapler_cli.main import main

    torch.manual_seed(0)
    backbone_dir = tmp_path / "backbone"
    TINY_MODERNBERT[name](tokenizer.vocab_size).save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    overrides = [
        "name=tiny",
        f"output_dir={tmp_path / 'runs'}",
        f"model.backbone={backbone_dir}",
        "data.source=rotten_tomatoes",
        "data.limit=48",
        "data.max_length=32",
        "stage1.epochs=1",
        "stage1.batch_size=16",
        "stage1.lr=1e-3",
        "stage2.epochs=1",
        "stage2.batch_size=16",
        "stage2.eta_lr=0.1",
        "stage2.predictor_lr=1e-3",
        "saliency_checkpoints=1",
    ]
    assert main(["train", *[arg for item in overrides for arg in ("--set", item)]]) == 0
    result = json.loads((tmp_path / "runs" / "tiny" / "result.json").read_text())
    assert result["dev_flops_speedup"] > 0 and 0.0 <= result["adapler_test_accuracy"] <= 1.0
    config = AutoConfig.from_pretrained(result["model_dir"])
    assert config.model_type == "modernbert" and config.classifier_pooling == ("mean" if "mean" in name else "cls")
    assert main(["predict", "--model", result["model_dir"], "A fine film."]) == 0  # runtime auto: ONNX


# ---------------------------------------------------------------------------- what removal means
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


@pytest.mark.parametrize("name", sorted(TINY_MODERNBERT))
@torch.no_grad()
def test_removed_tokens_leave_the_positions_and_window_of_the_others_unchanged(name, tokenizer, spread_cps, batch):
    """Removal at layer 1 only (etas 0 after it) equals the Hugging Face forward whose attention
    mask hides the removed tokens in every layer: the kept tokens keep their original rotary
    positions and sliding windows (HF's position ids and window are those of the full input),
    and mean pooling averages the kept tokens (HF averages the unmasked ones). The same tokens
    moved together, positions shifted, give other logits: the comparison tells them apart."""
    model = tiny_modernbert(name, tokenizer, spread_cps)
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
    model = tiny_modernbert("modernbert-mean", tokenizer, spread_cps)
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
    model = tiny_modernbert("modernbert", tokenizer, spread_cps)
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
    model = tiny_modernbert("modernbert", tokenizer, spread_cps)
    rates = [layer.attn.attention_dropout for layer in model.family.layers]
    with attention_dropout(model, 0.3):
        assert [layer.attn.attention_dropout for layer in model.family.layers] == [0.3] * LAYERS
    assert [layer.attn.attention_dropout for layer in model.family.layers] == rates


def test_calibration_meets_a_speedup_target(tokenizer, spread_cps, sentences, make_rows):
    model = tiny_modernbert("modernbert-mean", tokenizer, spread_cps)
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
