"""DistilBERT: BERT's post-norm layer under other names, no token types, its own head.

Layers (``transformer.layer``): ``attention.{q_lin,k_lin,v_lin,out_lin}``, ``sa_layer_norm`` of
the residual, ``ffn`` (lin1, activation, lin2, dropout), ``output_layer_norm`` of the residual.
Absolute (learned or sinusoidal) position embeddings are added once in the embeddings. Head: the
backbone's own ``pre_classifier`` (dense) + ReLU + dropout + ``classifier`` over the first token.
"""

from __future__ import annotations

import torch
from torch import nn

from adapler.backbones.base import AbsolutePositionFamily, TokenRows
from adapler.flops import EncoderSize


class DistilBertFamily(AbsolutePositionFamily):
    model_types = ("distilbert",)
    token_types = False

    @property
    def layers(self) -> nn.ModuleList:
        return self.base_model.transformer.layer

    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.base_model.embeddings(input_ids)  # (B, T, H)

    @property
    def embedding_output(self) -> nn.Module:
        return self.base_model.embeddings

    def qkv_linears(self, index: int) -> tuple[nn.Linear, ...]:
        attn = self.layers[index].attention
        return attn.q_lin, attn.k_lin, attn.v_lin

    def head_shape(self, index: int) -> tuple[int, int]:
        attn = self.layers[index].attention
        return attn.n_heads, attn.attention_head_size

    def after_attention(self, index: int, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[index]
        attended = layer.sa_layer_norm(layer.attention.out_lin(context) + x)
        return layer.output_layer_norm(layer.ffn(attended) + attended)

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        pooled = torch.relu(self.backbone.pre_classifier(rows.first(x)))  # (B, H)
        return self.backbone.classifier(self.backbone.dropout(pooled))

    @classmethod
    def encoder_size(cls, config, cp_hidden: int) -> EncoderSize:
        return EncoderSize(config.n_layers, config.dim, config.hidden_dim, cp_hidden)

    def attention_dropouts(self) -> list[nn.Dropout]:
        return [layer.attention.dropout for layer in self.layers]
