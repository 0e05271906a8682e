"""Export an AdapLeR model to ONNX graphs that ONNX Runtime runs with hard token removal.

Three graphs per model:

  adapler.onnx    (input_ids, attention_mask, token_type_ids (B, T) int64, thresholds (B, L) float)
                  -> logits (B, C), kept (B, L, T) bool: token t of the input enters layer l.
                  Removal inside the graph, by the rule of the torch packed path (spec section 5):
                  at layer l, token i stays iff softmax(CP_l)_i >= thresholds[b, l] / n_b (n_b the
                  tokens present), [CLS] always, no re-insertion. The kept tokens are packed,
                  (1, N_l, H) with no padding, for every dense layer (Q/K/V, attention output,
                  FFN); only attention gathers them into the batch's grid (B, T_l), cut to the
                  longest kept row, as the torch packed path does.
  adapler_single.onnx  the same for one example without padding (B = 1): no grid, no mask (what
                  batch 1 pays per layer otherwise); OnnxAdapLeR runs it for B = 1.
  backbone.onnx   (input_ids, attention_mask, token_type_ids) -> logits: the plain backbone, the
                  same layers in one graph (removal "none" and every benchmark's ONNX baseline).

``thresholds`` is eta_l times each example's eta factor, computed outside the graph from the
model's etas: calibration and per-request operating points need no re-export. One graph, one
session call per batch: no per-layer call overhead, one thread pool.

Each layer is the encoder family's own layer code (:mod:`adapler.backbones`) run over gathered
token rows. A family that attends by plain scaled dot products (BERT, RoBERTa, DistilBERT,
ELECTRA: :class:`~adapler.backbones.base.AbsolutePositionFamily`) gathers the kept rows into the
batch's grid and runs ONNX Runtime's own ``Attention`` kernel there (:class:`FusedAttention`,
Q/K/V projection included; ``QAttention`` in int8), the kernel the backbone graph's classic layers
fuse into; its output projection, residual LayerNorms and FFN run on the packed rows (GELU fused
into ``BiasGelu``, the FFN's residual LayerNorm into ``SkipLayerNormalization``). The other
families attend in the op pattern of the classic BERT export (scaled scores plus a
(1 - mask) * -10000 bias, softmax), unfused. The dense layers see no padding: rows that kept fewer
tokens than their batch's longest cost nothing for the slots they left.

``quantize="int8"`` is ONNX Runtime's dynamic quantization (int8 weights, one scale per output
channel) of every MatMul/Attention except the Contribution Predictors, which stay float: they
decide which tokens leave (as in :mod:`adapler.quantization`).

Exports are cached by the model's weights (:func:`ensure_export`): an unchanged model is never
exported twice, and a model directory may carry its own export under ``onnx/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapler.artifacts import ADAPLER_WEIGHTS, BACKBONE_WEIGHTS, CONFIG_FILE
from adapler.backbones.base import MASK_BIAS, AbsolutePositionFamily, BackboneFamily, TokenRows, fused_linear
from adapler.modeling import AdapLeRForSequenceClassification

EXPORT_FORMAT = 7  # bump when the graphs change: cached exports of older formats are rebuilt
OPSET = 17
ONNX_SUBDIR = "onnx"  # a model directory's own export: <model>/onnx/
MANIFEST = "manifest.json"
QUANTIZE_CHOICES = ("none", "int8")
PREDICTOR_SCOPE = "predictors"  # module name of the CPs inside the graph: kept float by int8


class UnsupportedExport(ValueError):
    """The model cannot be exported to the ONNX graphs (one line naming what is unsupported)."""


@dataclass(frozen=True)
class ExportedGraphs:
    """Where one export lives and which files make it up, for one quantization."""

    directory: Path
    num_layers: int
    quantize: str

    def path(self, name: str) -> Path:
        suffix = ".int8.onnx" if self.quantize == "int8" else ".onnx"
        return self.directory / f"{name}{suffix}"

    @property
    def names(self) -> list[str]:
        return ["adapler", "adapler_single", "backbone"]


# ---------------------------------------------------------------------------- graph modules
class _GatheredRows(TokenRows):
    """Token rows x (1, N, H) of the graph and the (B, T) grid attention runs on, by gathers:
    grid (B, T) the row of x in each slot (padding: any row), rows (N,) the flat slot of each row,
    bias (B, 1, 1, T) the additive key mask, positions (B, T) each slot's input position. Without
    grid, x is one example and its own grid (no gather, no mask). Attention in the classic
    MatMul/Softmax pattern."""

    def __init__(
        self,
        positions: torch.Tensor,
        grid: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ):
        self.grid, self.rows, self.bias, self._positions, self.present = grid, rows, bias, positions, present
        self.counts = counts  # (B,) tokens in each grid row, where the caller has them

    def to_grid(self, rows):
        return rows if self.grid is None else rows[0][self.grid]  # (B, T, C)

    def from_grid(self, grid):
        flat = grid.reshape(1, grid.shape[0] * grid.shape[1], grid.shape[-1])  # (1, B*T, C)
        return flat if self.rows is None else flat[:, self.rows]

    def attend(self, q, k, v, bias=None, scale=None):
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, heads, T, T)
        scores = scores / math.sqrt(q.shape[-1]) if scale is None else scores * scale
        for extra in (self.bias, bias):
            if extra is not None:
                scores = scores + extra
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    @property
    def positions(self):
        return self._positions

    @property
    def lengths(self) -> torch.Tensor | None:
        """(B,) int32 tokens in each grid row (they come first); None without padding."""
        if self.present is None:
            return None
        return (self.present.sum(-1) if self.counts is None else self.counts).to(torch.int32)

    @property
    def token_weight(self):
        if self.present is None:
            return torch.ones(self._positions.shape, dtype=torch.float32)
        return self.present.to(torch.float32)

    def first(self, x):
        return x[:, 0] if self.grid is None else x[0][self.grid[:, 0]]  # [CLS] holds slot 0


class FusedAttention(torch.autograd.Function):
    """Self-attention with its Q/K/V projection on a right-padded grid, exported as ONNX Runtime's
    ``com.microsoft::Attention`` (int8: ``QAttention``), the kernel the backbone's classic layers
    fuse into: hidden (B, T, H_in), weight (H_in, 3 * H), bias (3 * H), lengths (B,) int32 tokens
    per row (None: no padding) -> context (B, T, H). Scores scaled by 1/sqrt(d), padding keys
    masked; the torch forward is the same computation, for tracing and tests."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, lengths, heads: int):  # noqa: ARG004
        batch, seq = hidden.shape[0], hidden.shape[1]
        q, k, v = (hidden @ weight + bias).view(batch, seq, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (B, heads, T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, T, T)
        if lengths is not None:
            padding = torch.arange(seq)[None, :] >= lengths[:, None].to(torch.int64)  # (B, T)
            scores = scores + padding[:, None, None, :].to(scores.dtype) * MASK_BIAS
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, seq, -1)

    @staticmethod
    def symbolic(g, hidden, weight, bias, lengths, heads: int):
        inputs = (hidden, weight, bias) if lengths is None or _is_none(lengths) else (hidden, weight, bias, lengths)
        out = g.op("com.microsoft::Attention", *inputs, num_heads_i=heads)
        out.setType(hidden.type())
        return out


