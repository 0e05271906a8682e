"""The one inference path: texts in, labels + probabilities + kept tokens out.

`adapler predict`, the MLflow pyfunc and the Serve deployment all call :class:`Predictor`, so
tokenization, batching (sorted by length, to waste little on padding) and packed removal are
written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapler.batching import sorted_batches, token_counts
from adapler.flops import EncoderSize, adapler_flops, backbone_flops
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import maybe_quantize

RUNTIME_CHOICES = ("torch", "onnx")


def load_for_inference(directory: str | Path, runtime: str = "torch", device: str = "cpu", quantize: str = "none",
                       threads: int | None = None):
    """The model in ``directory`` on ``runtime``: "torch" (AdapLeRForSequenceClassification, int8 by
    adapler.quantization) or "onnx" (adapler.onnx_runtime.OnnxAdapLeR, int8 by ONNX Runtime). Both
    are called alike, so Predictor, evaluate and calibrate take either."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}, got {runtime!r}")
    if runtime == "onnx":
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

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Predictor:
    def __init__(
        self,
        model: AdapLeRForSequenceClassification,
        batch_size: int = 32,
        removal: str = "packed",
        max_length: int | None = None,
    ):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; load it with from_pretrained or from_backbone")
        self.model = model.eval()
        self.batch_size = batch_size
        self.removal = removal
        self.max_length = max_length or model.tokenizer.model_max_length
        self.size = EncoderSize.from_config(model.config, model.settings.cp_hidden)
        id2label = model.config.id2label or {}
        self.label_names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]

    @classmethod
    def from_directory(cls, directory: str | Path, device: str = "cpu", quantize: str = "none", runtime: str = "torch",
                       **kwargs) -> "Predictor":
        """runtime: "torch" or "onnx"; quantize: "none" or "int8" (see load_for_inference)."""
        return cls(load_for_inference(directory, runtime, device, quantize), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_counts(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> list[int]:
        """Tokens each text becomes (after truncation): the unit of batching budgets."""
        return token_counts(self.model.tokenizer, texts, text_pairs, self.max_length)

    @torch.no_grad()
    def predict(
        self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None, explain: bool = False
    ) -> list[Prediction]:
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        results: list[Prediction | None] = [None] * len(texts)
        # similar lengths share a batch
        for chunk, batch in sorted_batches(self.model.tokenizer, texts, text_pairs, self.batch_size, self.max_length):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.model(**batch, removal=self.removal)
            for row, prediction in enumerate(self._unbatch(batch, out, explain)):
                results[chunk[row]] = prediction
        return results  # type: ignore[return-value]

    def _unbatch(self, batch: dict, out, explain: bool) -> list[Prediction]:
        probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()  # (B, C)
        lengths = batch["attention_mask"].sum(-1).cpu().numpy()  # (B,)
        kept = out.kept_lengths.cpu().numpy()  # (B, L)
        speedups = backbone_flops(lengths, self.size) / adapler_flops(lengths, kept, self.size)
        if self.removal == "none":
            speedups = np.ones_like(speedups)
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
                )
            )
        return predictions
