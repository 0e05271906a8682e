"""What is DeBERTa-v2/v3's own (adapler.backbones.deberta_v2): relative positions are the original
ones, FLOPs of the disentangled terms, the unsupported variants. The contract every family keeps
runs on DeBERTa's v2 and v3 layouts in tests/test_backbones.py (entries deberta-v2, deberta-v3).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import DebertaV2Config

from adapler.backbones import UnsupportedBackbone, encoder_size, family_class
from adapler.batching import encode
from adapler.flops import cp_flops, layer_flops
from test_backbones import HEADS, HIDDEN, LABELS, LAYERS, TINY_BACKBONES, tiny_family_model

DEBERTA = sorted(name for name in TINY_BACKBONES if name.startswith("deberta"))


def test_the_position_table_trains(tokenizer, spread_cps, sentences):
    """Soft removal (training) reaches the relative embeddings: the position terms train."""
    model = tiny_family_model("deberta-v3", tokenizer, spread_cps).train()
    out = model(**encode(tokenizer, sentences), removal="soft", temperature=10.0)
    out.logits.logsumexp(-1).sum().backward()
    rel_embeddings = model.family.base_model.encoder.rel_embeddings.weight
    assert rel_embeddings.grad is not None and rel_embeddings.grad.abs().sum() > 0


def test_adaplers_packed_pass_counts_its_layers_and_cps_once(tokenizer, spread_cps):
    """adapler's packed pass with nothing removed, position tables cached: exactly
    L * (layer_flops(n) + cp_flops(n)) plus its head's two Linears (no per-pass table term)."""
    model = tiny_family_model("deberta-v3", tokenizer, spread_cps)
    model.etas.data.zero_()  # threshold 0: every token stays
    n = 11
    ids = torch.randint(2000, 20000, (1, n))
    with torch.no_grad():
        model(input_ids=ids)  # fills the position-table cache
        # SDPA's math kernel: made of matmuls the counter sees (it does not count CPU flash attention)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = model(input_ids=ids)
    assert int(out.kept_lengths.min()) == n
    size = encoder_size(model.config, model.settings.cp_hidden)
    assert size.extra_per_token > 0
    head = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * LABELS  # pooler dense, classifier
    assert counter.get_total_flops() == LAYERS * float(layer_flops(n, size) + cp_flops(n, size)) + head


@torch.no_grad()
@pytest.mark.parametrize("name", DEBERTA)
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
