"""AdapLeR inference on ONNX Runtime: the exported graphs (:mod:`adapler.onnx_export`) with hard
token removal between layers, batched, by the rule of the torch packed path (spec section 5):
token i stays at layer l iff its score i~_i >= eta_l / n (times the example's eta factor), [CLS]
always, no re-insertion.

:class:`OnnxAdapLeR` is called like :class:`adapler.modeling.AdapLeRForSequenceClassification`
in eval (same arguments, same :class:`AdapLeROutput`), so ``Predictor``, ``evaluate`` and
``calibrate`` run it unchanged; its etas are a (L,) parameter outside the graphs, so scaling them
(calibration) needs no re-export.

Layout between layers: after each cut the batch is re-padded to its longest kept row (B, T_l, H)
and the layer graph attends over the kept rows only. With length-sorted batches (as Predictor
makes them) the rows of a batch keep similar counts, so little is spent on padding; a batch of
one has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from adapler.artifacts import check_model_dir
from adapler.config import AdapLeRSettings
from adapler.modeling import AdapLeROutput, _check_right_padded
from adapler.onnx_export import ExportedGraphs, check_quantize, ensure_export

DEVICE_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class RuntimeUnavailable(ValueError):
    """What runtime onnx can not do here: a missing execution provider, a removal mode (one line)."""


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for a torch-style device name ("cpu", "cuda", "cuda:0")."""
    kind = device.split(":")[0]
    if kind not in DEVICE_PROVIDERS:
        raise RuntimeUnavailable(f"runtime onnx runs on {' or '.join(DEVICE_PROVIDERS)}, got device {device!r}")
    provider = DEVICE_PROVIDERS[kind]
    available = onnxruntime.get_available_providers()
    if provider not in available:
        raise RuntimeUnavailable(
            f"runtime onnx on {device}: ONNX Runtime here has no {provider} (it has {', '.join(available)}); "
            "install onnxruntime-gpu for CUDA, or use --device cpu"
        )
    return [provider] if kind == "cpu" else [provider, DEVICE_PROVIDERS["cpu"]]


