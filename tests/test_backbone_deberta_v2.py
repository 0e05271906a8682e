"""The DeBERTa-v2/v3 family (adapler.backbones.deberta_v2): the encoder-family contract on tiny
random models, plus what is DeBERTa's own (relative positions are the original ones, FLOPs of the
disentangled terms, the unsupported variants).

The contract cases are written as tests/test_backbones.py writes them (a ``family_model`` fixture
over TINY_BACKBONES): merging them there is adding the entries of TINY_BACKBONES below to its
table (and loading each backbone with its family's attn_implementation: DeBERTa has no SDPA).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, DebertaV2Config, DebertaV2ForSequenceClassification

from adapler.backbones import UnsupportedBackbone, encoder_size, family_class
from adapler.backbones.deberta_v2 import DebertaV2Family
from adapler.batching import encode
from adapler.flops import cp_flops, layer_flops
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import quantize_int8
from adapler.saliency import saliency_of_batch

LAYERS, HIDDEN, HEADS, FFN, LABELS = 3, 32, 4, 48, 3


def _deberta_v3(vocab: int):
    """DeBERTa-v3's layout: log-bucketed positions (8 buckets: the test sentences, up to ~40
    tokens, reach the log range), shared key projections, LayerNorm-ed relative embeddings, no
    absolute positions, no token types."""
    return DebertaV2ForSequenceClassification(
        DebertaV2Config(
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
    )


def _deberta_v2(vocab: int):
    """DeBERTa-v2's older layout: plain relative positions clamped at 16, own position
    projections, absolute positions and token types too."""
    return DebertaV2ForSequenceClassification(
        DebertaV2Config(
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
    )


TINY_BACKBONES = {"deberta-v3": _deberta_v3, "deberta-v2": _deberta_v2}
ETAS = [0.9, 1.1, 1.0]  # with spread random CPs, each layer removes some tokens of the test sentences
WEIGHT_STD = 0.2  # random weights larger than the 0.02 init: logits of order 1, so 1e-5 means something


def tiny_family_model(name: str, tokenizer, spread_cps) -> AdapLeRForSequenceClassification:
    torch.manual_seed(0)
    backbone = TINY_BACKBONES[name](tokenizer.vocab_size)
    backbone.set_attn_implementation(family_class(backbone.config).attn_implementation)
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, WEIGHT_STD)
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


# ---------------------------------------------------------------------------- the family contract
@torch.no_grad()
def test_nothing_removed_is_the_hugging_face_forward(family_model, batch):
    expected = hf_logits(family_model, batch)
    assert expected.abs().max() > 0.1  # logits that a wrong position or scale would move
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
    """Masked removal keeps every token in its input slot (positions 0..T-1); packed removal moves
    the kept tokens together: equal results mean packed reads the original positions."""
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
    assert type(loaded.family) is DebertaV2Family
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "deberta-v2"
    with torch.no_grad():
        expected, got = family_model(**batch), loaded(**batch)
    assert torch.equal(expected.kept_mask, got.kept_mask)
    assert torch.allclose(expected.logits, got.logits, atol=1e-6)


def test_soft_removal_trains_every_part(family_model, batch):
    model = family_model.train()
    try:
        out = model(**batch, removal="soft", temperature=10.0)
        loss = out.logits.logsumexp(-1).sum() + out.soft_lengths.sum()
        loss.backward()
        groups = model.parameter_groups()
        for name in ("backbone", "predictors", "etas"):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in groups[name]), name
        rel_embeddings = model.family.base_model.encoder.rel_embeddings.weight
        assert rel_embeddings.grad is not None and rel_embeddings.grad.abs().sum() > 0  # the position terms train
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_saliency_reads_the_input_of_layer_one(family_model, batch):
    saliency = saliency_of_batch(family_model, batch, torch.zeros(len(batch["input_ids"]), dtype=torch.long))
    assert saliency.shape == batch["input_ids"].shape
    present = batch["attention_mask"].bool()
    assert (saliency[~present] == 0).all() and (saliency[present] > 0).all()
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


def _position_table_flops(config) -> float:
    """FLOPs of projecting the 2 * span relative embeddings by each layer's position projections
    (one per score term): a per-forward constant of HF's forward, cached by adapler at inference."""
    size = encoder_size(config)
    return size.extra_per_token * config.hidden_size  # (2 span x H) x (H x H) per term = extra * H


