"""BERT and the encoders with its layer layout: RoBERTa, XLM-R, CamemBERT (and BERT checkpoints
such as MiniLM, bge, e5).

Layers: ``attention.self.{query,key,value}``, ``attention.output`` (dense, dropout, LayerNorm of
the residual), ``intermediate`` (dense, GELU) and ``output`` (dense, dropout, LayerNorm of the
residual): post-norm, absolute position embeddings added once in the embeddings. Head: BERT's
pooler (dense + tanh over [CLS]) then dropout and the classifier; RoBERTa's classification head
reads the first token itself.
"""

from __future__ import annotations

import torch
from torch import nn

from adapler.backbones.base import AbsolutePositionFamily, TokenRows, UnsupportedBackbone
from adapler.flops import EncoderSize


class BertFamily(AbsolutePositionFamily):
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

    def head_shape(self, index: int) -> tuple[int, int]:
        attn = self.layers[index].attention.self
        return attn.num_attention_heads, attn.attention_head_size

    def after_attention(self, index: int, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[index]
        attended = layer.attention.output(context, x)  # dense, dropout, LayerNorm(+ residual)
        return layer.output(layer.intermediate(attended), attended)  # FFN, LayerNorm(+ residual)

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        features = rows.first(x)[:, None, :]  # (B, 1, H): the heads read position 0
        if self.config.model_type == "bert":
            pooled = self.base_model.pooler(features)
            return self.backbone.classifier(self.backbone.dropout(pooled))
        return self.backbone.classifier(features)

    @classmethod
    def encoder_size(cls, config, cp_hidden: int) -> EncoderSize:
        return EncoderSize(config.num_hidden_layers, config.hidden_size, config.intermediate_size, cp_hidden)

    def attention_dropouts(self) -> list[nn.Dropout]:
        return [layer.attention.self.dropout for layer in self.layers]
