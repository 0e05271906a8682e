"""Which model to keep: the one home of every selection rule (spec section 4).

A :class:`Candidate` is one point a search or a training run produced: a (trial, epoch, eta factor)
with its dev accuracy, dev FLOPs speedup, the parameters that produced it and where its model is
(a factor other than 1 is the same model with every eta scaled, measured by calibration). The
rules over them:

- :func:`select`: the spec's rule. The highest dev FLOPs speedup among the candidates whose dev
  accuracy is within ``tolerance`` of the reference (the best stage-1 dev accuracy); if none
  is, the most accurate one. Equal speedups go to the more accurate; remaining ties to the
  earlier candidate. Where a candidate's accuracy with removal off is known
  (``unpruned_accuracy``), it must also be within ``tolerance`` of that: the pruning itself
  costs at most the tolerance. Stage 2 keeps fine-tuning the classifier, so on small data its
  model can read points above an under-trained stage 1 without pruning; the spec's reference
  alone would let pruning spend that gain (the demo: dev 0.697 unpruned, 0.662 pruned, within
  a point of stage 1's 0.672, and 9 points under its unpruned self on test).
- :func:`pareto_front`: the candidates no other beats on both dev accuracy and speedup.
- :func:`early_stopping_score`: one number per reported epoch for a scheduler (ASHA) that
  encodes the same rule.
- :func:`best_epochs`: stage 1's top-k epochs by dev accuracy (the saliency checkpoints).
- :data:`GENTLER_PHI`: the fraction of a phi that pruned too hard to try next (the search's last
  fixed trial; the next step a lossy `adapler train` suggests).
- :func:`no_pruning_warning`: the sentence a run prints when its chosen model prunes (almost)
  nothing (dev speedup under :data:`NO_PRUNING_FLOOR`): never a silent "1.00x".
- :func:`tolerance_warning`: the sentence a run prints when no candidate stayed within the
  tolerance, so that the chosen model is less accurate than the backbone: never a silent loss.
- :func:`run_warnings`: both sentences of a finished run (``adapler train`` or ``adapler run``),
  each ending with the command to try next.
- :func:`champion_verdict`: whether a newly registered version becomes ``@champion`` (MLflow's
  champion/challenger pattern; ``adapler_pipelines.registry.promote`` applies it).

Plain Python: the training loop, the Ray Tune search and the report all import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapler.config import Stage2Config


@dataclass(frozen=True)
class Candidate:
    trial: str  # "stage2" for a run without search
    epoch: int  # 0-based
    dev_accuracy: float
    dev_flops_speedup: float
    params: Mapping[str, Any] = field(default_factory=dict)  # dotted config keys -> values that produced it
    model_dir: str = ""  # the checkpoint's AdapLeR model directory ("" where not kept)
    factor: float = 1.0  # the global eta factor it was measured at (adapler.calibration); 1 = as trained
    unpruned_accuracy: float | None = None  # dev accuracy of the same weights with removal off; None: not measured


@dataclass(frozen=True)
class Selection:
    chosen: Candidate
    eligible: bool  # False: no candidate was within tolerance; the most accurate was taken
    front: list[Candidate]


def accuracy_floor(candidate: Candidate, reference: float, tolerance: float) -> float:
    """The least dev accuracy that keeps ``candidate`` eligible: ``tolerance`` under the
    reference, and under its own accuracy unpruned where that was measured."""
    unpruned = candidate.unpruned_accuracy
    return (reference if unpruned is None else max(reference, unpruned)) - tolerance


def within_tolerance(candidate: Candidate, reference: float, tolerance: float) -> bool:
    return candidate.dev_accuracy >= accuracy_floor(candidate, reference, tolerance)


def select(candidates: Sequence[Candidate], reference: float, tolerance: float) -> Selection:
    """The spec's rule over ``candidates`` (see the module docstring); ValueError if empty."""
    if not candidates:
        raise ValueError("no candidate to select from (the run reported no epoch)")
    order = {id(c): i for i, c in enumerate(candidates)}
    eligible = [c for c in candidates if within_tolerance(c, reference, tolerance)]
    if eligible:
        chosen = max(eligible, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy, -order[id(c)]))
    else:
        chosen = max(candidates, key=lambda c: (c.dev_accuracy, -order[id(c)]))
    return Selection(chosen, bool(eligible), pareto_front(candidates))


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both dev accuracy and speedup (ties kept), by speedup."""

    def dominated(p: Candidate) -> bool:
        return any(
            q.dev_accuracy >= p.dev_accuracy
            and q.dev_flops_speedup >= p.dev_flops_speedup
            and (q.dev_accuracy > p.dev_accuracy or q.dev_flops_speedup > p.dev_flops_speedup)
            for q in candidates
        )

    return sorted((p for p in candidates if not dominated(p)), key=lambda p: p.dev_flops_speedup)


def early_stopping_score(dev_accuracy: float, dev_flops_speedup: float, reference: float, tolerance: float) -> float:
    """The speedup while the accuracy is within tolerance, otherwise a penalty below any speedup
    (>= 0) that grows with the gap: a scheduler maximising it prefers what :func:`select` picks."""
    gap = reference - tolerance - dev_accuracy
    return dev_flops_speedup if gap <= 0 else -gap


def best_epochs(history: Sequence[Mapping[str, float]], k: int) -> list[int]:
    """Indices of the k most accurate epochs of ``history`` (one metrics dict per epoch, with
    ``dev_accuracy``), best first; ties go to the earlier epoch."""
    return sorted(range(len(history)), key=lambda i: (-history[i]["dev_accuracy"], i))[:k]


# The gentler side of a phi that pruned too hard: a trial from this fraction of it (the search's
# last fixed point, pipelines/tune.py first_points; the next step a lossy `adapler train` suggests).
# Half, not less: on the full Rotten Tomatoes data a third of the preset's phi (0.1) trained to
# under 2x on dev in three epochs, and scaling its etas up from there cost more dev accuracy than
# it gained speed.
GENTLER_PHI = 1 / 2


NO_PRUNING_FLOOR = 1.1  # a chosen model under this dev FLOPs speedup removes (almost) no token


def no_pruning_warning(dev_flops_speedup: float, next_step: str) -> str:
    """One plain sentence when a chosen model prunes (almost) nothing, else "". ``next_step``:
    what to try, e.g. a command."""
    if dev_flops_speedup >= NO_PRUNING_FLOOR:
        return ""
    return (
        f"the chosen model removes almost no tokens (dev FLOPs speedup {dev_flops_speedup:.2f}x, under "
        f"{NO_PRUNING_FLOOR}x): its Contribution Predictors and etas did not learn to prune in this many "
        f"stage-2 steps, or the length penalty phi was too small for this data; {next_step}"
    )


def tolerance_warning(selection: Selection, reference: float, tolerance: float, next_step: str) -> str:
    """One plain sentence when no candidate stayed within ``tolerance`` (the rule then took the
    most accurate one, which is less accurate than the backbone), else "". ``next_step``: what
    to try, e.g. a command."""
    if selection.eligible:
        return ""
    chosen = selection.chosen
    return (
        f"no model stage 2 trained stayed within {tolerance * 100:g} point(s) of stage 1's dev accuracy "
        f"{reference:.4f}, so the chosen one is only the most accurate it found ({chosen.dev_accuracy:.4f} on dev "
        f"at {chosen.dev_flops_speedup:.2f}x): stage 2 lost accuracy, most often because the length penalty phi "
        f"was too large for this data or stage 2 started from the pretrained backbone; {next_step}"
    )


@dataclass(frozen=True)
class RunWarnings:
    no_pruning: str  # no_pruning_warning's sentence, or ""
    accuracy_lost: str  # tolerance_warning's sentence, or ""

    @property
    def text(self) -> str:
        """Both sentences in one line ("" when the run gave no warning)."""
        return " ".join(w for w in (self.no_pruning, self.accuracy_lost) if w)


def run_warnings(
    selection: Selection, reference: float, again: str, stage2: Stage2Config, search: Any = None
) -> RunWarnings:
    """The warnings of a finished run whose stage 2 picked ``selection`` (reference: stage 1's best
    dev accuracy; tolerance: ``stage2.selection_tolerance``). Each ends with a command: ``again``
    (e.g. ``adapler train --config runs/x/config.json``) with settings that prune more (no pruning:
    more epochs, a faster eta learning rate, a larger phi) or lose less (accuracy lost: start from
    the fine-tuned model, a gentler phi). ``search``: the pipeline's search ranges (``phi_min``,
    ``phi_max``), which the commands then move instead of ``stage2.phi``; the search's first
    trials take ``stage2.phi``, so the gentler command puts it inside the lower range."""
    phi_up = f"tune.phi_max={search.phi_max * 5:g}" if search is not None else f"stage2.phi={stage2.phi * 5:g}"
    no_pruning = no_pruning_warning(
        selection.chosen.dev_flops_speedup,
        f"try `{again} --set stage2.epochs={stage2.epochs + 2} --set stage2.eta_lr={stage2.eta_lr * 4:g} "
        f"--set {phi_up}`",
    )
    if search is not None:
        low, high = search.phi_min / 3, max(search.phi_min, search.phi_max / 4)
        gentler = (
            f"--set tune.inits=[finetuned] --set tune.phi_min={low:g} --set tune.phi_max={high:g} "
            f"--set stage2.phi={math.sqrt(low * high):.2g}"
        )
    else:
        gentler = f"--set stage2.init=finetuned --set stage2.phi={stage2.phi * GENTLER_PHI:.2g}"
    accuracy_lost = tolerance_warning(selection, reference, stage2.selection_tolerance, f"try `{again} {gentler}`")
    return RunWarnings(no_pruning, accuracy_lost)


TEST_SPLIT_TAG = "test_split"  # a version's tag: fingerprint of the rows its test_accuracy was measured on


def champion_verdict(
    policy: str,
    warning: str,
    new: Mapping[str, str],
    champion: Mapping[str, str] | None,
    champion_version: str = "",
    name: str = "",
) -> tuple[bool, str]:
    """Whether a new registered version of ``name`` becomes ``@champion``, and why (one clause).

    ``policy``: ``mlflow.promote`` (better | always | never). ``new`` and ``champion``: the two
    versions' tags (``test_accuracy``, ``flops_speedup``, ``test_split``: the fingerprint of the
    rows they were measured on); ``champion`` None when ``name`` has none yet. Under "better" a
    version whose run warned (``warning``) never takes the title, not even a first one; otherwise
    it must be at least as accurate and at least as fast as the champion on the same test split."""
    if policy == "never":
        return False, "mlflow.promote=never"
    if policy == "always":
        return True, "mlflow.promote=always"
    if warning:
        return False, "its run ended with a warning (in the summary and the run's adapler.warning tag)"
    if champion is None:
        return True, f"{name} had no champion yet"
    if (
        champion.get(TEST_SPLIT_TAG) != new.get(TEST_SPLIT_TAG)
        or "test_accuracy" not in champion
        or "flops_speedup" not in champion
    ):
        return False, (
            f"the champion (version {champion_version}) was not measured on the same test split, so the "
            "two can not be compared"
        )
    accuracy, speedup = float(new["test_accuracy"]), float(new["flops_speedup"])
    old_accuracy, old_speedup = float(champion["test_accuracy"]), float(champion["flops_speedup"])
    figures = (
        f"test accuracy {accuracy:.4f} vs {old_accuracy:.4f}, FLOPs speedup {speedup:.2f}x vs "
        f"{old_speedup:.2f}x for the champion (version {champion_version}) on the same test split"
    )
    if accuracy >= old_accuracy and speedup >= old_speedup:
        return True, f"at least as accurate and as fast: {figures}"
    return False, f"{'less accurate' if accuracy < old_accuracy else 'slower'}: {figures}"
