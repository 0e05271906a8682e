"""The paired evidence a selection runs on: predictions of the reference and of each candidate.

The paired rule of :mod:`adapler.selection` compares, example by example, a candidate's dev
predictions with stage 1's (the reference) and with its own weights' with removal off, and counts
on texts without labels (``data.unlabeled_file``) how often its predictions differ from stage 1's.
This module runs those passes (each model at its own input budget; every pass keeps the rows'
order, so predictions line up) and turns them into :class:`adapler.selection.Candidate` fields
and a calibration goal (:class:`adapler.calibration.PairedGoal`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adapler.batching import make_loader
from adapler.calibration import PairedGoal, scaled_etas
from adapler.evaluate import evaluate, unwrap
from adapler.paired import changes, compare
from adapler.selection import Candidate


@dataclass(frozen=True)
class Reference:
    """Stage 1's predictions (removal off) on the rows every candidate is compared on."""

    dev: np.ndarray  # (N,) dev predictions, row order
    labels: np.ndarray  # (N,) dev labels
    unlabeled: np.ndarray | None = None  # (M,) predictions on the unlabelled texts; None: no such file


def predictions(model, rows: pd.DataFrame, removal: str, batch_size: int = 32, factor: float = 1.0) -> np.ndarray:
    """(N,) predicted label ids of ``model`` (etas times ``factor``) on ``rows``, in row order."""
    loader = make_loader(rows, unwrap(model).tokenizer, batch_size, unwrap(model).tokenizer.model_max_length)
    with scaled_etas(model, factor):
        return evaluate(model, loader, removal=removal).predictions


def reference_predictions(model, dev: pd.DataFrame, unlabeled: pd.DataFrame | None, batch_size: int = 32) -> Reference:
    return Reference(
        predictions(model, dev, "none", batch_size),
        dev["label"].to_numpy(),
        None if unlabeled is None else predictions(model, unlabeled, "none", batch_size),
    )


def with_evidence(
    candidate: Candidate,
    model,
    dev: pd.DataFrame,
    unlabeled: pd.DataFrame | None,
    reference: Reference,
    batch_size: int = 32,
) -> Candidate:
    """``candidate`` (whose weights ``model`` holds, at ``candidate.factor``) with its paired
    comparisons on dev, its accuracy with removal off and its changes on the unlabelled texts."""
    pruned = predictions(model, dev, "packed", batch_size, candidate.factor)
    unpruned = predictions(model, dev, "none", batch_size)
    return dataclasses.replace(
        candidate,
        unpruned_accuracy=float(np.mean(unpruned == reference.labels)),
        paired=compare(reference.dev, pruned, reference.labels),
        unpruned_paired=compare(unpruned, pruned, reference.labels),
        label_free=None
        if unlabeled is None
        else changes(reference.unlabeled, predictions(model, unlabeled, "packed", batch_size, candidate.factor)),
    )


def paired_goal(
    model,
    dev: pd.DataFrame,
    unlabeled: pd.DataFrame | None,
    reference: Reference,
    tolerance: float,
    confidence: float,
    relative_tolerance: float | None = None,
    batch_size: int = 32,
) -> PairedGoal:
    """The calibration goal for the curve of ``model``'s weights: the paired rule
    against stage 1 and its own unpruned predictions, with its changes on the unlabelled texts at
    each factor."""
    label_free = None
    if unlabeled is not None:

        def label_free(factor: float):
            return changes(reference.unlabeled, predictions(model, unlabeled, "packed", batch_size, factor))

    return PairedGoal(
        reference.dev,
        reference.labels,
        tolerance,
        confidence,
        relative_tolerance,
        unpruned=predictions(model, dev, "none", batch_size),
        label_free=label_free,
    )