def session_options(threads: int, spinning: bool):
    """Options of every session. The removal path runs one session per graph, so one thread pool
    per graph: threads spinning after their layer would steal the cores of the next layer's
    pool, so they sleep instead. The backbone is one graph, one pool: it keeps ONNX Runtime's
    default (spinning), its fastest setting."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-session optimizer chatter
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxAdapLeR(nn.Module):
    """An exported AdapLeR model on ONNX Runtime (inference only; removal "packed" or "none")."""

    def __init__(self, graphs: ExportedGraphs, config, settings: AdapLeRSettings, etas: torch.Tensor,
                 tokenizer=None, device: str = "cpu", threads: int | None = None):
        super().__init__()
        self.graphs = graphs
        self.backbone_config = config
        self.settings = settings
        self.tokenizer = tokenizer
        self.num_layers = graphs.num_layers
        self.etas = nn.Parameter(etas.detach().float().cpu().clone(), requires_grad=False)
        self.quantized = None if graphs.quantize == "none" else graphs.quantize
        providers = providers_for(device)
        threads = threads or torch.get_num_threads()
        self._sessions = {
            name: onnxruntime.InferenceSession(
                str(graphs.path(name)), session_options(threads, spinning=name == "backbone"), providers=providers
            )
            for name in graphs.names
        }

    @classmethod
    def from_pretrained(cls, directory: str | Path, quantize: str = "none", device: str = "cpu",
                        threads: int | None = None) -> "OnnxAdapLeR":
        """The model directory's graphs (its own ``onnx/`` export, the cache, or exported now)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoTokenizer

        check_quantize(quantize)
        directory = check_model_dir(directory)
        providers_for(device)  # fail before a long export
        graphs = ensure_export(directory, quantize)
        raw = json.loads((directory / "config.json").read_text())
        etas = load_file(str(directory / "adapler.safetensors"))["etas"]
        return cls(graphs, AutoConfig.from_pretrained(directory), AdapLeRSettings(**raw.get("adapler", {})), etas,
                   AutoTokenizer.from_pretrained(directory), device, threads)

    @property
    def config(self):
        return self.backbone_config

    def __deepcopy__(self, memo):
        raise TypeError("an ONNX Runtime model is not copied: apply eta factors to the torch model and save it")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        removal: str | None = None,
        eta_factors: torch.Tensor | None = None,
    ) -> AdapLeROutput:
        """Arguments as the torch model's forward in eval; eta_factors (B,): example b keeps a
        token at layer l iff its score >= eta_l * eta_factors[b] / n_b."""
        removal = removal or "packed"
        if removal not in ("packed", "none"):
            raise RuntimeUnavailable(f"runtime onnx runs removal 'packed' or 'none', got {removal!r}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_right_padded(attention_mask.bool())
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = attention_mask.cpu().numpy().astype(np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids.cpu().numpy().astype(np.int64)
        present = mask.astype(bool)  # (B, T)
        if removal == "none":
            (logits,) = self._sessions["backbone"].run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            kept_mask = np.broadcast_to(present[:, None, :], (len(ids), self.num_layers, ids.shape[1]))
            return _output(logits, kept_mask)
        factors = np.ones(len(ids), dtype=np.float32) if eta_factors is None else eta_factors.cpu().numpy().astype(np.float32)
        return self._forward_packed(ids, types, present, factors)

    def _forward_packed(self, ids: np.ndarray, types: np.ndarray, present: np.ndarray, factors: np.ndarray) -> AdapLeROutput:
        batch, seq = ids.shape
        hidden, scores = self._sessions["embeddings"].run(None, {"input_ids": ids, "token_type_ids": types})
        position = np.broadcast_to(np.arange(seq), (batch, seq))  # (B, T_l) input position of each slot
        kept_mask = np.zeros((batch, self.num_layers, seq), dtype=bool)
        etas = self.etas.detach().numpy()
        for index in range(self.num_layers):
            keep = hard_keep(scores, present, etas[index] * factors)  # (B, T_l)
            hidden, position, present = repad(keep, hidden, position)
            rows, slots = np.nonzero(present)
            kept_mask[rows, index, position[rows, slots]] = True
            outputs = self._sessions[f"layer_{index}"].run(
                None, {"hidden": hidden, "attention_mask": present.astype(np.int64)}
            )
            if index == self.num_layers - 1:
                return _output(outputs[0], kept_mask)
            hidden, scores = outputs
        raise AssertionError("unreachable: a model has at least one layer")


def hard_keep(scores: np.ndarray, present: np.ndarray, etas: np.ndarray) -> np.ndarray:
    """Keep i iff softmax(scores)_i over the present tokens >= eta_b / n_b, plus [CLS]. (B, T) bool.

    scores (B, T) CP logits; present (B, T) bool; etas (B,) the layer's eta times each example's factor."""
    z = np.where(present, scores, -np.inf).astype(np.float32)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probabilities = z / z.sum(axis=-1, keepdims=True)
    threshold = etas[:, None] / present.sum(axis=-1, keepdims=True)  # (B, 1)
    keep = (probabilities >= threshold) & present
    keep[:, 0] = True
    return keep


def repad(keep: np.ndarray, hidden: np.ndarray, position: np.ndarray):
    """The kept rows of each example moved to the front, in order, the batch cut to the longest:
    (hidden (B, T', H), position (B, T'), present (B, T') bool)."""
    lengths = keep.sum(axis=-1)  # (B,)
    width = int(lengths.max())
    order = np.argsort(~keep, axis=-1, kind="stable")[:, :width]  # kept slots first, order kept
    hidden = np.take_along_axis(hidden, order[:, :, None], axis=1)
    position = np.take_along_axis(position, order, axis=1)
    present = np.arange(width)[None, :] < lengths[:, None]
    return np.ascontiguousarray(hidden), position, present


def _output(logits: np.ndarray, kept_mask: np.ndarray) -> AdapLeROutput:
    kept = torch.from_numpy(np.ascontiguousarray(kept_mask))
    return AdapLeROutput(torch.from_numpy(logits), kept.sum(-1), kept)

