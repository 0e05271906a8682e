"""DeBERTa-v2 and DeBERTa-v3 (``model_type`` "deberta-v2"): disentangled attention.

Layers: ``attention.self.{query,key,value}_proj`` plus the relative-position terms,
``attention.output`` (dense, dropout, LayerNorm of the residual), ``intermediate`` and ``output``
as BERT's: post-norm. A score is

    (q_i . k_j  +  q_i . Pk[r(i, j)]  +  k_j . Pq[r'(i, j)]) / sqrt(d * s)     (c2p, p2c)

where Pk, Pq are the encoder's relative-position embeddings (LayerNorm-ed when
``norm_rel_ebd`` says so) projected by the layer's key and query projections (``share_att_key``,
DeBERTa-v3) or by its own ``pos_key_proj`` / ``pos_query_proj``; r(i, j) is the log-bucketed
relative position ``p_i - p_j`` shifted into [0, 2 * span) and s counts the score terms
(1 + c2p + p2c), all as transformers' ``modeling_deberta_v2`` computes them.

What removal means here: p_i is token i's ORIGINAL input position (``rows.positions``), so the
kept tokens see each other at the relative distances of the full input; removing a token never
shifts the others. Without removal the scores are the Hugging Face forward's.

The projected position tables depend on the weights only: at inference (no autograd, eval mode)
they are computed once per set of weights and cached, so a forward pays the two (T, 2 * span)
score matmuls per layer and head, counted in ``encoder_size`` as FLOPs per token.

Head: the backbone's own ContextPooler (dropout, dense, activation over [CLS]) then dropout and
the classifier. Not handled (one line): the convolution after layer 1 of DeBERTa-v2 xlarge /
xxlarge (``conv_kernel_size``; it mixes neighbouring tokens, removed ones included) and
attention widths other than the hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from adapler.backbones.base import (
    QKV,
    BackboneFamily,
    TokenRows,
    UnsupportedBackbone,
    merge_heads,
    split_heads,
)


class DebertaV2Family(BackboneFamily):
    model_types = ("deberta-v2",)
    attn_implementation = "eager"  # transformers has no SDPA path for DeBERTa
    ort_model_type = None  # ONNX Runtime's transformer optimizer has no disentangled-attention fusion

    def __init__(self, backbone: nn.Module):
        super().__init__(backbone)
        # layer -> (what the tables were computed from, Pk (heads, 2 span, d) | None, Pq | None)
        self._position_tables: dict[int, tuple] = {}

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if getattr(config, "conv_kernel_size", 0) > 0:
            raise UnsupportedBackbone(
                "DeBERTa-v2 with a convolution layer (conv_kernel_size > 0, v2-xlarge/xxlarge) is not supported: "
                "it mixes neighbouring tokens, removed ones included"
            )
        head_size = getattr(config, "attention_head_size", None)
        if head_size is not None and head_size * config.num_attention_heads != config.hidden_size:
            raise UnsupportedBackbone("DeBERTa-v2 attention widths other than hidden_size are not supported")

    @property
    def layers(self) -> nn.ModuleList:
        return self.base_model.encoder.layer

    def embed(self, input_ids, token_type_ids, attention_mask):
        # mask: the backbone's own forward zeroes the embeddings of padding
        return self.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    @property
    def embedding_output(self) -> nn.Module:
        return self.base_model.embeddings

    def qkv_linears(self, index: int) -> tuple[nn.Linear, ...]:
        attn = self.layers[index].attention.self
        return attn.query_proj, attn.key_proj, attn.value_proj

    def layer(self, index: int, x: torch.Tensor, rows: TokenRows, qkv: QKV) -> torch.Tensor:
        layer = self.layers[index]
        attn = layer.attention.self
        q, k, v = split_heads(rows, qkv(x), attn.num_attention_heads)  # (B, heads, T, d) each
        scale = 1.0 / math.sqrt(attn.attention_head_size * _score_terms(attn))  # HF's 1 / sqrt(d * s)
        bias = self._relative_scores(index, q, k, rows.positions) if attn.relative_attention else None
        context = rows.attend(q, k, v, bias=None if bias is None else bias * scale, scale=scale)
        attended = layer.attention.output(merge_heads(rows, context), x)  # dense, dropout, LayerNorm(+ residual)
        return layer.output(layer.intermediate(attended), attended)  # FFN, LayerNorm(+ residual)

    def _relative_scores(
        self, index: int, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor | None:
        """c2p + p2c scores (B, heads, T, T), unscaled, from the slots' original positions (B, T);
        None where pos_att_type has neither term."""
        attn = self.layers[index].attention.self
        encoder = self.base_model.encoder
        span = attn.pos_ebd_size
        relative = positions[:, :, None] - positions[:, None, :]  # (B, T, T) p_i - p_j
        if encoder.position_buckets > 0 and encoder.max_relative_positions > 0:
            relative = make_log_bucket_position(relative, encoder.position_buckets, encoder.max_relative_positions)
        relative = relative.to(torch.long)[:, None]  # (B, 1, T, T)
        shape = (q.shape[0], q.shape[1], q.shape[2], q.shape[2])  # (B, heads, T, T)
        pos_key, pos_query = self._tables(index)
        terms = []
        if pos_key is not None:  # content -> position: q_i . Pk[r(p_i - p_j)]
            c2p = torch.matmul(q, pos_key.transpose(-1, -2))  # (B, heads, T, 2 span)
            terms.append(torch.gather(c2p, -1, torch.clamp(relative + span, 0, 2 * span - 1).expand(shape)))
        if pos_query is not None:  # position -> content: k_j . Pq[-r(p_j - p_i)], as HF (key rows, then transposed)
            p2c = torch.matmul(k, pos_query.transpose(-1, -2))  # (B, heads, T, 2 span)
            index_p2c = torch.clamp(-relative + span, 0, 2 * span - 1).expand(shape)  # HF's [j, i]
            terms.append(torch.gather(p2c, -1, index_p2c).transpose(-1, -2))
        return sum(terms[1:], terms[0]) if terms else None

    def _tables(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Layer ``index``'s projected relative-position tables (heads, 2 span, d): Pk for c2p, Pq
        for p2c (None where pos_att_type leaves the term out). Cached at inference."""
        attn = self.layers[index].attention.self
        encoder = self.base_model.encoder
        if attn.share_att_key:
            key_proj, query_proj = attn.key_proj, attn.query_proj
        else:
            key_proj, query_proj = getattr(attn, "pos_key_proj", None), getattr(attn, "pos_query_proj", None)
        key_proj = key_proj if "c2p" in attn.pos_att_type else None
        query_proj = query_proj if "p2c" in attn.pos_att_type else None
        inference = not torch.is_grad_enabled() and not self.backbone.training
        sources = (encoder.rel_embeddings, getattr(encoder, "LayerNorm", None), key_proj, query_proj)
        if inference:
            stamp = (
                sources,
                tuple((p.data_ptr(), p._version) for m in sources if m is not None for p in m.parameters()),
            )
            cached = self._position_tables.get(index)
            if cached is not None and cached[0] == stamp:
                return cached[1], cached[2]
        table = attn.pos_dropout(encoder.get_rel_embedding())[: attn.pos_ebd_size * 2]  # (2 span, H)

        def project(linear: nn.Module | None) -> torch.Tensor | None:  # (2 span, H) -> (heads, 2 span, d)
            if linear is None:
                return None
            return linear(table).view(table.shape[0], attn.num_attention_heads, -1).transpose(0, 1)

        tables = project(key_proj), project(query_proj)
        if inference:
            self._position_tables[index] = (stamp, *tables)
        return tables

    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        pooled = self.backbone.pooler(rows.first(x)[:, None, :])  # ContextPooler reads position 0
        return self.backbone.classifier(self.backbone.dropout(pooled))

    @classmethod
    def encoder_size(cls, config, cp_hidden: int):
        from adapler.flops import EncoderSize

        return EncoderSize(
            config.num_hidden_layers,
            config.hidden_size,
            config.intermediate_size,
            cp_hidden,
            extra_per_token=relative_flops_per_token(config),
        )

    def attention_dropouts(self) -> list[nn.Dropout]:
        return [layer.attention.self.dropout for layer in self.layers]


def _score_terms(attn: nn.Module) -> int:
    """s of the scale 1 / sqrt(d * s): 1 + c2p + p2c (counted from pos_att_type, as HF does)."""
    return 1 + ("c2p" in attn.pos_att_type) + ("p2c" in attn.pos_att_type)


def relative_flops_per_token(config) -> float:
    """FLOPs per token per layer of the relative-position scores: each of c2p and p2c is a
    (T, d) x (d, 2 span) matmul per head, 2 * H * 2 span per token (the gathers are free)."""
    if not getattr(config, "relative_attention", False):
        return 0.0
    span = config.position_buckets if getattr(config, "position_buckets", -1) > 0 else config.max_relative_positions
    if span < 1:
        span = config.max_position_embeddings
    terms = sum(term in (config.pos_att_type or []) for term in ("c2p", "p2c"))
    return float(terms * 2 * config.hidden_size * 2 * span)
