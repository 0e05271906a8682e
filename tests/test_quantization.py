"""int8 dynamic quantization (adapler.quantization): which layers, close to float, works with removal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapler.quantization import maybe_quantize, quantize_int8


def _float_linears(module: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in module.modules())


def test_linear_layers_become_int8_except_the_predictors(minilm):
    quantized = quantize_int8(minilm)
    assert _float_linears(quantized.backbone) == 0  # encoder, pooler, classifier: all int8
    assert _float_linears(quantized.predictors) == 2 * minilm.num_layers  # CPs stay float
    assert len(quantized.fused_qkv) == minilm.num_layers
    assert quantized.fused_qkv[0].weight().dtype == torch.qint8
    assert _float_linears(minilm.backbone) > 0 and minilm.fused_qkv is None  # the original is untouched


@torch.no_grad()
def test_int8_stays_close_to_float_in_every_removal_mode(minilm, sentence_batch):
    quantized = quantize_int8(minilm)
    reference = minilm(**sentence_batch, removal="none").logits
    for removal in ("none", "masked", "packed"):
        logits = quantized(**sentence_batch, removal=removal).logits
        if removal == "none":
            # int8 error only: per-row weight scales keep it within a few hundredths here
            assert torch.allclose(logits, reference, atol=0.05), (logits - reference).abs().max()
        else:
            assert torch.isfinite(logits).all() and logits.shape == reference.shape


@torch.no_grad()
def test_int8_packed_removes_tokens_as_the_float_model_does(minilm, sentence_batch):
    """The CPs stay float; their inputs move a little, so the kept counts may differ by a token."""
    with torch.no_grad():
        minilm.etas.fill_(1.0)  # a real cut at every layer
        for predictor in minilm.predictors:
            predictor.net[2].weight.mul_(20.0)  # spread scores: few tokens sit at the threshold
    float_kept = minilm(**sentence_batch, removal="packed").kept_lengths
    int8 = quantize_int8(minilm)(**sentence_batch, removal="packed")
    assert (float_kept < sentence_batch["attention_mask"].sum(-1, keepdim=True)).any()  # it does remove
    assert (int8.kept_lengths - float_kept).abs().max() <= 1
    masked = quantize_int8(minilm)(**sentence_batch, removal="masked")
    assert torch.equal(masked.kept_lengths[:, 0], int8.kept_lengths[:, 0])  # layer 1 sees the same input


def test_a_quantized_model_is_not_saved(minilm, tmp_path):
    with pytest.raises(ValueError, match="not saved"):
        quantize_int8(minilm).save_pretrained(tmp_path)


def test_maybe_quantize_checks_its_argument(minilm):
    assert maybe_quantize(minilm, "none") is minilm
    with pytest.raises(ValueError, match="quantize must be one of"):
        maybe_quantize(minilm, "int4")
