"""ModernBERT (``model_type`` "modernbert"): pre-norm layers with rotary positions, alternating
global and sliding-window attention, a GeGLU FFN, and a head that pools [CLS] or the mean.

Layers (``model.layers``): ``attn_norm`` (LayerNorm; Identity in layer 0) -> ``attn.Wqkv`` (one
fused Linear, Q, K, V side by side) -> rotary embedding of Q and K -> attention -> ``attn.Wo``
(+ residual); ``mlp_norm`` -> ``mlp`` (``Wi``: H -> 2I, GELU(input) * gate, ``Wo``: I -> H)
(+ residual). Layer l attends globally (``config.layer_types[l]`` "full_attention", every
``global_attn_every_n_layers``-th layer, rope theta ``global_rope_theta``) or within a sliding
window (``"sliding_attention"``, rope theta ``local_rope_theta``). No token type ids; the
embeddings are the token embeddings, a LayerNorm and dropout. Head: ``final_norm`` over the last
layer's tokens, pooling (``config.classifier_pooling``: "cls" the first token, "mean" the mean of
the tokens), ``head`` (dense, activation, LayerNorm), dropout, ``classifier``.

What removal means here:
  * positions: each kept token's rotary embedding is taken at its ORIGINAL input position
    (``rows.positions``), so removing a token never shifts the others: a kept query and key see
    the same relative rotation as in the full input;
  * sliding window: a local layer lets query q see key k iff |pos_q - pos_k| <= local_attention
    // 2 in original positions (the mask of the Hugging Face forward), among the keys still kept;
    a removed token inside the window is simply absent, and the window never widens to reach
    further tokens;
  * mean pooling ("mean") averages the tokens kept at the last layer (``rows.token_weight``:
    those that entered it; the soft masks during soft removal), not the whole input: removed
    tokens have no final state. With nothing removed it is the Hugging Face mean over
    ``attention_mask``. "cls" pooling reads [CLS], which is never removed.

The Hugging Face forward that removal "none" runs is the padded one with ``attn_implementation``
"sdpa" (the path that runs on CPU); ModernBERT's unpadded flash-attention path is GPU-only and is
not the reference here. ONNX Runtime's transformer optimizer has no ModernBERT fusion (optimum
#2177): the graphs are exported unfused (``ort_model_type`` None) and run with ONNX Runtime's
generic graph optimizations.

FLOPs (:mod:`adapler.flops`): Q/K/V, attention output, the gated FFN (H -> 2I, I -> H:
``gated_ffn``) and the attention matmuls over all kept keys (a sliding window is computed as a
mask, so it costs n^2 as a global layer does). The rotary embedding (elementwise multiply-adds on
Q and K, as LayerNorm and GELU) is not counted.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

from adapler.backbones.base import MASK_BIAS, QKV, BackboneFamily, TokenRows, UnsupportedBackbone

SLIDING = "sliding_attention"  # config.layer_types value of a local (sliding-window) layer
# rope types whose frequencies depend on the sequence length: the cut would change them
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class ModernBertFamily(BackboneFamily):
    model_types = ("modernbert",)
    token_types = False
    ort_model_type = None  # ONNX Runtime's optimizer does not fuse ModernBERT: exported unfused

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        for layer_type, rope in (getattr(config, "rope_parameters", None) or {}).items():
            rope_type = (rope or {}).get("rope_type", "default")
            if any(kind in rope_type for kind in LENGTH_DEPENDENT_ROPE):
                raise UnsupportedBackbone(
                    f"ModernBERT with rope_type {rope_type!r} ({layer_type}) is not supported: its frequencies "
                    "depend on the sequence length, which token removal changes"
                )

    @property
    def layers(self) -> nn.ModuleList:
        return self.base_model.layers

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.base_model.embeddings(input_ids=input_ids)  # (B, T, H): token embedding, norm, dropout

    @property
    def embedding_output(self) -> nn.Module:
        return self.base_model.embeddings

    def qkv_linears(self, index: int) -> tuple[nn.Linear, ...]:
        return (self.layers[index].attn.Wqkv,)

    def layer(self, index: int, x: torch.Tensor, rows: TokenRows, qkv: QKV) -> torch.Tensor:
        layer = self.layers[index]
        heads, head_dim = self.num_heads, layer.attn.head_dim
        layer_type = self.config.layer_types[index]
        grid = rows.to_grid(qkv(layer.attn_norm(x)))  # (B, T, 3H): pre-norm, one matmul over the rows
        batch, seq = grid.shape[0], grid.shape[1]
        grid = grid.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, d)
        positions = rows.positions  # (B, T) original input positions
        cos, sin = rows.cached(  # (B, T, d) each
            ("rotary", layer_type, grid.dtype), lambda: self.base_model.rotary_emb(grid, positions, layer_type)
        )
        q, k = apply_rotary_pos_emb(grid[0], grid[1], cos, sin)  # (B, heads, T, d)
        window = (
            rows.cached(("window", x.dtype), lambda: self.sliding_window_bias(positions, x.dtype))
            if layer_type == SLIDING
            else None
        )
        context = rows.attend(q, k, grid[2], window, scale=head_dim**-0.5)  # (B, heads, T, d)
        context = rows.from_grid(context.transpose(1, 2).reshape(batch, seq, heads * head_dim))  # (..., N, H)
        x = x + layer.attn.out_drop(layer.attn.Wo(context))
        return x + layer.mlp(layer.mlp_norm(x))  # GeGLU FFN, pre-norm (+ residual)

    def sliding_window_bias(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, T) original positions -> (B, 1, T, T) additive mask: 0 where |pos_q - pos_k| <=
        local_attention // 2, else MASK_BIAS. Finite, so that a padding or removed query whose
        window holds no kept key still gets a finite (unused) row: never NaN, which would reach the
        mean pooling through a zero weight; every kept query sees itself."""
        distance = (positions[:, :, None] - positions[:, None, :]).abs()  # (B, T, T)
        inside = distance <= self.config.local_attention // 2
        return torch.where(inside, 0.0, MASK_BIAS).to(dtype)[:, None]

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        x = self.base_model.final_norm(x)  # (..., N, H), per token
        if self.config.classifier_pooling == "mean":
            weight = rows.token_weight.to(x.dtype)[..., None]  # (B, T, 1): the tokens kept at the last layer
            pooled = (rows.to_grid(x) * weight).sum(1) / weight.sum(1)  # (B, H)
        else:
            pooled = rows.first(x)  # (B, H): [CLS]
        return self.backbone.classifier(self.backbone.drop(self.backbone.head(pooled)))

    @classmethod
    def encoder_size(cls, config, cp_hidden: int):
        from adapler.flops import EncoderSize

        return EncoderSize(
            config.num_hidden_layers, config.hidden_size, config.intermediate_size, cp_hidden, gated_ffn=True
        )

    def attention_dropouts(self) -> list:
        return [AttentionDropoutRate(layer.attn) for layer in self.layers]


class AttentionDropoutRate:
    """ModernBERT's attention-probability dropout is a rate on the attention module (passed to
    its attention function), not an nn.Dropout: this exposes it as ``p`` like one, so that the
    stage-1 setting (adapler.training.attention_dropout) reaches the backbone's own forward."""

    def __init__(self, attention: nn.Module):
        self.attention = attention

    @property
    def p(self) -> float:
        return self.attention.attention_dropout

    @p.setter
    def p(self, value: float) -> None:
        self.attention.attention_dropout = value
