"""AdapLeR inference on ONNX Runtime: the exported graphs (:mod:`adapler.onnx_export`), whose
removal graph drops tokens between layers, batched, by the rule of the torch packed path (spec
section 5): token i stays at layer l iff its score i~_i >= eta_l / n (times the example's eta
factor), [CLS] always, no re-insertion.

:class:`OnnxAdapLeR` is called like :class:`adapler.modeling.AdapLeRForSequenceClassification`
in eval (same arguments, same :class:`AdapLeROutput`), so ``Predictor``, ``evaluate`` and
``calibrate`` run it unchanged; its etas are a (L,) parameter outside the graphs, fed to the
graph as per-example thresholds, so scaling them (calibration, operating points) needs no
re-export.

:meth:`OnnxAdapLeR.forward_batches` runs a whole prediction's batches (``Predictor.predict``):
on CPU, small batches run side by side, one core each, on single-thread sessions, and larger ones
one at a time on every thread (:func:`runs_side_by_side`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
        self._providers = providers_for(device)
        self.threads = threads or torch.get_num_threads()
        self._sessions = {name: self._open_session(name, self.threads) for name in graphs.names}
        self._single: dict = {}  # single-thread sessions of the graphs that ran side by side, opened on first use
        # forward_batches runs small batches side by side (CPU, two threads or more); False: one at a time
        self.side_by_side = self.threads > 1 and device.split(":")[0] == "cpu"
        self._inputs = {name: [i.name for i in session.get_inputs()] for name, session in self._sessions.items()}

    def _open_session(self, graph: str, threads: int):
        """An ONNX Runtime session of one graph, on ``threads`` intra-op threads."""
        return onnxruntime.InferenceSession(
            str(self.graphs.path(graph)), session_options(threads), providers=self._providers
        )

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
    def forward(self, *args, **kwargs) -> AdapLeROutput:
        """One batch, on every thread. Arguments as the torch model's forward in eval (see
        :meth:`_call`)."""
        call = self._call(*args, **kwargs)
        return call.output(self._run(call, self._sessions))

    def forward_batches(self, calls: Sequence[dict]) -> list[AdapLeROutput]:
        """The forwards of several batches (each the keyword arguments of :meth:`forward`), in
        order. On CPU with two threads or more, the small batches (:func:`runs_side_by_side`) run
        side by side, one core each, on single-thread sessions; the others one at a time on
        every thread."""
        prepared = [self._call(**call) for call in calls]
        small = [i for i, call in enumerate(prepared) if runs_side_by_side(call.feeds["input_ids"].shape)]
        raw: list[list[np.ndarray] | None] = [None] * len(prepared)
        if self.side_by_side and len(small) > 1:
            sessions = self._single_thread_sessions({prepared[i].graph for i in small})
            with ThreadPoolExecutor(self.threads) as pool:
                for i, out in zip(small, pool.map(lambda i: self._run(prepared[i], sessions), small)):
                    raw[i] = out
        for i, call in enumerate(prepared):
            if raw[i] is None:
                raw[i] = self._run(call, self._sessions)
        return [call.output(out) for call, out in zip(prepared, raw)]

    def _call(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        removal: str | None = None,
        eta_factors: torch.Tensor | None = None,
    ) -> _GraphCall:
        """The graph and the feeds of one forward, checked (numpy, no session run yet).
        input_ids, attention_mask, token_type_ids (B, T), padded on the right; removal "packed"
        (default) or "none"; eta_factors (B,): example b keeps a token at layer l iff its score
        >= eta_l * eta_factors[b] / n_b."""
        removal = removal or "packed"
        if removal not in ("packed", "none"):
            raise RuntimeUnavailable(f"runtime onnx runs removal 'packed' or 'none', got {removal!r}")
        # numpy around the session, not torch ops: a torch cast or reduction per batch wakes torch's
        # OpenMP workers, whose spin-wait then competes with ONNX Runtime's threads (bench/runtime.py)
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        _check_right_padded(torch.from_numpy(mask > 0))
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids.cpu().numpy().astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if removal == "none":
            return _GraphCall("backbone", feeds, present=mask.astype(bool), layers=self.num_layers)
        factors = (
            np.ones(len(ids), dtype=np.float32) if eta_factors is None else eta_factors.cpu().numpy().astype(np.float32)
        )
        thresholds = self.etas.detach().numpy()[None, :] * factors[:, None]  # (B, L) eta_l times each factor
        feeds["thresholds"] = np.ascontiguousarray(thresholds, dtype=np.float32)
        single = len(ids) == 1 and bool(mask.all())  # one example, no padding: the graph without a grid
        return _GraphCall("adapler_single" if single else "adapler", feeds)

    def _run(self, call: _GraphCall, sessions: dict) -> list[np.ndarray]:
        """Run the call's graph on the feeds it takes (an input the graph does not read, e.g. the
        token types of a family without them, is not in the exported graph)."""
        return sessions[call.graph].run(None, {name: call.feeds[name] for name in self._inputs[call.graph]})

    def _single_thread_sessions(self, graphs: set[str]) -> dict:
        """Single-thread sessions of ``graphs`` (and of those opened before), for batches run side
        by side: a graph's second session is opened only once batches of it run side by side."""
        for name in graphs - self._single.keys():
            self._single[name] = self._open_session(name, 1)
        return self._single


# Batches at most this long and this large (padded tokens, B x T) run side by side on CPU, one core
# each (OnnxAdapLeR.forward_batches): a pruned model spends much of a small batch on single-threaded
# bookkeeping between its layers, which a second batch can overlap. Larger batches split each op over
# the cores better than they overlap (cache and attention): bench/results/side_by_side.json.
SIDE_BY_SIDE_LENGTH = 128
SIDE_BY_SIDE_TOKENS = 1024


def runs_side_by_side(shape: tuple[int, ...]) -> bool:
    """Whether a batch of input shape (B, T) runs side by side with others (module constants)."""
    batch, length = shape
    return length <= SIDE_BY_SIDE_LENGTH and batch * length <= SIDE_BY_SIDE_TOKENS


@dataclass
class _GraphCall:
    """One forward, ready to run: its graph, its feeds, and for the backbone graph the present
    tokens (B, T) (every one enters every layer)."""

    graph: str
    feeds: dict[str, np.ndarray]
    present: np.ndarray | None = None
    layers: int = 0

    def output(self, raw: list[np.ndarray]) -> AdapLeROutput:
        if self.present is None:
            logits, kept = raw
        else:
            (logits,) = raw
            kept = np.broadcast_to(self.present[:, None, :], (len(self.present), self.layers, self.present.shape[1]))
        kept = np.ascontiguousarray(kept)
        return AdapLeROutput(torch.from_numpy(logits), torch.from_numpy(kept.sum(-1)), torch.from_numpy(kept))
