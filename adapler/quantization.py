"""int8 for CPU inference: torch dynamic quantization of the encoder's linear layers.

Dynamic quantization stores each ``nn.Linear`` weight as int8 (one scale per output row) and
quantizes the activations on the fly, per batch: no calibration data, and it composes with
token removal because it changes *how* a layer multiplies, not *which* tokens it sees. The
packed path multiplies Q, K and V in one fused (N, 3H) projection; :func:`quantize_int8` builds
that fused layer once from the float weights, before quantizing, so the fused matrix is
quantized as a whole.

What stays float, and why:
  * the Contribution Predictors: small (H x c) and they decide which tokens leave, so int8
    noise there would change the kept sets, not only the logits;
  * embeddings, LayerNorms, softmax and attention itself (not ``nn.Linear``).

This is an inference-time transform: the saved model stays fp32 safetensors, and a quantized
model is made again from it at load time (``--quantize int8``). ``torch.ao.quantization`` is
deprecated upstream in favour of torchao but still ships with torch 2.13 (the version pinned
here); the deprecation notice is silenced.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from adapler.backbones.base import fused_linear
from adapler.modeling import AdapLeRForSequenceClassification

QUANTIZE_CHOICES = ("none", "int8")


def fused_qkv(model: AdapLeRForSequenceClassification) -> nn.ModuleList:
    """One float nn.Linear(H, 3H) per layer with the Q, K, V weights of that layer stacked."""
    return nn.ModuleList(fused_linear(model.family.qkv_linears(index)) for index in range(model.num_layers))


def quantize_int8(model: AdapLeRForSequenceClassification) -> AdapLeRForSequenceClassification:
    """An int8 copy of a model for CPU inference (the original is left untouched)."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on CPU only; load the model with device cpu")
    quantized = copy.deepcopy(model).eval()
    quantized.fused_qkv = fused_qkv(quantized)
    predictors = quantized.predictors
    quantized.predictors = nn.ModuleList()  # kept out of quantize_dynamic: they stay float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice (see the module docstring)
        torch.ao.quantization.quantize_dynamic(
            quantized, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=True
        )  # int8 weights with one scale per output row
    quantized.predictors = predictors
    quantized.quantized = "int8"
    return quantized


def maybe_quantize(model: AdapLeRForSequenceClassification, quantize: str) -> AdapLeRForSequenceClassification:
    """``quantize`` is "none" (the model as is) or "int8"."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    return quantize_int8(model) if quantize == "int8" else model
