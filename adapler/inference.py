"""The one inference path: texts in, labels + probabilities + kept tokens out.

`adapler predict`, the MLflow pyfunc and the Serve deployment all call :class:`Predictor`, so
tokenization, batching (sorted by length, to waste little on padding) and packed removal are
written once.

Speed per request: ``predict(..., operating_point="fast")``, ``target_speedup=3`` or
``factor=1.3`` runs the texts at that point of the model's curve (:mod:`adapler.operating_points`);
``points=`` gives one resolved point per text, so texts at different points share the batches
(the forward's ``eta_factors``). Each :class:`Prediction` says which point ran.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from adapler.backbones import encoder_size, family_class
from adapler.batching import sorted_batches, token_counts
from adapler.flops import adapler_flops, backbone_flops
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.operating_points import OperatingPoint, OperatingPointError, read_operating_points, resolve
from adapler.quantization import maybe_quantize

RUNTIME_CHOICES = ("auto", "torch", "onnx")


def resolve_runtime(
    runtime: str, device: str = "cpu", removal: str = "packed", model_dir: str | Path | None = None
) -> str:
    """ "auto" is ONNX Runtime for CPU inference with removal "packed" or "none" (faster on every
    row of bench/runtime.py), else torch (GPUs, removal "masked"); "torch" and "onnx" as given.
    With ``model_dir``, "auto" also picks torch for an encoder family the exported graphs can not
    express, and says why on stderr (once per process and reason)."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}, got {runtime!r}")
    if runtime != "auto":
        return runtime
    if device != "cpu" or removal not in ("packed", "none"):
        return "torch"
    reason = _export_unsupported(model_dir) if model_dir is not None else None
    if reason is None:
        return "onnx"
    if reason not in _SAID:
        _SAID.add(reason)
        print(
            f"adapler: runtime auto runs this model on torch, not ONNX Runtime: {reason}", file=sys.stderr, flush=True
        )
    return "torch"


_SAID: set[str] = set()  # the torch fallbacks already explained in this process


