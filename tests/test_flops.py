"""FLOPs accounting (spec section 6) against hand formulas."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import BertConfig

from adapler.backbones import encoder_size
from adapler.flops import (
    EncoderSize,
    adapler_flops,
    backbone_flops,
    cp_flops,
    flops_speedup,
    layer_flops,
    retention,
)

BERT_BASE = EncoderSize(num_layers=12, hidden=768, intermediate=3072)
MINILM = EncoderSize(num_layers=6, hidden=384, intermediate=1536)


def test_bert_base_matches_spec_formula():
    n, H = 128, 768
    assert float(layer_flops(n, BERT_BASE)) == 24 * n * H**2 + 4 * n**2 * H
    assert float(backbone_flops(n, BERT_BASE)) == 12 * (24 * n * H**2 + 4 * n**2 * H)
    assert float(backbone_flops(n, BERT_BASE)) == 22_347_251_712


def test_minilm_sizes():
    n, H = 37, 384
    assert float(backbone_flops(n, MINILM)) == 6 * (24 * n * H**2 + 4 * n**2 * H)


def test_non_4h_intermediate_by_hand():
    size = EncoderSize(num_layers=2, hidden=10, intermediate=7, cp_hidden=3)
    n = 5
    # Q,K,V: 3 * 2*n*H*H = 3000; attn out: 2*n*H*H = 1000; FFN: 2*n*H*I + 2*n*I*H = 1400; attention 4*n^2*H = 1000
    assert float(layer_flops(n, size)) == 3000 + 1000 + 1400 + 1000
    assert float(backbone_flops(n, size)) == 2 * 6400
    # CP: Linear(10, 3) -> 2*n*H*c = 300, Linear(3, 1) -> 2*n*c = 30
    assert float(cp_flops(n, size)) == 330


def test_cp_flops_formula_and_arrays():
    n = np.array([1, 64, 300])
    H, c = 768, 32
    np.testing.assert_array_equal(cp_flops(n, BERT_BASE), 2 * n * H * c + 2 * n * c)
    np.testing.assert_array_equal(layer_flops(n, BERT_BASE), 24 * n * H**2 + 4 * n**2 * H)


def test_from_config():
    size = encoder_size(BertConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=50), cp_hidden=8)
    assert size == EncoderSize(3, 32, 50, 8)


def test_adapler_without_removal_is_backbone_plus_cps():
    n0 = np.array([10, 128, 57])
    kept = np.repeat(n0[:, None], 12, axis=1)
    expected = backbone_flops(n0, BERT_BASE) + 12 * cp_flops(n0, BERT_BASE)
    np.testing.assert_allclose(adapler_flops(n0, kept, BERT_BASE), expected, rtol=0, atol=0)
    assert flops_speedup(n0, kept, BERT_BASE) < 1.0  # CPs cost a little


def test_adapler_flops_and_speedup_by_hand():
    size = EncoderSize(num_layers=2, hidden=10, intermediate=40, cp_hidden=2)

    def layer(n):  # 24nH^2 + 4n^2H with H = 10, I = 4H
        return 2400 * n + 40 * n * n

    def cp(n):  # 2nHc + 2nc
        return 40 * n + 4 * n

    n0 = [8, 4]
    kept = [[5, 2], [4, 1]]
    # example 0: CP_1 scores 8, layer 1 runs 5; CP_2 scores 5, layer 2 runs 2
    a0 = cp(8) + layer(5) + cp(5) + layer(2)
    a1 = cp(4) + layer(4) + cp(4) + layer(1)
    assert (a0, a1) == (18532, 13032)
    np.testing.assert_allclose(adapler_flops(n0, kept, size), [a0, a1])
    b = 2 * layer(8) + 2 * layer(4)
    assert flops_speedup(n0, kept, size) == pytest.approx(b / (a0 + a1), rel=1e-12)
    assert flops_speedup(n0, kept, size) == pytest.approx(64000 / 31564, rel=1e-12)


def test_retention():
    n0 = [10, 4]
    kept = [[5, 2], [4, 1]]
    np.testing.assert_allclose(retention(n0, kept), [(0.5 + 1.0) / 2, (0.2 + 0.25) / 2])


@pytest.mark.parametrize("shape", [(3, 11), (2, 12), (3,), (3, 12, 1)])
def test_wrong_kept_shape_raises(shape):
    n0 = np.array([10, 20, 30])
    with pytest.raises(ValueError, match="kept_lengths"):
        adapler_flops(n0, np.ones(shape), BERT_BASE)
