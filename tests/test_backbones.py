"""The contract every encoder family keeps (adapler.backbones), on a tiny random model of each.

A family is one entry of TINY_BACKBONES (a seeded ...ForSequenceClassification built from a
config; a family may have several entries, e.g. DeBERTa's v2 and v3 layouts, ModernBERT's two
poolings, so an entry's key is a name, its config.model_type the family); every test here runs on
each. What is one family's own lives in tests/test_backbone_<family>.py.

Removal must never change what a kept token computes: the loop with nothing removed is the
Hugging Face forward, packed removal equals masked removal, examples do not interact, and the
exported ONNX graphs agree with torch.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AlbertConfig,
    AutoConfig,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from adapler.backbones import SUPPORTED_MODEL_TYPES, UnsupportedBackbone, encoder_size, family_class
from adapler.batching import encode
from adapler.flops import layer_flops
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import quantize_int8
from adapler.run_layout import RunLayout
from adapler.saliency import saliency_of_batch
from helpers import TINY_RUN

LAYERS, HIDDEN, HEADS, FFN, LABELS = 3, 32, 4, 48, 3


def _bert(vocab: int):
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            num_labels=LABELS,
            max_position_embeddings=128,
        )
    )


def _roberta(vocab: int):
    return RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            num_labels=LABELS,
            max_position_embeddings=130,
            pad_token_id=0,
        )
    )


def _distilbert(vocab: int):
    return DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=vocab,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=FFN,
            num_labels=LABELS,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    )


def _electra(vocab: int):  # embedding width 16 < hidden 32: the projection into layer 1 is exercised
    return ElectraForSequenceClassification(
        ElectraConfig(
            vocab_size=vocab,
            embedding_size=16,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            num_labels=LABELS,
            max_position_embeddings=128,
        )
    )


WEIGHT_STD = 0.2  # DeBERTa's random weights larger than the 0.02 init: logits of order 1, so 1e-5 means something


def _wide_weights(model):
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, WEIGHT_STD)
    return model


def _deberta_v3(vocab: int):
    """DeBERTa-v3's layout: log-bucketed positions (8 buckets: the test sentences, up to ~40
    tokens, reach the log range), shared key projections, LayerNorm-ed relative embeddings, no
    absolute positions, no token types."""
    config = DebertaV2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_labels=LABELS,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        type_vocab_size=0,
        pooler_hidden_size=HIDDEN,
    )
    return _wide_weights(DebertaV2ForSequenceClassification(config))


def _deberta_v2(vocab: int):
    """DeBERTa-v2's older layout: plain relative positions clamped at 16, own position
    projections, absolute positions and token types too."""
    config = DebertaV2Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_labels=LABELS,
        max_position_embeddings=128,
        relative_attention=True,
        max_relative_positions=16,
        share_att_key=False,
        pos_att_type="c2p|p2c",
        position_biased_input=True,
        type_vocab_size=2,
        pooler_hidden_size=HIDDEN,
    )
    return _wide_weights(DebertaV2ForSequenceClassification(config))


WINDOW = 8  # ModernBERT's local_attention: a sliding layer sees 4 tokens each side, in original positions


def _modernbert(vocab: int, pooling: str = "cls"):
    """A global layer then two sliding-window layers whose window is shorter than the test
    sentences (up to 40 tokens), weights drawn wide (initializer_range 0.2) so that a wrong
    position, window or pooling moves the logits; token ids as the packaged MiniLM tokenizer's."""
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


# Adding a family adds its tiny model here (and its module in adapler/backbones).
TINY_BACKBONES = {
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "electra": _electra,
    "deberta-v3": _deberta_v3,
    "deberta-v2": _deberta_v2,
    "modernbert": _modernbert,
    "modernbert-mean": functools.partial(_modernbert, pooling="mean"),
}
ETAS = [0.9, 1.1, 1.0]  # with spread random CPs, each layer removes some tokens of the test sentences