def test_flops_of_an_unpruned_pass_equal_a_count_of_the_familys_matmuls(family_model):
    """The family's own forward, one example of n tokens: its encoder layers count
    L * layer_flops(n) (relative terms included) plus the per-forward projections of the
    position tables; adapler's packed pass with nothing removed (tables cached) counts exactly
    L * (layer_flops(n) + cp_flops(n)) plus its head's two Linears."""
    n = 11
    ids = torch.randint(2000, 20000, (1, n))
    inputs = family_model.family.hf_inputs(ids, torch.ones_like(ids), torch.zeros_like(ids))
    backbone = family_model.backbone
    # HF passes the relative-embedding Parameter itself into each layer: the counter's module
    # tracker can not hook a leaf that requires grad, so the count runs on frozen weights
    frozen = [p for p in backbone.parameters() if p.requires_grad]
    try:
        for parameter in frozen:
            parameter.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            backbone(**inputs)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    names = {module: name for name, module in backbone.named_modules()}
    counts = counter.get_flop_counts()
    counted = sum(
        sum(counts[f"{type(backbone).__name__}.{names[layer]}"].values()) for layer in family_model.family.layers
    )
    config = family_model.config
    size = encoder_size(config, family_model.settings.cp_hidden)
    assert size.num_layers == LAYERS and size.hidden == HIDDEN and size.intermediate == FFN
    assert size.extra_per_token > 0
    assert counted == LAYERS * (float(layer_flops(n, size)) + _position_table_flops(config))

    saved = _keep_everything(family_model)
    try:
        with torch.no_grad():
            family_model(input_ids=ids)  # fills the position-table cache
            # SDPA's math kernel: made of matmuls the counter sees (it does not count CPU flash attention)
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                out = family_model(input_ids=ids)
    finally:
        family_model.etas.data = saved
    assert int(out.kept_lengths.min()) == n
    head = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * LABELS  # pooler dense, classifier
    assert counter.get_total_flops() == LAYERS * float(layer_flops(n, size) + cp_flops(n, size)) + head


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


# ---------------------------------------------------------------------------- DeBERTa's own
@torch.no_grad()
@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_relative_scores_are_hugging_faces_on_a_long_input(name, tokenizer, spread_cps):
    """On positions 0..99 (far into v3's log buckets, past v2's clamp at 16) the family's c2p + p2c
    scores, scaled, equal HF's disentangled_attention_bias."""
    model = tiny_family_model(name, tokenizer, spread_cps)
    attn = model.family.layers[1].attention.self
    seq, head_dim = 100, HIDDEN // HEADS
    q, k = torch.randn(2, 1, HEADS, seq, head_dim)  # (1, heads, T, d) each
    ours = model.family._relative_scores(1, q, k, torch.arange(seq)[None]) / (3 * head_dim) ** 0.5  # s = 3
    rel_embeddings = model.family.base_model.encoder.get_rel_embedding()
    expected = attn.disentangled_attention_bias(q[0], k[0], None, rel_embeddings, 3)  # (heads, T, T)
    assert torch.allclose(ours[0], expected, atol=1e-5)


@torch.no_grad()
def test_removing_a_token_never_shifts_the_others(tokenizer, spread_cps):
    """Layer 1 over the kept rows of an example equals layer 1 over the full input with the
    removed tokens masked out as keys: the kept tokens attend at their original distances."""
    from adapler.modeling import _GridRows, _SingleRows

    model = tiny_family_model("deberta-v3", tokenizer, spread_cps)
    batch = encode(tokenizer, ["The plot wanders for two hours, the dialogue is stiff, and the score is fine."])
    hidden = model.family.embed(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])[0]  # (T, H)
    seq = hidden.shape[0]
    keep = torch.ones(seq, dtype=torch.bool)
    keep[1:seq:3] = False  # every third token leaves
    qkv = lambda index: lambda h: model._qkv(index, h)
    position = torch.arange(seq)[keep]
    packed = model.family.layer(0, hidden[keep], _SingleRows(position), qkv(0))
    key_bias = torch.where(keep, 0.0, float("-inf"))[None, None, None, :]
    masked = model.family.layer(0, hidden, _GridRows(1, seq, key_bias, keep[None].float()), qkv(0))
    assert torch.allclose(packed, masked[keep], atol=1e-5)
    shifted = model.family.layer(0, hidden[keep], _SingleRows(torch.arange(int(keep.sum()))), qkv(0))
    assert not torch.allclose(shifted, masked[keep], atol=1e-3)  # renumbered positions would differ


def test_relative_flops_per_token_count_both_terms():
    config = DebertaV2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        relative_attention=True,
        position_buckets=256,
        pos_att_type="p2c|c2p",
    )
    size = encoder_size(config)
    assert size.extra_per_token == 2 * (2 * 768 * 512)  # c2p and p2c: (d x 2 span) per head, per token
    one_term = DebertaV2Config(relative_attention=True, max_relative_positions=64, pos_att_type="c2p")
    assert encoder_size(one_term).extra_per_token == 2 * one_term.hidden_size * 128
    assert encoder_size(DebertaV2Config(relative_attention=False)).extra_per_token == 0.0


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"conv_kernel_size": 3}, "convolution"),
        ({"attention_head_size": 8, "hidden_size": 64, "num_attention_heads": 4}, "attention widths"),
    ],
)
def test_unsupported_variants_fail_in_one_line(overrides, words):
    with pytest.raises(UnsupportedBackbone) as error:
        family_class(DebertaV2Config(**overrides))
    assert "\n" not in str(error.value) and words in str(error.value)


@pytest.mark.slow
def test_adapler_train_end_to_end(tokenizer, tmp_path):
    """``adapler train`` on a tiny random DeBERTa-v3 layout (saved as a plain HF checkpoint)."""
    from adapler_cli.main import main

    torch.manual_seed(0)
    backbone_dir = tmp_path / "backbone"
    _deberta_v3(tokenizer.vocab_size).save_pretrained(backbone_dir)
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
    assert AutoConfig.from_pretrained(result["model_dir"]).model_type == "deberta-v2"
    assert main(["predict", "--model", result["model_dir"], "--runtime", "torch", "A fine film."]) == 0