def _export_unsupported(model_dir: str | Path) -> str | None:
    """Why the model's family is not exported (adapler.backbones), or None; None too when the
    directory holds no readable config (loading it reports that, one line)."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    reason = family_class(config).export_unsupported
    return f"{config.model_type}: {reason}" if reason else None


def load_for_inference(
    directory: str | Path,
    runtime: str = "auto",
    device: str = "cpu",
    quantize: str = "none",
    threads: int | None = None,
):
    """The model in ``directory`` on ``runtime``: "torch" (AdapLeRForSequenceClassification, int8 by
    adapler.quantization) or "onnx" (adapler.onnx_runtime.OnnxAdapLeR, int8 by ONNX Runtime), or
    "auto" (:func:`resolve_runtime`, for packed removal). Both are called alike, so Predictor,
    evaluate and calibrate take either."""
    if resolve_runtime(runtime, device, model_dir=directory) == "onnx":
        from adapler.onnx_runtime import OnnxAdapLeR  # onnxruntime is imported only when asked for

        return OnnxAdapLeR.from_pretrained(directory, quantize=quantize, device=device, threads=threads)
    if quantize != "none" and device != "cpu":
        raise ValueError(f"quantize {quantize} on the torch runtime runs on CPU only (got device {device})")
    return maybe_quantize(AdapLeRForSequenceClassification.from_pretrained(directory).to(device), quantize)


@dataclass
class Prediction:
    label: str
    label_id: int
    probabilities: dict[str, float]
    input_tokens: int  # tokens entering the network ([CLS] and [SEP] counted)
    flops_speedup: float  # backbone FLOPs / AdapLeR FLOPs for this text
    kept_lengths: list[int]  # tokens entering each layer
    kept_tokens: list[list[str]] | None = field(default=None)  # per layer, when explain=True
    # The point it ran at (name, factor, and its dev accuracy and speedup when stored); None for
    # removal="none" (the plain backbone: no threshold applies).
    operating_point: OperatingPoint | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.operating_point is not None:
            out["operating_point"] = {k: v for k, v in asdict(self.operating_point).items() if v is not None}
        return out


class Predictor:
    def __init__(
        self,
        model: AdapLeRForSequenceClassification,
        batch_size: int = 32,
        removal: str = "packed",
        max_length: int | None = None,
        operating_points=None,
    ):
        """operating_points: the model's stored points (default: its ``operating_points``)."""
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; load it with from_pretrained or from_backbone")
        self.model = model.eval()
        self.batch_size = batch_size
        self.removal = removal
        self.operating_points = operating_points or getattr(model, "operating_points", None)
        self.max_length = max_length or model.tokenizer.model_max_length
        self.size = encoder_size(model.config, model.settings.cp_hidden)
        id2label = model.config.id2label or {}
        self.label_names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]

    @classmethod
    def from_directory(
        cls, directory: str | Path, device: str = "cpu", quantize: str = "none", runtime: str = "auto", **kwargs
    ) -> Predictor:
        """runtime: "torch", "onnx" or "auto" (resolve_runtime); quantize: "none" or "int8"."""
        kwargs.setdefault("operating_points", read_operating_points(directory))
        runtime = resolve_runtime(runtime, device, kwargs.get("removal", "packed"), directory)
        return cls(load_for_inference(directory, runtime, device, quantize), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_counts(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> list[int]:
        """Tokens each text becomes (after truncation): the unit of batching budgets."""
        return token_counts(self.model.tokenizer, texts, text_pairs, self.max_length)

    def resolve(
        self, operating_point: str | None = None, target_speedup: float | None = None, factor: float | None = None
    ) -> OperatingPoint | None:
        """The point a request asks for (:func:`adapler.operating_points.resolve`; none = the model
        as saved); OperatingPointError, naming the stored points, for a bad one. None with
        removal="none": the plain backbone has no threshold, so only the default is accepted."""
        point = resolve(self.operating_points, operating_point, target_speedup, factor)
        if self.removal != "none":
            return point
        if point.factor != 1.0:
            raise OperatingPointError(
                f"removal='none' runs the plain backbone: operating point {point.name} does not apply"
            )
        return None

    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str | None] | None = None,
        explain: bool = False,
        operating_point: str | None = None,
        target_speedup: float | None = None,
        factor: float | None = None,
        points: Sequence[OperatingPoint | None] | None = None,
    ) -> list[Prediction]:
        """operating_point / target_speedup / factor: at most one, for every text (see
        :meth:`resolve`); or ``points``, one resolved point per text."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        if points is None:
            points = [self.resolve(operating_point, target_speedup, factor)] * len(texts)
        elif len(points) != len(texts) or any(v is not None for v in (operating_point, target_speedup, factor)):
            raise ValueError("points: one per text, instead of operating_point, target_speedup and factor")
        results: list[Prediction | None] = [None] * len(texts)
        # A model chosen at a shorter input budget: each text's speedup is against the backbone on
        # the text at the length the model was chosen against (settings.reference_max_length).
        reference = self.model.settings.reference_max_length
        full = (
            np.asarray(token_counts(self.model.tokenizer, texts, text_pairs, reference))
            if reference and reference > self.max_length
            else None
        )
        # similar lengths share a batch; the model runs the batches (ONNX Runtime: small ones side by side)
        batches = sorted_batches(self.model.tokenizer, texts, text_pairs, self.batch_size, self.max_length)
        calls = [
            {
                **{k: v.to(self.device) for k, v in batch.items()},
                "removal": self.removal,
                "eta_factors": self._eta_factors([points[i] for i in chunk]),
            }
            for chunk, batch in batches
        ]
        for (chunk, _), call, out in zip(batches, calls, self.model.forward_batches(calls)):
            mine = [points[i] for i in chunk]
            full_lengths = None if full is None else full[chunk]
            for row, prediction in enumerate(self._unbatch(call, out, explain, mine, full_lengths)):
                results[chunk[row]] = prediction
        return results  # type: ignore[return-value]

    def _eta_factors(self, points: Sequence[OperatingPoint | None]) -> torch.Tensor | None:
        """(B,) factors for the forward; None when every text runs the model as saved."""
        factors = [1.0 if p is None else p.factor for p in points]
        if all(f == 1.0 for f in factors):
            return None
        return torch.tensor(factors, dtype=torch.float32, device=self.device)

    def _unbatch(
        self,
        batch: dict,
        out,
        explain: bool,
        points: Sequence[OperatingPoint | None],
        full_lengths: np.ndarray | None = None,
    ) -> list[Prediction]:
        """full_lengths: (B,) tokens of each text at the model's reference length, or None."""
        # numpy, not torch ops: a torch op per batch wakes torch's thread pool, whose spin-wait
        # competes with ONNX Runtime's threads (adapler/onnx_runtime.py)
        logits = out.logits.float().cpu().numpy()  # (B, C)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        lengths = batch["attention_mask"].cpu().numpy().sum(-1)  # (B,)
        kept = out.kept_lengths.cpu().numpy()  # (B, L)
        reference = lengths if full_lengths is None else full_lengths
        speedups = backbone_flops(reference, self.size) / adapler_flops(lengths, kept, self.size)
        if self.removal == "none":
            speedups = backbone_flops(reference, self.size) / backbone_flops(lengths, self.size)
        predictions = []
        for row in range(len(lengths)):
            label_id = int(probs[row].argmax())
            kept_tokens = None
            if explain:
                ids = batch["input_ids"][row].cpu()
                kept_tokens = [
                    self.model.tokenizer.convert_ids_to_tokens(ids[layer_mask].tolist())
                    for layer_mask in out.kept_mask[row].cpu()
                ]
            predictions.append(
                Prediction(
                    label=self.label_names[label_id],
                    label_id=label_id,
                    probabilities={name: float(p) for name, p in zip(self.label_names, probs[row])},
                    input_tokens=int(lengths[row]),
                    flops_speedup=float(speedups[row]),
                    kept_lengths=[int(k) for k in kept[row]],
                    kept_tokens=kept_tokens,
                    operating_point=points[row],
                )
            )
        return predictions