def tiny_family_model(name: str, tokenizer, spread_cps) -> AdapLeRForSequenceClassification:
    torch.manual_seed(0)
    backbone = TINY_BACKBONES[name](tokenizer.vocab_size)
    backbone.set_attn_implementation(family_class(backbone.config).attn_implementation)  # as from_pretrained loads it
    model = AdapLeRForSequenceClassification(backbone, tokenizer=tokenizer)
    spread_cps(model)
    model.etas.data = torch.tensor(ETAS)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(TINY_BACKBONES))
def family_model(request, tokenizer, spread_cps):
    return tiny_family_model(request.param, tokenizer, spread_cps)


@pytest.fixture
def batch(tokenizer, sentences):
    return encode(tokenizer, sentences)


def hf_logits(model, batch) -> torch.Tensor:
    inputs = model.family.hf_inputs(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return model.backbone(**inputs).logits


def _keep_everything(model):
    saved = model.etas.detach().clone()
    model.etas.data.zero_()  # threshold 0: every token stays
    return saved


@torch.no_grad()
def test_nothing_removed_is_the_hugging_face_forward(family_model, batch):
    expected = hf_logits(family_model, batch)
    saved = _keep_everything(family_model)
    try:
        lengths = batch["attention_mask"].sum(-1)
        for removal in ("none", "masked", "packed"):
            out = family_model(**batch, removal=removal)
            assert torch.allclose(out.logits, expected, atol=1e-5), removal
            assert torch.equal(out.kept_lengths, lengths[:, None].expand(-1, LAYERS)), removal
        single = {k: v[:1, : int(lengths[0])] for k, v in batch.items()}  # batch 1, no padding
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
def test_packed_equals_masked_on_random_cps(family_model, batch, spread_cps):
    saved = [p.detach().clone() for p in family_model.predictors.parameters()]
    try:
        for seed in range(3):
            torch.manual_seed(100 + seed)
            spread_cps(family_model)
            packed, masked = family_model(**batch, removal="packed"), family_model(**batch, removal="masked")
            assert torch.equal(packed.kept_mask, masked.kept_mask), seed
            assert torch.allclose(packed.logits, masked.logits, atol=1e-5), seed
    finally:
        for parameter, value in zip(family_model.predictors.parameters(), saved):
            parameter.data = value


@torch.no_grad()
def test_an_example_in_a_mixed_length_batch_equals_itself_alone(family_model, batch):
    together = family_model(**batch)
    for row, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        alone = family_model(**{k: v[row : row + 1, :n] for k, v in batch.items()})
        assert torch.equal(alone.kept_mask[0], together.kept_mask[row, :, :n])
        assert torch.allclose(alone.logits[0], together.logits[row], atol=1e-5)


@torch.no_grad()
def test_per_example_factors_equal_scaled_etas_alone(family_model, batch):
    factors = torch.tensor([0.5, 1.0, 1.4, 0.8, 2.0])
    together = family_model(**batch, eta_factors=factors)
    saved = family_model.etas.detach().clone()
    try:
        for row, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
            family_model.etas.data = saved * factors[row]
            alone = family_model(**{k: v[row : row + 1, :n] for k, v in batch.items()})
            assert torch.equal(alone.kept_mask[0], together.kept_mask[row, :, :n])
            assert torch.allclose(alone.logits[0], together.logits[row], atol=1e-5)
    finally:
        family_model.etas.data = saved


def test_save_and_load_round_trip(family_model, batch, tmp_path):
    family_model.save_pretrained(tmp_path)
    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded.family) is type(family_model.family)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family_model.config.model_type
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
    # e_i is what enters layer 1 in the family's own forward (ELECTRA: after its projection)
    captured = []
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


def _position_table_flops(size) -> float:
    """FLOPs of projecting the 2 * span relative embeddings by each layer's position projections
    (one per score term), a per-forward constant of the Hugging Face forward (adapler caches the
    tables at inference): (2 span x H) x (H x H) per term = extra_per_token * H; 0 without
    relative terms."""
    return size.extra_per_token * size.hidden