def _is_none(value) -> bool:
    return value.node().mustBeNone() if hasattr(value, "node") else value is None


class PackedLayer(nn.Module):
    """One encoder layer over packed token rows x (1, N, H): the dense layers see only the kept
    tokens; attention alone runs on the batch's grid. x keeps a leading axis of 1 so that its
    Linears export as MatMul + Add, the pattern the optimizer fuses (with the residual LayerNorm
    and GELU) as it does in the backbone. A family that attends by plain scaled dot products
    (:class:`AbsolutePositionFamily`) gathers the rows into the grid first and runs
    :class:`FusedAttention` there, Q/K/V projection included: the grid's padding slots cost the
    projection a little, the one kernel saves the head split, the transposes and the float score
    MatMuls, which on short texts cost more than the projection itself. The other families
    project the rows (one MatMul for Q, K and V), then gather into the grid."""

    def __init__(self, family: BackboneFamily, index: int):
        super().__init__()
        self.family, self.index = family, index
        self.qkv = fused_linear(family.qkv_linears(index))
        self.fused_heads = family.head_shape(index)[0] if isinstance(family, AbsolutePositionFamily) else None
        if self.fused_heads is not None:
            bias = self.qkv.bias if self.qkv.bias is not None else torch.zeros(self.qkv.out_features)
            self.register_buffer("qkv_weight", self.qkv.weight.detach().t().contiguous(), persistent=False)
            self.register_buffer("qkv_bias", bias.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor, rows: _GatheredRows) -> torch.Tensor:
        if self.fused_heads is None:
            return self.family.layer(self.index, x, rows, self.qkv)
        # The residual Add + LayerNorm after the output projection stays unfused (x is a Gather's
        # output, which the optimizer does not fuse into SkipLayerNormalization); making it fuse
        # (a Reshape between) ran slower on short texts.
        grid = rows.to_grid(x)  # (B, T, H)
        context = FusedAttention.apply(grid, self.qkv_weight, self.qkv_bias, rows.lengths, self.fused_heads)
        return self.family.after_attention(self.index, rows.from_grid(context), x)  # (1, N, H)


