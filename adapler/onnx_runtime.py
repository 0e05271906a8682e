"""AdapLeR inference on ONNX Runtime: the exported graphs (:mod:`adapler.onnx_export`), whose
removal graph drops tokens between layers, batched, by the rule of the torch packed path (spec
section 5): token i stays at layer l iff its score i~_i >= eta_l / n (times the example's eta
factor), [CLS] always, no re-insertion.

:class:`OnnxAdapLeR` is called like :class:`adapler.modeling.AdapLeRForSequenceClassification`
in eval (same arguments, same :class:`AdapLeROutput`), so ``Predictor``, ``evaluate`` and
``calibrate`` run it unchanged; its etas are a (L,) parameter outside the graphs, fed to the
graph as per-example thresholds, so scaling them (calibration, operating points) needs no
re-export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from adapler.artifacts import ADAPLER_WEIGHTS, check_model_dir
from adapler.config import AdapLeRSettings
from adapler.modeling import AdapLeROutput, _check_right_padded
from adapler.onnx_export import ExportedGraphs, check_quantize, ensure_export
from adapler.operating_points import read_adapler_config

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


def session_options(threads: int):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no optimizer chatter
    return options


class OnnxAdapLeR(nn.Module):
    """An exported AdapLeR model on ONNX Runtime (inference only; removal "packed" or "none")."""

    def __init__(
        self,
        graphs: ExportedGraphs,
        config,
        settings: AdapLeRSettings,
        etas: torch.Tensor,
        tokenizer=None,
        device: str = "cpu",
        threads: int | None = None,
    ):
        super().__init__()
        self.graphs = graphs
        self.backbone_config = config
        self.settings = settings
        self.tokenizer = tokenizer
        self.num_layers = graphs.num_layers
        self.etas = nn.Parameter(etas.detach().float().cpu().clone(), requires_grad=False)
        self.operating_points = None  # set by from_pretrained: the per-request speed knob (adapler.operating_points)
        providers = providers_for(device)
        threads = threads or torch.get_num_threads()
        self._sessions = {
            name: onnxruntime.InferenceSession(str(graphs.path(name)), session_options(threads), providers=providers)
            for name in graphs.names
        }
        self._inputs = {name: [i.name for i in session.get_inputs()] for name, session in self._sessions.items()}

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, quantize: str = "none", device: str = "cpu", threads: int | None = None
    ) -> OnnxAdapLeR:
        """The model directory's graphs (its own ``onnx/`` export, the cache, or exported now)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoTokenizer

        check_quantize(quantize)
        directory = check_model_dir(directory)
        providers_for(device)  # fail before a long export
        graphs = ensure_export(directory, quantize)
        settings, points = read_adapler_config(directory)
        etas = load_file(str(directory / ADAPLER_WEIGHTS))["etas"]
        model = cls(
            graphs,
            AutoConfig.from_pretrained(directory),
            settings,
            etas,
            AutoTokenizer.from_pretrained(directory),
            device,
            threads,
        )
        model.operating_points = points
        return model

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
        # numpy around the session, not torch ops: a torch cast or reduction per batch wakes torch's
        # OpenMP workers, whose spin-wait then competes with ONNX Runtime's threads (bench/runtime.py)
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        _check_right_padded(torch.from_numpy(mask > 0))
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids.cpu().numpy().astype(np.int64)
        present = mask.astype(bool)  # (B, T)
        if removal == "none":
            (logits,) = self._run("backbone", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            kept_mask = np.broadcast_to(present[:, None, :], (len(ids), self.num_layers, ids.shape[1]))
            return _output(logits, kept_mask)
        factors = (
            np.ones(len(ids), dtype=np.float32) if eta_factors is None else eta_factors.cpu().numpy().astype(np.float32)
        )
        return self._forward_packed(ids, types, mask, factors)

    def _forward_packed(
        self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray, factors: np.ndarray
    ) -> AdapLeROutput:
        thresholds = self.etas.detach().numpy()[None, :] * factors[:, None]  # (B, L) eta_l times each factor
        single = len(ids) == 1 and bool(mask.all())  # one example, no padding: the graph without a grid
        graph = "adapler_single" if single else "adapler"
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "thresholds": np.ascontiguousarray(thresholds, dtype=np.float32),
        }
        logits, kept = self._run(graph, feeds)
        return _output(logits, kept)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one graph on the feeds it takes (an input the graph does not read, e.g. the token
        types of a family without them, is not in the exported graph)."""
        return self._sessions[graph].run(None, {name: feeds[name] for name in self._inputs[graph]})


def _output(logits: np.ndarray, kept_mask: np.ndarray) -> AdapLeROutput:
    kept = np.ascontiguousarray(kept_mask)
    return AdapLeROutput(torch.from_numpy(logits), torch.from_numpy(kept.sum(-1)), torch.from_numpy(kept))