def test_flops_of_an_unpruned_pass_equal_a_count_of_the_familys_matmuls(family_model, tokenizer):
    """The family's own forward (eager attention, so that every matmul is counted), one example of
    n tokens: the FLOPs of its encoder layers equal L * layer_flops(n) of adapler.flops (GeGLU
    FFN, relative-position terms, sliding layers over all n keys), plus DeBERTa's per-forward
    projections of its position tables."""
    n = 11
    ids = torch.randint(2000, 20000, (1, n))
    inputs = family_model.family.hf_inputs(ids, torch.ones_like(ids), torch.zeros_like(ids))
    backbone = family_model.backbone
    previous = backbone.config._attn_implementation
    # DeBERTa passes its relative-embedding Parameter itself into each layer: the counter's module
    # tracker can not hook a leaf that requires grad, so the count runs on frozen weights
    frozen = [p for p in backbone.parameters() if p.requires_grad]
    backbone.set_attn_implementation("eager")
    try:
        for parameter in frozen:
            parameter.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            backbone(**inputs)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        backbone.set_attn_implementation(previous)
    names = {module: name for name, module in backbone.named_modules()}
    counts = counter.get_flop_counts()
    counted = sum(
        sum(counts[f"{type(backbone).__name__}.{names[layer]}"].values()) for layer in family_model.family.layers
    )
    size = encoder_size(family_model.config, family_model.settings.cp_hidden)
    assert size.num_layers == LAYERS and size.hidden == HIDDEN and size.intermediate == FFN
    assert counted == LAYERS * (float(layer_flops(n, size)) + _position_table_flops(size))


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
    factors = torch.tensor([0.5, 1.0, 1.4, 0.8, 2.0])
    with torch.no_grad():
        expected = family_model(**batch, eta_factors=factors)
    got = onnx_model(**batch, eta_factors=factors)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-4)
    single = encode(tokenizer, sentences[2:3])  # batch 1: the single-example graph
    with torch.no_grad():
        expected = family_model(**single)
    got = onnx_model(**single)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-4)


def _model_type(name: str) -> str:
    """The family of a TINY_BACKBONES entry (its key is a name, not always a model_type)."""
    return TINY_BACKBONES[name](32).config.model_type


def test_every_family_is_registered_once():
    assert len(SUPPORTED_MODEL_TYPES) == len(set(SUPPORTED_MODEL_TYPES))
    for name in TINY_BACKBONES:
        assert _model_type(name) in SUPPORTED_MODEL_TYPES


def test_an_unsupported_family_fails_in_one_line_naming_the_supported_ones():
    with pytest.raises(UnsupportedBackbone) as error:
        family_class(AlbertConfig())
    message = str(error.value)
    assert "\n" not in message and "'albert' is not supported" in message
    assert all(model_type in message for model_type in SUPPORTED_MODEL_TYPES)