class Head(nn.Module):
    """The classifier over the final rows (the backbone's own head, eval mode)."""

    def __init__(self, family: BackboneFamily):
        super().__init__()
        self.family = family

    def forward(self, x: torch.Tensor, rows: TokenRows) -> torch.Tensor:  # (1, N, H) -> (B, C)
        return self.family.classify(x, rows)


def _packing(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (B, T) grid whose present slots come first in each row: (rows (N,) the flat slot of
    each present token, row-major; grid (B, T) the packed row of each slot, 0 for padding)."""
    flat = present.flatten()
    rows = torch.nonzero(flat).squeeze(1)
    grid = (torch.cumsum(flat.to(torch.int64), 0) - 1).clamp(min=0).view(present.shape[0], -1)
    return rows, grid


def _grid_of(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (B, T) grid of token rows packed example after example, counts (B,) rows each, T their
    maximum: (grid (B, T) the row in each slot, the example's rows first in order, padding row 0;
    present (B, T); rows (N,) the flat slot of each row; first (1, T) slot 0, [CLS])."""
    slots = torch.arange(counts.max())[None, :]  # (1, T)
    present = slots < counts[:, None]
    first_row = torch.cumsum(counts, 0) - counts  # (B,)
    grid = torch.where(present, first_row[:, None] + slots, 0)
    return grid, present, torch.nonzero(present.reshape(-1)).squeeze(1), slots == 0


def _keep(z, present, first, counts, threshold):
    """One layer's cut on a (B, T_l) grid: token i stays iff softmax(z)_i >= threshold / n, n its
    example's tokens ([CLS], ``first``, always). z (B, T_l) the CP logits, threshold (B, 1),
    counts (B,) n. Returns keep (B, T_l)."""
    scores = torch.softmax(z.masked_fill(~present, float("-inf")), dim=-1)
    return ((scores >= threshold / counts[:, None].to(scores.dtype)) & present) | first


def _key_bias(present: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - present[:, None, None, :].to(dtype)) * MASK_BIAS  # (B, 1, 1, T)


class RemovalGraph(nn.Module):
    """The AdapLeR forward with hard removal between layers, as one graph (module docstring): the
    kept tokens packed, (1, N_l, H), for every dense layer."""

    def __init__(self, model: AdapLeRForSequenceClassification):
        super().__init__()
        self.family = model.family
        self.backbone = model.backbone  # registered: the family's modules are the graph's
        self.layers = nn.ModuleList(PackedLayer(model.family, index) for index in range(model.num_layers))
        self.predictors = model.predictors  # the name int8 quantization leaves float (PREDICTOR_SCOPE)
        self.head = Head(model.family)

    def forward(self, input_ids, attention_mask, token_type_ids, thresholds):
        hidden = self.family.embed(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        batch, seq = input_ids.shape[0], input_ids.shape[1]
        origin = torch.nonzero(attention_mask.reshape(-1) > 0).squeeze(1)  # (N,) flat input slot of each token
        x = hidden.reshape(1, batch * seq, -1)[:, origin]  # (1, N, H) the tokens, packed example after example
        counts = (attention_mask > 0).sum(-1)  # (B,) tokens of each example
        grid, present, rows, first = _grid_of(counts)
        nothing_kept, kept = torch.zeros(batch * seq, dtype=torch.bool), []
        for index, layer in enumerate(self.layers):
            z = self.predictors[index](x)[0][grid]  # (B, T_l)
            keep = _keep(z, present, first, counts, thresholds[:, index : index + 1])
            survivors = torch.nonzero(keep.reshape(-1)[rows]).squeeze(1)  # (N_{l+1},) rows of x that stay, in order
            x, origin, counts = x[:, survivors], origin[survivors], keep.sum(-1)
            grid, present, rows, first = _grid_of(counts)
            kept.append(nothing_kept.scatter(0, origin, torch.ones_like(origin, dtype=torch.bool)))
            position = (origin % seq)[grid]  # (B, T_{l+1}) input position of each slot
            token_rows = _GatheredRows(position, grid, rows, _key_bias(present, x.dtype), present, counts)
            x = layer(x, token_rows)
        return self.head(x, token_rows), torch.stack(kept).view(len(kept), batch, seq).transpose(0, 1)


class SingleRemovalGraph(RemovalGraph):
    """The removal forward for one example (B = 1, no padding): no grid and no mask, so the
    bookkeeping that batch 1 would otherwise pay on every layer (about a sixth of a short text's
    time) is gone. The same modules and cut as :class:`RemovalGraph`; :class:`OnnxAdapLeR` runs it
    for single examples, as the torch path's ``_forward_single`` does."""

    def forward(self, input_ids, attention_mask, token_type_ids, thresholds):
        """Inputs as RemovalGraph's with B = 1 and no padding (attention_mask all 1)."""
        x = self.family.embed(input_ids, token_type_ids, attention_mask)  # (1, n, H)
        seq = input_ids.shape[1]
        position = torch.arange(seq)  # (n_l,) input position of each row
        kept = []
        for index, layer in enumerate(self.layers):
            scores = torch.softmax(self.predictors[index](x)[0], dim=-1)  # (n_l,)
            first = torch.arange(scores.shape[0]) == 0  # [CLS]
            keep = (scores >= thresholds[0, index] / scores.shape[0]) | first
            rows = torch.nonzero(keep).squeeze(1)  # (n_{l+1},) in input order
            x, position = x[:, rows], position[rows]
            kept.append(
                torch.zeros(seq, dtype=torch.bool).scatter(0, position, torch.ones_like(position, dtype=torch.bool))
            )
            token_rows = _GatheredRows(position[None])
            x = layer(x, token_rows)
        return self.head(x, token_rows), torch.stack(kept)[None]  # (1, C), (1, L, n)


class BackboneGraph(nn.Module):
    """The plain backbone in one graph: the family's classic layers (the pattern ONNX Runtime fuses
    into its Attention kernel) where it has them, else its layers over all tokens, packed."""

    def __init__(self, model: AdapLeRForSequenceClassification):
        super().__init__()
        self.family = model.family
        self.backbone = model.backbone
        classic = [model.family.classic_layer(index) for index in range(model.num_layers)]
        self.classic = all(layer is not None for layer in classic)
        self.layers = nn.ModuleList(
            classic if self.classic else (PackedLayer(model.family, index) for index in range(model.num_layers))
        )
        self.head = Head(model.family)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        hidden = self.family.embed(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        batch, seq = input_ids.shape[0], input_ids.shape[1]
        present = attention_mask > 0
        positions = torch.arange(seq)[None, :].expand(batch, -1)
        if self.classic:
            for layer in self.layers:
                hidden = layer(hidden, attention_mask)
            grid = torch.arange(batch * seq).view(batch, seq)  # every slot its own row
            return self.head(hidden.reshape(1, batch * seq, -1), _GatheredRows(positions, grid, None, None, present))
        rows, grid = _packing(present)
        x = hidden.reshape(1, batch * seq, -1)[:, rows]  # (1, N, H)
        bias = (1.0 - present[:, None, None, :].to(x.dtype)) * MASK_BIAS
        token_rows = _GatheredRows(positions, grid, rows, bias, present)
        for layer in self.layers:
            x = layer(x, token_rows)
        return self.head(x, token_rows)


# ---------------------------------------------------------------------------- export
def check_exportable(model: AdapLeRForSequenceClassification) -> None:
    """UnsupportedExport naming what the graphs cannot express (the torch path may still run it)."""
    config = model.config
    if getattr(model, "quantized", None):
        raise UnsupportedExport("export the float model: int8 for ONNX Runtime is made from the float graphs")
    if model.family.export_unsupported:
        raise UnsupportedExport(f"{config.model_type}: {model.family.export_unsupported}")
    if getattr(config, "add_cross_attention", False):
        raise UnsupportedExport(f"{config.model_type}: cross-attention layers are not exported")


def export_graphs(
    model: AdapLeRForSequenceClassification, directory: str | Path, quantize: str = "none"
) -> ExportedGraphs:
    """Write the fp32 graphs (optimized by ONNX Runtime's transformer optimizer) into ``directory``,
    and their int8 versions too when ``quantize="int8"``."""
    check_quantize(quantize)
    check_exportable(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    fp32 = ExportedGraphs(directory, model.num_layers, "none")
    example = _example_inputs(model)
    modules = {
        "adapler": (
            RemovalGraph(model),
            ("input_ids", "attention_mask", "token_type_ids", "thresholds"),
            ("logits", "kept"),
        ),
        "adapler_single": (
            SingleRemovalGraph(model),
            ("input_ids", "attention_mask", "token_type_ids", "thresholds"),
            ("logits", "kept"),
        ),
        "backbone": (BackboneGraph(model), ("input_ids", "attention_mask", "token_type_ids"), ("logits",)),
    }
    for name, (module, inputs, outputs) in modules.items():
        raw = directory / f"{name}.raw.onnx"
        args = example if name != "adapler_single" else {k: v[:1] for k, v in example.items()}  # row 0: no padding
        _export(module.eval(), tuple(args[k] for k in inputs), raw, inputs, outputs)
        _optimize(raw, fp32.path(name), model.family)
        raw.unlink()
    if quantize == "int8":
        quantize_graphs(fp32)
    return ExportedGraphs(directory, model.num_layers, quantize)


def quantize_graphs(fp32: ExportedGraphs) -> ExportedGraphs:
    """int8 versions of fp32 graphs (ONNX Runtime dynamic quantization), CPs left float."""
    int8 = ExportedGraphs(fp32.directory, fp32.num_layers, "int8")
    for name in fp32.names:
        if not int8.path(name).is_file():
            _quantize(fp32.path(name), int8.path(name))
    return int8


def _example_inputs(model: AdapLeRForSequenceClassification) -> dict[str, torch.Tensor]:
    batch, seq = 2, 8
    ids = torch.full((batch, seq), 5, dtype=torch.long)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, seq // 2 :] = 0
    return {
        "input_ids": ids,
        "token_type_ids": torch.zeros_like(ids),
        "attention_mask": mask,
        "thresholds": torch.ones(batch, model.num_layers),
    }


def _has_fused_attention(module: nn.Module) -> bool:
    return any(isinstance(m, PackedLayer) and m.fused_heads is not None for m in module.modules())


def _export(module: nn.Module, args: tuple, path: Path, inputs: tuple, outputs: tuple) -> None:
    axes = {name: {0: "batch", 1: "tokens"} for name in (*inputs, *outputs)}
    axes.update(logits={0: "batch"}, thresholds={0: "batch"}, kept={0: "batch", 2: "tokens"})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1} if _has_fused_attention(module) else None,
            dynamo=False,
        )  # the TorchScript exporter: its op pattern is the one ONNX Runtime's optimizer fuses


def _optimize(source: Path, target: Path, family: BackboneFamily) -> None:
    """ONNX Runtime's transformer optimizer for the family's model type; a family it can not fuse
    is written as exported (the session still applies ONNX Runtime's generic optimizations)."""
    from onnxruntime.transformers.optimizer import optimize_model

    if family.ort_model_type is None:
        shutil.copyfile(source, target)
        return
    optimized = optimize_model(
        str(source), model_type=family.ort_model_type, num_heads=family.num_heads, hidden_size=family.hidden_size
    )
    optimized.save_model_to_file(str(target))


@contextlib.contextmanager
def _quiet_root_logger(level: int = logging.ERROR):
    """ONNX Runtime's quantizer warns on the root logger, a multi-line dump per tensor it leaves
    float (the removal graph's index tensors) and advice to pre-process: none of it is actionable."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, level))
    try:
        yield
    finally:
        root.setLevel(before)


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    floats = [node.name for node in onnx.load(str(source)).graph.node if node.name.startswith(f"/{PREDICTOR_SCOPE}.")]
    with _quiet_root_logger():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=floats,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops' outputs have no inferred type
        )


def check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")


# ---------------------------------------------------------------------------- cache
def export_key(model_dir: str | Path) -> str:
    """What an export depends on: the backbone's configuration (e.g. ModernBERT's pooling, which
    no weight shows; not the AdapLeR settings, operating points included: they act outside the
    graphs), the backbone weights, the CPs (not the etas: they are applied outside the graphs), the
    export format and the ONNX Runtime version that optimized it."""
    import onnxruntime
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    digest = hashlib.sha256(f"format={EXPORT_FORMAT};opset={OPSET};ort={onnxruntime.__version__};".encode())
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config.pop("adapler", None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    with open(model_dir / BACKBONE_WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 22), b""):
            digest.update(block)
    extra = load_file(str(model_dir / ADAPLER_WEIGHTS))
    for name in sorted(k for k in extra if k != "etas"):
        digest.update(name.encode())
        digest.update(extra[name].numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_root() -> Path:
    """``$ADAPLER_ONNX_CACHE``, else ``~/.cache/adapler/onnx``."""
    return Path(os.environ.get("ADAPLER_ONNX_CACHE") or Path.home() / ".cache" / "adapler" / "onnx")


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_export(
    model_dir: str | Path, quantize: str = "none", model: AdapLeRForSequenceClassification | None = None
) -> ExportedGraphs:
    """The graphs of the model in ``model_dir``: its own ``onnx/`` export or the cached one when
    their key matches its weights, else a new export into the cache (written to a temporary
    folder and renamed, so a crash leaves no half export). ``model``: the loaded model, if at hand."""
    check_quantize(quantize)
    model_dir = Path(model_dir)
    key = export_key(model_dir)
    own, cached = model_dir / ONNX_SUBDIR, cache_root() / key
    for candidate in (own, cached):
        manifest = _read_manifest(candidate)
        if manifest and manifest.get("key") == key:
            wanted = ExportedGraphs(candidate, manifest["num_layers"], quantize)
            if all(wanted.path(name).is_file() for name in wanted.names):
                return wanted
            if candidate == cached:  # a model's own folder is never written to (it may be a store's)
                print(
                    f"adapler: quantizing the cached ONNX graphs of {model_dir} to int8 (once)",
                    file=sys.stderr,
                    flush=True,
                )
                return quantize_graphs(ExportedGraphs(candidate, manifest["num_layers"], "none"))
    target = cached
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"adapler: exporting {model_dir} to ONNX ({'fp32 + int8' if quantize == 'int8' else 'fp32'}; once per "
        f"weights, cached in {target})",
        file=sys.stderr,
        flush=True,
    )  # tens of seconds: say why it waits
    model = model or AdapLeRForSequenceClassification.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{key}.") as scratch:
        write_export(model, Path(scratch) / "export", key, quantize)
        with contextlib.suppress(OSError):  # another process finished the same export first: use theirs
            os.replace(Path(scratch) / "export", target)
    graphs = ExportedGraphs(target, model.num_layers, "none")
    return quantize_graphs(graphs) if quantize == "int8" else graphs


def write_export(model: AdapLeRForSequenceClassification, directory: Path, key: str, quantize: str) -> ExportedGraphs:
    """export_graphs plus the manifest that marks the export complete and names its key."""
    graphs = export_graphs(model, directory, quantize)
    manifest = {"key": key, "format": EXPORT_FORMAT, "opset": OPSET, "num_layers": model.num_layers}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return graphs


def export_model_dir(model_dir: str | Path, output: str | Path, quantize: str = "none") -> ExportedGraphs:
    """``adapler export``: a copy of the model directory at ``output`` with its graphs under
    ``output/onnx/``; loading ``output`` with runtime "onnx" uses them without exporting again."""
    model_dir, output = Path(model_dir), Path(output)
    if output.resolve() != model_dir.resolve():
        output.mkdir(parents=True, exist_ok=True)
        for item in model_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, output / item.name)
    model = AdapLeRForSequenceClassification.from_pretrained(output)
    target = output / ONNX_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    return write_export(model, target, export_key(output), quantize)
