"""FLOPs accounting (spec section 6), computed from the loaded config's real sizes.

A multiply-add counts as 2 FLOPs. Per encoder layer with n tokens, hidden H, FFN width I:
  dense     = 2nH * 3H (Q, K, V) + 2nH * H (attention output) + 2nH * I + 2nI * H (FFN)
            = 8nH^2 + 4nHI          (= 24nH^2 when I = 4H, the spec's figure)
              a gated FFN (GeGLU) projects H -> 2I: 8nH^2 + 6nHI
  attention = 2n^2H (Q K^T) + 2n^2H (probabilities x V) = 4n^2H
              (a sliding window computed as a mask over all n keys still costs n^2)
  extra     = e * n                 (a family's further per-token terms, e.g. relative positions)
  CP        = 2nH * c + 2nc         (Linear(H, c) and Linear(c, 1), c = cp_hidden)
Embeddings, pooler and classifier are the same for both models and left out, as in the paper.
Each encoder family builds its EncoderSize from its config (adapler.backbones.encoder_size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncoderSize:
    num_layers: int
    hidden: int
    intermediate: int
    cp_hidden: int = 32
    gated_ffn: bool = False  # the FFN's input projection is H -> 2I, gate and value (GeGLU)
    extra_per_token: float = 0.0  # further FLOPs per token per layer (e.g. DeBERTa's c2p and p2c scores)


def layer_flops(n, size: EncoderSize):
    """FLOPs of one encoder layer over n tokens (n: number or array)."""
    n = np.asarray(n, dtype=np.float64)
    h, i = size.hidden, size.intermediate
    ffn_in = 2 * i if size.gated_ffn else i
    dense = 8 * n * h * h + 2 * n * h * ffn_in + 2 * n * i * h
    attention = 4 * n * n * h
    return dense + attention + size.extra_per_token * n


def cp_flops(n, size: EncoderSize):
    """FLOPs of one Contribution Predictor scoring n tokens."""
    n = np.asarray(n, dtype=np.float64)
    return 2 * n * size.hidden * size.cp_hidden + 2 * n * size.cp_hidden


def backbone_flops(input_lengths, size: EncoderSize) -> np.ndarray:
    """FLOPs of the plain backbone per example: every layer sees all n_0 unpadded tokens."""
    return size.num_layers * layer_flops(input_lengths, size)


def adapler_flops(input_lengths, kept_lengths, size: EncoderSize) -> np.ndarray:
    """FLOPs of AdapLeR per example.

    input_lengths: (N,) unpadded lengths n_0; kept_lengths: (N, L) tokens entering each layer
    n_1..n_L. Layer l runs on n_l tokens; its CP scored the n_{l-1} tokens present before the cut.
    """
    n0 = np.asarray(input_lengths, dtype=np.float64)
    kept = np.asarray(kept_lengths, dtype=np.float64)
    if kept.ndim != 2 or kept.shape != (n0.shape[0], size.num_layers):
        raise ValueError(f"kept_lengths must be (N, {size.num_layers}), got {kept.shape}")
    before_cut = np.concatenate([n0[:, None], kept[:, :-1]], axis=1)  # (N, L): n_{l-1}
    return (layer_flops(kept, size) + cp_flops(before_cut, size)).sum(axis=1)


def flops_speedup(input_lengths, kept_lengths, size: EncoderSize) -> float:
    """Sum over the set of backbone FLOPs / sum of AdapLeR FLOPs (spec section 6)."""
    return float(backbone_flops(input_lengths, size).sum() / adapler_flops(input_lengths, kept_lengths, size).sum())


def input_budget_gain(full_lengths, budget_lengths, size: EncoderSize) -> float:
    """Backbone FLOPs on the full inputs over backbone FLOPs on the same inputs cut to a shorter
    budget (both (N,) token counts): the factor that turns a speedup measured at the budget into
    one against the full-length backbone (the speedup of a ratio of sums: it multiplies)."""
    return float(backbone_flops(full_lengths, size).sum() / backbone_flops(budget_lengths, size).sum())


def retention(input_lengths, kept_lengths) -> np.ndarray:
    """Per layer, the fraction of input tokens entering it, averaged over examples: (L,)."""
    n0 = np.asarray(input_lengths, dtype=np.float64)
    kept = np.asarray(kept_lengths, dtype=np.float64)
    return (kept / n0[:, None]).mean(axis=0)