def test_the_cli_refuses_an_unsupported_family_with_exit_2(tmp_path, capsys):
    from adapler_cli.main import main

    AlbertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    argv = [
        "train",
        "--set",
        f"model.backbone={tmp_path}",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
        "--set",
        "data.source=rotten_tomatoes",
        "--set",
        "data.limit=24",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapler: error:" in err and "'albert' is not supported" in err
    assert "distilbert" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_adapler_train_end_to_end(name, tokenizer, tmp_path, capsys):
    """``adapler train`` on a tiny random backbone of the family (saved as a plain HF checkpoint)."""
    from adapler_cli.main import main

    torch.manual_seed(0)
    backbone_dir = tmp_path / "backbone"
    backbone = TINY_BACKBONES[name](tokenizer.vocab_size)
    backbone.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    overrides = [
        "name=tiny",
        f"output_dir={tmp_path / 'runs'}",
        f"model.backbone={backbone_dir}",
        *TINY_RUN,
    ]
    assert main(["train", *[arg for item in overrides for arg in ("--set", item)]]) == 0
    result = json.loads(RunLayout(tmp_path / "runs" / "tiny").summary.read_text())
    assert result["dev_flops_speedup"] > 0 and 0.0 <= result["adapler_test_accuracy"] <= 1.0
    trained = AutoConfig.from_pretrained(result["model_dir"])
    assert trained.model_type == _model_type(name)
    assert getattr(trained, "classifier_pooling", None) == getattr(backbone.config, "classifier_pooling", None)
    assert main(["predict", "--model", result["model_dir"], "--runtime", "torch", "A fine film."]) == 0


def test_runtime_auto_picks_torch_for_a_family_without_export_and_says_why_once(
    tokenizer, spread_cps, tmp_path, monkeypatch, capsys
):
    from adapler.backbones.distilbert import DistilBertFamily
    from adapler.inference import Predictor
    from adapler.onnx_export import UnsupportedExport, check_exportable

    model = tiny_family_model("distilbert", tokenizer, spread_cps)
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(DistilBertFamily, "export_unsupported", "its attention is not in the graphs (test)")
    with pytest.raises(UnsupportedExport, match="distilbert: its attention is not in the graphs"):
        check_exportable(model)  # runtime onnx, asked for by name: one line, no wrong answer
    first = Predictor.from_directory(tmp_path, runtime="auto")
    second = Predictor.from_directory(tmp_path, runtime="auto")
    assert isinstance(first.model, AdapLeRForSequenceClassification) and isinstance(
        second.model, AdapLeRForSequenceClassification
    )
    err = capsys.readouterr().err
    assert err.count("runs this model on torch") == 1 and "distilbert: its attention is not in the graphs" in err
    assert first.predict(["A fine film."])[0].label in first.label_names


def test_adapler_predict_runs_a_family_without_export_on_torch(tokenizer, spread_cps, tmp_path, monkeypatch, capsys):
    """The CLI resolves ``--runtime auto`` for the model's own directory (as deploy/app.py and
    adapler calibrate do): a family the graphs can not express runs on torch, said once."""
    from adapler import inference
    from adapler.backbones.distilbert import DistilBertFamily
    from adapler_cli.main import main

    tiny_family_model("distilbert", tokenizer, spread_cps).save_pretrained(tmp_path)
    monkeypatch.setattr(DistilBertFamily, "export_unsupported", "not in the graphs (cli test)")
    monkeypatch.setattr(inference, "_SAID", set())
    assert main(["predict", "--model", str(tmp_path), "A fine film.", "Dull."]) == 0
    out, err = capsys.readouterr()
    assert err.count("runs this model on torch") == 1 and "distilbert: not in the graphs (cli test)" in err
    assert out.count("FLOPs speedup") == 2


@pytest.mark.parametrize("removal", ["packed", "masked"])
def test_layers_see_the_original_positions_of_the_kept_tokens(tokenizer, spread_cps, batch, monkeypatch, removal):
    """What rotary and relative attention read: each kept token's input position, never shifted by
    the tokens removed before it; token_weight marks the kept tokens (mean pooling reads it)."""
    model = tiny_family_model("bert", tokenizer, spread_cps)
    seen = []
    layer = type(model.family).layer

    def recording(self, index, x, rows, qkv):
        seen.append((rows.positions.clone(), rows.token_weight.clone()))
        return layer(self, index, x, rows, qkv)

    monkeypatch.setattr(type(model.family), "layer", recording)
    with torch.no_grad():
        out = model(**batch, removal=removal)
    assert len(seen) == LAYERS
    for index, (positions, weight) in enumerate(seen):
        for row in range(len(batch["input_ids"])):
            kept = out.kept_mask[row, index]
            if removal == "masked":  # the whole grid, removed tokens masked
                assert torch.equal(positions[row], torch.arange(kept.shape[0])) and torch.equal(
                    weight[row].bool(), kept
                )
            else:  # the kept tokens first, in input order, at their input positions
                n = int(kept.sum())
                assert torch.equal(positions[row, :n], kept.nonzero().squeeze(1))
                assert weight[row, :n].all() and not weight[row, n:].any()
