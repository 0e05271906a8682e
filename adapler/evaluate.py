"""Metrics over a data set: accuracy, macro-F1, FLOPs speedup, per-layer retention, throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from adapler.backbones import encoder_size
from adapler.batching import sorted_batches, token_counts
from adapler.flops import flops_speedup, input_budget_gain, retention
from adapler.modeling import AdapLeRForSequenceClassification


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    flops_speedup: float  # backbone FLOPs / AdapLeR FLOPs over the whole set (1.0 for removal="none")
    retention: list[float]  # per layer, mean fraction of input tokens entering it
    mean_input_length: float
    num_examples: int
    examples_per_s: float
    predictions: np.ndarray  # (N,) predicted label ids, in loader order
    labels: np.ndarray  # (N,) label ids, in loader order

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "flops_speedup": self.flops_speedup,
            "mean_input_length": self.mean_input_length,
            "examples_per_s": self.examples_per_s,
        }


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> float:
    scores = []
    for label in range(num_labels):
        tp = np.sum((predictions == label) & (labels == label))
        fp = np.sum((predictions == label) & (labels != label))
        fn = np.sum((predictions != label) & (labels == label))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def unwrap(model) -> AdapLeRForSequenceClassification:
    """The AdapLeR module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class Outputs:
    """What one pass over (a share of) a data set produced, per example: enough to compute every
    metric of :class:`EvalResult`, and to join the shares of several workers (:meth:`join`)."""

    labels: np.ndarray  # (N,)
    predictions: np.ndarray  # (N,) predicted label ids
    input_lengths: np.ndarray  # (N,) tokens before the first layer
    kept: np.ndarray  # (N, L) tokens entering each layer
    seconds: float  # wall time of the pass

    @staticmethod
    def join(parts: Sequence[Outputs]) -> Outputs:
        """The shares of a split evaluated side by side: examples concatenated in the order
        given, the time of the slowest share."""
        full = [p for p in parts if len(p.labels)] or list(parts[:1])
        return Outputs(
            *(
                np.concatenate([getattr(p, name) for p in full])
                for name in ("labels", "predictions", "input_lengths", "kept")
            ),
            seconds=max(p.seconds for p in parts),
        )


@torch.no_grad()
def forward_outputs(model, loader, removal: str = "packed", progress: bool = False, desc: str = "evaluate") -> Outputs:
    core = unwrap(model)
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    labels, predictions, input_lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    kept = [np.zeros((0, core.config.num_hidden_layers), np.int64)]
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out = core(**inputs, removal=removal)
        predictions.append(out.logits.argmax(-1).cpu().numpy())
        labels.append(batch["labels"].numpy())
        input_lengths.append(batch["attention_mask"].sum(-1).numpy())
        kept.append(out.kept_lengths.cpu().numpy())
    elapsed = time.perf_counter() - start
    core.train(was_training)
    return Outputs(
        np.concatenate(labels),
        np.concatenate(predictions),
        np.concatenate(input_lengths),
        np.concatenate(kept),
        elapsed,
    )


def summarize(model, outputs: Outputs, removal: str = "packed") -> EvalResult:
    """The metrics of a pass (or of several workers' passes, joined)."""
    core = unwrap(model)
    n0, kept = outputs.input_lengths, outputs.kept
    size = encoder_size(core.config, core.settings.cp_hidden)
    speedup = 1.0 if removal == "none" else flops_speedup(n0, kept, size)
    examples = len(outputs.labels)
    return EvalResult(
        accuracy=float(np.mean(outputs.labels == outputs.predictions)),
        macro_f1=macro_f1(outputs.labels, outputs.predictions, core.config.num_labels),
        flops_speedup=speedup,
        retention=retention(n0, kept).tolist(),
        mean_input_length=float(n0.mean()),
        num_examples=examples,
        examples_per_s=examples / outputs.seconds if outputs.seconds > 0 else float("inf"),
        predictions=outputs.predictions,
        labels=outputs.labels,
    )


