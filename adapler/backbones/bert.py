"""BERT and the encoders with its layer layout: RoBERTa, XLM-R, CamemBERT (and BERT checkpoints
such as MiniLM, bge, e5).

Layers: ``attention.self.{query,key,value}``, ``attention.output`` (dense, dropout, LayerNorm of
the residual), ``intermediate`` (dense, GELU) and ``output`` (dense, dropout, LayerNorm of the
residual): post-norm, absolute position embeddings added once in the embeddings. Head: BERT's
pooler (dense + tanh over [CLS]) then dropout and the classifier; RoBERTa's classification head
reads the first token itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapler.backbones.base import MASK_BIAS, QKV, BackboneFamily, TokenRows, UnsupportedBackbone


class BertFamily(BackboneFamily):
    model_types = ("bert", "roberta", "xlm-roberta", "camembert")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise UnsupportedBackbone("only absolute position embeddings are supported")

    @property
    def layers(self) -> nn.ModuleList:
        return self.base_model.encoder.layer

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, H)

    @property
    def embedding_output(self) -> nn.Module:
        return self.base_model.embeddings

    def qkv_linears(self, index: int) -> tuple[nn.Linear, ...]:
        attn = self.layers[index].attention.self
        return attn.query, attn.key, attn.value

    def layer(self, index: int, x: torch.Tensor, rows: TokenRows, qkv: QKV) -> torch.Tensor:
        layer = self.layers[index]
        attn = layer.attention.self
        heads, head_dim = attn.num_attention_heads, attn.attention_head_size
        grid = rows.to_grid(qkv(x))  # (B, T, 3H): one matmul over the rows, one grid
        batch, seq = grid.shape[0], grid.shape[1]
        grid = grid.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, d)
        context = rows.attend(grid[0], grid[1], grid[2])  # (B, heads, T, d)
        context = rows.from_grid(context.transpose(1, 2).reshape(batch, seq, heads * head_dim))  # (..., N, H)
        attended = layer.attention.output(context, x)  # dense, dropout, LayerNorm(+ residual)
        return layer.output(layer.intermediate(attended), attended)  # FFN, LayerNorm(+ residual)

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        features = rows.first(x)[:, None, :]  # (B, 1, H): the heads read position 0
        if self.config.model_type == "bert":
            pooled = self.base_model.pooler(features)
            return self.backbone.classifier(self.backbone.dropout(pooled))
        return self.backbone.classifier(features)

    @classmethod
    def encoder_size(cls, config, cp_hidden: int):
        from adapler.flops import EncoderSize

        return EncoderSize(config.num_hidden_layers, config.hidden_size, config.intermediate_size, cp_hidden)

    def attention_dropouts(self) -> list[nn.Dropout]:
        return [layer.attention.self.dropout for layer in self.layers]

    def classic_layer(self, index: int) -> nn.Module:
        return ClassicLayer(self.layers[index])


class ClassicLayer(nn.Module):
    """One BERT-layout layer over (B, T, H) in the classic export's op pattern (separate Q/K/V
    MatMuls, scaled scores plus a (1 - mask) * -10000 bias, softmax), which ONNX Runtime's
    transformer optimizer fuses into Attention, SkipLayerNormalization and BiasGelu."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        attn = layer.attention.self
        self.heads, self.head_dim = attn.num_attention_heads, attn.attention_head_size

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H), attention_mask (B, T) 1 for tokens, 0 for padding (on the right)."""
        attn = self.layer.attention.self
        batch, seq = hidden.shape[0], hidden.shape[1]
        bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * MASK_BIAS  # (B, 1, 1, T)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, heads, T, d)
            return x.view(batch, seq, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(attn.query(hidden)), split(attn.key(hidden)), split(attn.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias  # (B, heads, T, T)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, heads, T, d)
        context = context.permute(0, 2, 1, 3).reshape(batch, seq, self.heads * self.head_dim)
        attended = self.layer.attention.output(context, hidden)  # dense + LayerNorm(+ residual)
        return self.layer.output(self.layer.intermediate(attended), attended)  # FFN + LayerNorm(+ residual)
