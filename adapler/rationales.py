"""Rationale check (spec section 7): are the tokens AdapLeR keeps the ones humans marked?

For each window of an ERASER document (adapler.eraser) and each layer l, the tokens entering
layer l (``kept_mask[:, l]``, hard removal) are the predicted rationale. Three baselines pick
the SAME number of tokens per window and layer, the top-k of a score, from the same candidates:

* ``attention``: the [CLS] row of layer l's attention probabilities, averaged over heads;
* ``rollout``: attention rollout (Abnar & Zuidema 2020): A'_i = 0.5 * mean_heads(A_i) + 0.5 * I,
  rows renormalised, R_l = A'_l @ ... @ A'_1, the [CLS] row of R_l;
* ``saliency``: gradient x input on the embeddings (adapler.saliency), one vector per window,
  for the label the backbone predicts (the model's decision is explained, not the gold class).

Attention, rollout and saliency come from the backbone without removal (every token present),
run in eager attention (SDPA returns no probabilities). Layer l of a baseline is the attention
inside layer l, next to the tokens entering layer l.

Counted tokens are the ``evaluated`` word pieces of each window (adapler.eraser: owned by that
window); [CLS], [SEP] and padding never count, neither as kept nor as candidates. The false
positive rate of a method at layer l is pooled over all windows:
FPR_l = #(selected, not rationale) / #(not rationale).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from adapler.data import DataError
from adapler.eraser import RationaleDocument, encode_windows, rationale_windows
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.saliency import saliency_of_batch

METHODS = ("adapler", "attention", "rollout", "saliency")


def false_positives(selected: torch.Tensor, rationale: torch.Tensor, evaluated: torch.Tensor) -> int:
    """Evaluated tokens selected but outside the rationale; (B, T) bool masks."""
    return int((selected & evaluated & ~rationale).sum())


def top_k_mask(scores: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the k[b] highest-scoring candidates of each row (ties to the earlier token)."""
    order = scores.masked_fill(~candidates, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & candidates


def cls_attention(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, L, T): the [CLS] row of each layer's attention (B, heads, T, T), averaged over heads."""
    return torch.stack([layer[:, :, 0, :].mean(dim=1) for layer in attentions], dim=1)


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, L, T): the [CLS] row of the attention rollout up to each layer (Abnar & Zuidema 2020)."""
    rows = []
    rollout = None
    for layer in attentions:
        mixed = 0.5 * layer.mean(dim=1) + 0.5 * torch.eye(layer.shape[-1], dtype=layer.dtype, device=layer.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
        rows.append(rollout[:, 0, :])
    return torch.stack(rows, dim=1)


@contextmanager
def eager_attention(model: AdapLeRForSequenceClassification):
    """The backbone in eager attention (which returns probabilities) for the duration; AdapLeR's
    own removal modes do not use the backbone's attention implementation."""
    backbone = model.backbone
    previous = backbone.config._attn_implementation
    backbone.set_attn_implementation("eager")
    try:
        yield
    finally:
        backbone.set_attn_implementation(previous)


@dataclass
class RationaleReport:
    num_layers: int
    documents: int = 0
    windows: int = 0  # windows evaluated
    windows_dropped: int = 0  # windows with no rationale token (spec 7)
    evaluated_tokens: int = 0
    rationale_tokens: int = 0
    kept: list[int] = field(default_factory=list)  # per layer: evaluated tokens each method selects
    false_positives: dict[str, list[int]] = field(default_factory=dict)  # method -> per layer

    def __post_init__(self):
        self.kept = self.kept or [0] * self.num_layers
        self.false_positives = self.false_positives or {m: [0] * self.num_layers for m in METHODS}

    @property
    def negatives(self) -> int:
        """Evaluated tokens outside the rationale: the FPR's denominator, the same at every layer."""
        return self.evaluated_tokens - self.rationale_tokens

    def fpr(self) -> dict[str, list[float | None]]:
        """Per method and layer; None when no evaluated token lies outside the rationale."""
        return {
            method: [fp / self.negatives if self.negatives else None for fp in counts]
            for method, counts in self.false_positives.items()
        }

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "windows": self.windows,
            "windows_dropped": self.windows_dropped,
            "evaluated_tokens": self.evaluated_tokens,
            "rationale_tokens": self.rationale_tokens,
            "kept_tokens": self.kept,
            "false_positives": self.false_positives,
            "fpr": self.fpr(),
        }

    def table(self) -> str:
        """Layer x method FPR ("-": no token outside the rationale), after the share of counted
        tokens that every method selects at that layer."""
        fpr = self.fpr()
        lines = [f"{'layer':>5} {'kept':>6} " + " ".join(f"{m:>9}" for m in METHODS)]
        for layer, kept in enumerate(self.kept):
            share = kept / self.evaluated_tokens if self.evaluated_tokens else 0.0
            cells = [f"{'-' if fpr[m][layer] is None else format(fpr[m][layer], '.3f'):>9}" for m in METHODS]
            lines.append(f"{layer + 1:>5} {share:>6.3f} " + " ".join(cells))
        return "\n".join(lines)


def evaluate_rationales(
    model: AdapLeRForSequenceClassification,
    documents: Sequence[RationaleDocument],
    window: int,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> RationaleReport:
    """Per-layer false positives of AdapLeR's kept tokens and of the three baselines, over the
    windows of ``documents`` that hold rationale (``window`` word pieces, special tokens counted)."""
    model.eval()
    device = next(model.parameters()).device
    windows, dropped = rationale_windows(documents, model.tokenizer, window, stride)
    if not windows:
        raise DataError(f"none of the {len(documents)} documents has a window with rationale: nothing to evaluate")
    report = RationaleReport(model.num_layers, len(documents), len(windows), dropped)
    starts = range(0, len(windows), batch_size)
    for start in tqdm(starts, desc="rationales", disable=not progress, unit="batch"):
        batch, evaluated, rationale = encode_windows(model.tokenizer, windows[start : start + batch_size], window)
        batch = {k: v.to(device) for k, v in batch.items()}
        evaluated, rationale = evaluated.to(device), rationale.to(device)
        with torch.no_grad():
            kept_mask = model(**batch, removal="packed").kept_mask & evaluated[:, None, :]  # (B, L, T)
            with eager_attention(model):
                inputs = model.family.hf_inputs(
                    batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
                )
                full = model.backbone(**inputs, output_attentions=True)
        attention, rollout = cls_attention(full.attentions), attention_rollout(full.attentions)
        saliency = saliency_of_batch(model, batch, full.logits.argmax(dim=-1))  # (B, T)
        report.evaluated_tokens += int(evaluated.sum())
        report.rationale_tokens += int((rationale & evaluated).sum())
        for layer in range(model.num_layers):
            kept = kept_mask[:, layer]
            k = kept.sum(dim=-1)  # (B,) the budget every baseline gets
            selections = {
                "adapler": kept,
                "attention": top_k_mask(attention[:, layer], k, evaluated),
                "rollout": top_k_mask(rollout[:, layer], k, evaluated),
                "saliency": top_k_mask(saliency, k, evaluated),
            }
            report.kept[layer] += int(k.sum())
            for method, selected in selections.items():
                report.false_positives[method][layer] += false_positives(selected, rationale, evaluated)
    return report