def evaluate(model, loader, removal: str = "packed", progress: bool = False, desc: str = "evaluate") -> EvalResult:
    return summarize(model, forward_outputs(model, loader, removal, progress, desc), removal)


@dataclass
class TimedPass:
    """One timed pass of the forward alone over ready-made batches."""

    seconds: float  # wall time, to the end of the last kernel on a GPU
    predictions: np.ndarray  # (N,) predicted label ids, in batch order
    kept: np.ndarray  # (N, L) tokens entering each layer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time them to the end


@torch.no_grad()  # as Predictor runs
def timed_pass(model, batches: Sequence[dict[str, torch.Tensor]], removal: str) -> TimedPass:
    """Times ``model`` (an AdapLeR module, or any object with its forward, e.g. the ONNX Runtime
    one) over ``batches`` (at least one), already tokenized and on its device: the one timing loop of every
    throughput figure (summaries, benchmarks), so that all of them time the same thing."""
    device = batches[0]["input_ids"].device
    predictions, kept = [], []
    _synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        out = model(**batch, removal=removal)
        predictions.append(out.logits.argmax(-1))
        kept.append(out.kept_lengths)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return TimedPass(seconds, torch.cat(predictions).cpu().numpy(), torch.cat(kept).cpu().numpy())


def timed_throughput(model, batches: Sequence[dict[str, torch.Tensor]], removal: str, repeats: int = 1) -> float:
    """Examples per second of the forward passes alone over ready-made batches (best of
    ``repeats`` :func:`timed_pass`, after one warm-up batch): tokenization and collation are not timed."""
    core = unwrap(model).eval()
    device = next(core.parameters()).device
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    examples = sum(len(batch["input_ids"]) for batch in batches)
    timed_pass(core, batches[:1], removal)  # lazy initialisation (kernels, thread pools, fused Q/K/V)
    best = min(timed_pass(core, batches, removal).seconds for _ in range(repeats))
    return examples / best if best > 0 else float("inf")


def paired_throughput(backbone, model, rows, batch_size: int = 32, repeats: int = 1) -> tuple[float, float]:
    """(backbone examples/s with removal "none", model examples/s with removal "packed") on the
    same texts in length-sorted batches (tokenized once, before timing), as Predictor runs them,
    each model at its own input budget (``tokenizer.model_max_length``: the backbone's full one,
    a model chosen at a shorter budget cuts the texts as it does in service): the like-for-like
    throughput of a summary."""
    texts, pairs = rows["text"].tolist(), rows["text_pair"].tolist()

    base_batches, model_batches = (
        [batch for _, batch in sorted_batches(m.tokenizer, texts, pairs, batch_size)] for m in (backbone, model)
    )
    return timed_throughput(backbone, base_batches, "none", repeats), timed_throughput(
        model, model_batches, "packed", repeats
    )


def budget_gain(model, rows, full_max_length: int | None = None, budget: int | None = None) -> float:
    """How many times fewer backbone FLOPs ``rows`` cost at an input budget (default ``model``'s
    own, ``tokenizer.model_max_length``) than at ``full_max_length`` (default the model's
    ``settings.reference_max_length``) (:func:`adapler.flops.input_budget_gain`): 1.0 when the
    budget is the full length. A speedup measured at the budget times this is the speedup against
    the full-length backbone."""
    core = unwrap(model)
    budget = budget or core.tokenizer.model_max_length
    full_max_length = full_max_length or core.settings.reference_max_length or budget
    if budget >= full_max_length:
        return 1.0
    texts, pairs = rows["text"].tolist(), rows["text_pair"].tolist()
    size = encoder_size(core.config, core.settings.cp_hidden)
    return input_budget_gain(
        token_counts(core.tokenizer, texts, pairs, full_max_length),
        token_counts(core.tokenizer, texts, pairs, budget),
        size,
    )
