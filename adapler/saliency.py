"""Gradient x input saliency on the embedding output: the Contribution Predictors' targets.

Spec section 2: s_i = || (d z_y / d e_i) * e_i ||_2, e_i the embedding module's output (after its
LayerNorm) for token i, z_y the logit of the GOLD label, the norm over the hidden dimension.
Eval mode (no dropout). [CLS]/[SEP] keep their value; padding is 0 (and not stored). Raw values,
averaged over the best stage-1 checkpoints, keyed by example id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from adapler.batching import sorted_batches
from adapler.modeling import AdapLeRForSequenceClassification


def saliency_of_batch(
    model: AdapLeRForSequenceClassification, batch: Mapping[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """(B, T) saliency for a tokenized batch; padding 0. The model must be in eval mode."""
    captured: list[torch.Tensor] = []
    hook = model.family.embedding_output.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            logits = model(**batch, removal="none").logits  # (B, C)
            embeddings = captured[0]  # (B, T, H)
            gold = logits.gather(1, labels.to(logits.device)[:, None]).sum()
            # Examples do not interact, so the gradient of the sum is each example's own gradient.
            (grad,) = torch.autograd.grad(gold, embeddings)
    finally:
        hook.remove()
    saliency = (grad * embeddings).norm(dim=-1)  # (B, T)
    return (saliency * batch["attention_mask"]).detach()


def saliency_for_rows(
    model: AdapLeRForSequenceClassification,
    rows: pd.DataFrame | Mapping[str, Iterable],
    max_length: int,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Saliency per example id for rows with ``id, text, [text_pair], label``.

    Takes a DataFrame or a dict of columns (what Ray Data's ``map_batches`` hands a UDF). Each
    value is a float32 array with one entry per (unpadded) token.
    """
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame({k: list(v) for k, v in rows.items()})
    model.eval()
    device = next(model.parameters()).device
    ids, labels = frame["id"].astype(str).tolist(), frame["label"].to_numpy(dtype=np.int64)
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    # length-sorted batches, each padded to its own longest: examples do not interact, so the
    # order changes nothing but the padding computed
    batches = sorted_batches(model.tokenizer, frame["text"].tolist(), pairs, batch_size, max_length)
    out: dict[str, np.ndarray] = {}
    for chunk, batch in tqdm(batches, desc="saliency", disable=not progress, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        values = saliency_of_batch(model, batch, torch.from_numpy(labels[chunk]))
        lengths = batch["attention_mask"].sum(-1).tolist()
        for i, row, length in zip(chunk, values.cpu().numpy(), lengths):
            out[ids[i]] = row[:length].astype(np.float32)
    return out


def average_saliency(maps: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean over checkpoints, per id. All maps must cover the same ids with the same lengths."""
    if not maps:
        raise ValueError("average_saliency needs at least one saliency map")
    ids = set(maps[0])
    for other in maps[1:]:
        if set(other) != ids:
            raise ValueError("saliency maps cover different example ids")
    averaged = {}
    for example_id in maps[0]:
        stacked = np.stack([m[example_id] for m in maps])  # raises on differing lengths
        averaged[example_id] = stacked.mean(axis=0).astype(np.float32)
    return averaged


def saliency_from_checkpoints(
    checkpoint_dirs: list[str],
    rows: pd.DataFrame,
    max_length: int,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Saliency averaged over several saved checkpoints (spec: the 3 best stage-1 epochs)."""
    maps = []
    for directory in checkpoint_dirs:
        model = AdapLeRForSequenceClassification.from_pretrained(directory).to(device)
        maps.append(saliency_for_rows(model, rows, max_length, batch_size, progress))
    return average_saliency(maps)
