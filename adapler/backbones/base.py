"""The interface between the removal loop and an encoder family.

The removal loop (:mod:`adapler.modeling`), saliency, FLOPs, ONNX export and int8 quantization
never read a family's module names; they call a :class:`BackboneFamily`, bound to one Hugging
Face ``...ForSequenceClassification`` model and reading that model's own weights:

  embed(input_ids, token_type_ids, attention_mask) -> (B, T, H)  the input of layer 1 (CP_1's too)
  embedding_output                  the module whose forward output that is (saliency hooks it)
  qkv_linears(l)                    the Linear(s) whose outputs side by side are Q, K, V of layer l
  layer(l, x, rows, qkv)            layer l over token rows x (..., N, H) -> (..., N, H)
  classify(x, rows)                 the backbone's own head over the final rows -> (B, C)
  encoder_size(config, cp_hidden)   the layer shapes the FLOPs count (adapler.flops.EncoderSize)
  attention_dropouts()              the attention-probability dropouts (switched off in stage 2)

A layer sees its tokens as rows: ``x`` holds N token rows (the kept tokens of a whole batch, or
the full padded grid), and :class:`TokenRows` says where each row sits in the (B, T) grid that
attention runs on, and at which ORIGINAL input position (a removed token never shifts the
positions of the others: rotary and relative attention read these, as absolute embeddings read
the input positions once, in ``embed``). The same ``layer`` code runs in torch (SDPA over a
scattered grid) and inside the exported ONNX graph (a gathered grid and the classic
MatMul/Softmax pattern): only the TokenRows implementation differs.

Adding a family is one module in this package with a subclass of BackboneFamily listed in
``adapler.backbones.FAMILIES``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from adapler.flops import EncoderSize

MASK_BIAS = -10000.0  # the classic BERT export's additive key mask: the pattern ONNX Runtime fuses


class UnsupportedBackbone(ValueError):
    """The checkpoint is not an encoder family this package knows how to prune (one line)."""


class TokenRows(ABC):
    """Where the N token rows of ``x`` (..., N, C) sit in the (B, T) grid attention runs on.

    ``x`` is (N, C) in torch and (1, N, C) in the exported graph (so that its Linears export as
    the MatMul + Add pattern ONNX Runtime fuses); layer code only indexes the last two axes.
    """

    @abstractmethod
    def to_grid(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., N, C) -> (B, T, C); padding slots hold anything finite (attention masks them)."""

    @abstractmethod
    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (..., N, C): the rows back, in the order of ``x``."""

    @abstractmethod
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """Attention on the grid: q, k, v (B, heads, T, d) -> (B, heads, T, d). Keys that are padding
        or removed are masked here; ``bias`` (B or 1, heads or 1, T, T) adds the family's own score
        terms (relative positions, a sliding window's mask); ``scale`` multiplies q.k (default
        1/sqrt(d))."""

    @property
    @abstractmethod
    def positions(self) -> torch.Tensor:
        """(B, T) int64: the original input position of the token in each grid slot (padding: any)."""

    @property
    @abstractmethod
    def token_weight(self) -> torch.Tensor:
        """(B, T) float: how much each slot counts as a token for pooling (1 kept, 0 padding or
        removed; the soft mask m during soft removal)."""

    @abstractmethod
    def first(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, H) -> (B, H): each example's first row, its [CLS] (never removed)."""

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per token layout: what depends only on where the rows sit (rotary
        tables, a sliding window's mask) is computed by the first layer that sees these rows and
        reused by the next ones while no token leaves (the removal loops keep the rows object
        then)."""
        store = self.__dict__.setdefault("_cached", {})
        if key not in store:
            store[key] = compute()
        return store[key]


QKV = Callable[[torch.Tensor], torch.Tensor]  # (..., N, H) -> (..., N, 3 * heads * d): Q, K, V side by side


class BackboneFamily(ABC):
    """One encoder family, bound to one ``...ForSequenceClassification`` model (``backbone``)."""

    model_types: ClassVar[tuple[str, ...]]  # the config.model_type values this family handles
    token_types: ClassVar[bool] = True  # the HF forward takes token_type_ids
    # ONNX Runtime transformer optimizer's model_type for the exported graphs; None: exported
    # unfused (ONNX Runtime's generic graph optimizations only).
    ort_model_type: ClassVar[str | None] = "bert"
    # Why the graphs of adapler.onnx_export can not express this family (None: they can).
    export_unsupported: ClassVar[str | None] = None
    # The attention implementation the backbone is loaded with (its own forward: removal "none",
    # stage 1, saliency): the fastest one the family's transformers code has.
    attn_implementation: ClassVar[str] = "sdpa"

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone  # checked by adapler.backbones.family_class

    @classmethod
    def check(cls, config) -> None:
        """UnsupportedBackbone (one line) for a configuration of this family that is not handled."""
        if getattr(config, "is_decoder", False):
            raise UnsupportedBackbone("decoder configurations are not supported")

    @property
    def config(self):
        return self.backbone.config

    @property
    def base_model(self) -> nn.Module:
        """The backbone's base model (e.g. BertModel): embeddings and encoder layers."""
        return getattr(self.backbone, self.backbone.base_model_prefix)

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The encoder layers, in order."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def hf_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> dict[str, torch.Tensor | None]:
        """The keyword arguments of the backbone's own forward (removal "none")."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            inputs["token_type_ids"] = token_type_ids
        return inputs

    @abstractmethod
    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, H): what enters layer 1, as the backbone's own forward computes it."""

    @property
    @abstractmethod
    def embedding_output(self) -> nn.Module:
        """The module whose forward returns ``embed``'s output in the backbone's own forward
        (saliency's e_i: gradient x input is taken there)."""

    @abstractmethod
    def qkv_linears(self, index: int) -> tuple[nn.Linear, ...]:
        """Layer ``index``'s projections whose outputs, concatenated, are Q, K and V (one fused
        Linear, or three): the loop fuses (and int8 quantizes) them into one matmul."""

    @abstractmethod
    def layer(self, index: int, x: torch.Tensor, rows: TokenRows, qkv: QKV) -> torch.Tensor:
        """Layer ``index`` over token rows x (..., N, H) -> (..., N, H), from the backbone's own
        modules. ``qkv`` is the fused Q/K/V projection of this layer (applied by the family to
        whatever its attention reads: x, or a pre-norm of x)."""

    @abstractmethod
    def classify(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        """Logits (B, C) from the final rows x (..., N, H) through the backbone's own head
        (first-token heads read ``rows.first(x)``; pooling heads weigh by ``rows.token_weight``)."""

    @classmethod
    @abstractmethod
    def encoder_size(cls, config, cp_hidden: int) -> EncoderSize:
        """adapler.flops.EncoderSize of this family's layers, from its config's field names."""

    def attention_dropouts(self) -> list[nn.Dropout]:
        """The attention-probability dropout modules of the backbone's own forward."""
        return []

    def classic_layer(self, index: int) -> nn.Module | None:
        """Optional: layer ``index`` as an nn.Module over (B, T, H) with a (B, T) attention mask,
        written in the op pattern ONNX Runtime's optimizer fuses into its Attention kernel (the
        exported plain-backbone graph). None: that graph runs ``layer`` over packed rows instead."""
        return None


class AbsolutePositionFamily(BackboneFamily):
    """A family whose layers attend by plain scaled dot products, positions having been added once
    in ``embed`` (BERT, DistilBERT, ELECTRA): a layer is fused Q/K/V, attention on the grid, then
    ``after_attention`` (output projection, residuals, norms, FFN). Such a layer is also written in
    the classic export pattern (:class:`ClassicLayer`) that ONNX Runtime fuses."""

    @abstractmethod
    def head_shape(self, index: int) -> tuple[int, int]:
        """(heads, head_dim) of layer ``index``'s attention."""

    @abstractmethod
    def after_attention(self, index: int, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The rest of layer ``index``: context (..., N, heads * d) and the layer input x -> output."""

    def layer(self, index: int, x: torch.Tensor, rows: TokenRows, qkv: QKV) -> torch.Tensor:
        heads, head_dim = self.head_shape(index)
        grid = rows.to_grid(qkv(x))  # (B, T, 3 * heads * d): one matmul over the rows, one grid
        batch, seq = grid.shape[0], grid.shape[1]
        grid = grid.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, d)
        context = rows.attend(grid[0], grid[1], grid[2])  # (B, heads, T, d)
        context = rows.from_grid(context.transpose(1, 2).reshape(batch, seq, heads * head_dim))  # (..., N, H)
        return self.after_attention(index, context, x)

    def classic_layer(self, index: int) -> nn.Module:
        return ClassicLayer(self, index)


class ClassicLayer(nn.Module):
    """Layer ``index`` of an AbsolutePositionFamily over (B, T, H), in the classic export's op
    pattern (separate Q/K/V MatMuls, scaled scores plus a (1 - mask) * -10000 bias, softmax), which
    ONNX Runtime's transformer optimizer fuses into Attention, SkipLayerNormalization, BiasGelu."""

    def __init__(self, family: AbsolutePositionFamily, index: int):
        super().__init__()
        self.family, self.index = family, index
        self.heads, self.head_dim = family.head_shape(index)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H), attention_mask (B, T) 1 for tokens, 0 for padding (on the right)."""
        query, key, value = self.family.qkv_linears(self.index)
        batch, seq = hidden.shape[0], hidden.shape[1]
        bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * MASK_BIAS  # (B, 1, 1, T)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, heads, T, d)
            return x.view(batch, seq, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(query(hidden)), split(key(hidden)), split(value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias  # (B, heads, T, T)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, heads, T, d)
        context = context.permute(0, 2, 1, 3).reshape(batch, seq, self.heads * self.head_dim)
        return self.family.after_attention(self.index, context, hidden)


def fuse_linears(linears: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights (out_total, in) and bias (out_total,) or None of Linears applied side by side."""
    weight = torch.cat([m.weight for m in linears])
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return weight, None
    bias = torch.cat([b if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(linears, biases)])
    return weight, bias


def fused_linear(linears: tuple[nn.Linear, ...]) -> nn.Linear:
    """A new float nn.Linear computing the given Linears side by side (a copy of their weights)."""
    weight, bias = fuse_linears(linears)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def split_heads(
    rows: TokenRows, projected: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V side by side on the rows (..., N, 3 * heads * d) -> each (B, heads, T, d) on the
    grid: one matmul over the rows (the fused projection), one scatter into the grid."""
    grid = rows.to_grid(projected)  # (B, T, 3 * heads * d)
    batch, seq = grid.shape[0], grid.shape[1]  # traced as the graph's own sizes
    grid = grid.view(batch, seq, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, d)
    return grid[0], grid[1], grid[2]


def merge_heads(rows: TokenRows, context: torch.Tensor) -> torch.Tensor:
    """Attention's output (B, heads, T, d) -> the rows (..., N, heads * d)."""
    return rows.from_grid(context.transpose(1, 2).flatten(2))
