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
  Where every candidate carries its paired comparison with stage 1 on dev (``paired``, and
  ``unpruned_paired`` against its own weights with removal off), the rule is the paired bound
  instead (:func:`certified`): a candidate qualifies only if the one-sided upper ``confidence``
  bound of its paired accuracy drop against stage 1 (:func:`adapler.paired.drop_upper_bound`) is
  within the tolerance (:func:`effective_tolerance`: points, and optionally a share of stage 1's
  dev error rate), and its observed paired drop against its own weights unpruned is too (the guard
  above, in paired form: :func:`keeps_its_unpruned_accuracy`; bounding that drop as well cost a
  fifth of the speed where stage 1 is under-trained). The bound accounts for the choice itself
  by fixed-sequence testing: every candidate takes its place in one sequence, ordered by the
  share of predictions it changes against stage 1 (fewest first, then the eta factor; an order
  known before any label is read), and the sequence is walked at ``confidence`` until its first
  point whose bound exceeds the tolerance (:func:`certified`). Such a walk needs no correction for
  the number of points, so a search of many trials and epochs costs the bound nothing (a
  Bonferroni correction over the (trial, epoch) curves left a four-trial search on 221 dev
  examples with no certified point; the benchmarks page). Its weakness: a point that fails stops
  the walk for every point after it, however well those read. The fastest certified point wins;
  if none is, the one with the smallest bound among those that keep the guard (ties: faster),
  ``eligible`` False. How often each rule's choice loses more than the tolerance on test, on five
  labelled sets no preset was tuned on, against the marginal rule and the variants (the walk per
  curve with and without the Bonferroni correction, no correction at all, Bonferroni over every
  point, the bootstrap, a bound against the unpruned weights too, no guard):
  ``bench/results/selection_trust.json``, ``bench/results/selection_frontier.json`` and the
  benchmarks page of the docs.
- :func:`select_for`: :func:`select` with the settings of a stage-2 config (every entry point).
- :func:`certificate`: what the chosen point's dev split can certify (observed drop, bound,
  disagreement rate and on how many texts, smallest certifiable drop, error ratio), and
  :func:`loose_bound_warning` the sentence when that is less than the tolerance asks.
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

from adapler.paired import LabelFree, PairedComparison, drop_upper_bound, rows_needed, smallest_certifiable_drop


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
    paired: PairedComparison | None = None  # dev predictions against stage 1's; None: not measured
    unpruned_paired: PairedComparison | None = None  # dev predictions against the same weights with removal off
    label_free: LabelFree | None = None  # predictions changed against stage 1's on texts without labels


@dataclass(frozen=True)
class Selection:
    chosen: Candidate
    eligible: bool  # False: no candidate was within tolerance; the most accurate (or least uncertain) was taken
    front: list[Candidate]
    confidence: float | None = None  # the paired rule's confidence for each point; None: marginal rule


def accuracy_floor(candidate: Candidate, reference: float, tolerance: float) -> float:
    """The least dev accuracy that keeps ``candidate`` eligible: ``tolerance`` under the
    reference, and under its own accuracy unpruned where that was measured."""
    unpruned = candidate.unpruned_accuracy
    return (reference if unpruned is None else max(reference, unpruned)) - tolerance


def within_tolerance(candidate: Candidate, reference: float, tolerance: float) -> bool:
    return candidate.dev_accuracy >= accuracy_floor(candidate, reference, tolerance)


def select(
    candidates: Sequence[Candidate],
    reference: float,
    tolerance: float,
    confidence: float = 0.9,
    relative_tolerance: float | None = None,
) -> Selection:
    """The rule over ``candidates`` (see the module docstring): the paired bound where every
    candidate carries ``paired``, else the marginal rule; ValueError if empty."""
    if not candidates:
        raise ValueError("no candidate to select from (the run reported no epoch)")
    order = {id(c): i for i, c in enumerate(candidates)}
    paired = all(c.paired is not None for c in candidates)
    if paired:
        eligible = certified(candidates, confidence, tolerance, relative_tolerance)
        fallback = lambda: min(  # noqa: E731
            candidates,
            key=lambda c: (
                not keeps_its_unpruned_accuracy(
                    c, effective_tolerance(tolerance, relative_tolerance, c.paired.reference_error_rate)
                ),
                paired_bound(c, confidence),
                -c.dev_flops_speedup,
                order[id(c)],
            ),
        )
    else:
        eligible = [c for c in candidates if within_tolerance(c, reference, tolerance)]
        fallback = lambda: max(candidates, key=lambda c: (c.dev_accuracy, -order[id(c)]))  # noqa: E731
    if eligible:
        chosen = max(eligible, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy, -order[id(c)]))
    else:
        chosen = fallback()
    return Selection(chosen, bool(eligible), pareto_front(candidates), confidence if paired else None)


def select_for(candidates: Sequence[Candidate], reference: float, stage2: Stage2Config) -> Selection:
    """:func:`select` with the rule's settings of a stage-2 config (``selection_tolerance``,
    ``selection_confidence``, ``selection_relative_tolerance``): what every entry point calls."""
    return select(
        candidates,
        reference,
        stage2.selection_tolerance,
        stage2.selection_confidence,
        stage2.selection_relative_tolerance,
    )


def effective_tolerance(tolerance: float, relative_tolerance: float | None, reference_error_rate: float) -> float:
    """The drop allowed: ``tolerance`` (fraction, 0.01 = one point), and where
    ``relative_tolerance`` is given also at most that share of the reference's error rate (0.5:
    at most 1.5 times its errors), whichever is smaller."""
    if relative_tolerance is None:
        return tolerance
    return min(tolerance, relative_tolerance * reference_error_rate)


def paired_bound(candidate: Candidate, confidence: float) -> float:
    """The upper bound of the candidate's paired drop against stage 1 (with its label-free texts)."""
    if candidate.paired is None:
        raise ValueError(f"candidate {candidate.trial} epoch {candidate.epoch} has no paired comparison")
    return drop_upper_bound(candidate.paired, confidence, candidate.label_free)


def keeps_its_unpruned_accuracy(candidate: Candidate, tolerance: float) -> bool:
    """The guard on pruning's own cost: the observed paired drop against the same weights with
    removal off is within ``tolerance`` (True where not measured). An observed figure, not a
    bound: the promise is the bound against stage 1; this keeps pruning from spending what stage 2
    gained over an under-trained stage 1 (the marginal rule's guard, in paired form)."""
    own = candidate.unpruned_paired
    return own is None or own.drop <= tolerance + 1e-12


def changed_share(candidate: Candidate) -> float:
    """The share of predictions ``candidate`` changes against stage 1, on the labelled dev texts and
    its label-free texts together (no label read): the order of :func:`certified`'s walk."""
    extra = candidate.label_free or LabelFree(0, 0)
    return (candidate.paired.changed + extra.changed) / max(candidate.paired.examples + extra.texts, 1)


def certified(
    candidates: Sequence[Candidate], confidence: float, tolerance: float, relative_tolerance: float | None = None
) -> list[Candidate]:
    """The candidates the walk certifies: all of them in one sequence, fewest changed predictions
    first (:func:`changed_share`; ties by eta factor), every point up to the first whose bound at
    ``confidence`` exceeds the tolerance, less those that fail the guard on their own unpruned
    accuracy (:func:`keeps_its_unpruned_accuracy`; the walk goes on past them: the guard is no
    test)."""
    order = {id(c): i for i, c in enumerate(candidates)}
    passed = []
    for c in sorted(candidates, key=lambda c: (changed_share(c), c.factor, order[id(c)])):
        limit = effective_tolerance(tolerance, relative_tolerance, c.paired.reference_error_rate)
        if paired_bound(c, confidence) > limit:
            break
        if keeps_its_unpruned_accuracy(c, limit):
            passed.append(c)
    return passed


@dataclass(frozen=True)
class Certificate:
    """What the dev split says about the chosen point's accuracy drop against stage 1."""

    dev_drop: float  # observed paired drop (fraction)
    drop_bound: float  # one-sided upper bound at ``confidence``
    confidence: float  # each point's level in the walk (fixed-sequence: no further correction)
    tolerance: float  # the drop allowed (effective_tolerance)
    error_ratio: float  # chosen error rate / stage 1's on dev
    disagreement_rate: float  # predictions changed against stage 1's, labelled and label-free texts together
    disagreement_texts: int  # on how many texts
    smallest_certifiable_drop: float  # the least bound this split gives at that disagreement rate
    dev_examples: int
    unpruned_drop: float = math.nan  # observed paired drop against the same weights unpruned (nan: not measured)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}

    def metrics(self) -> dict[str, float]:
        """As run metrics (``paired_`` names; an infinite error ratio, the reference made no
        error, left out)."""
        return {f"paired_{k}": v for k, v in self.to_dict().items() if math.isfinite(v)}


def certificate(selection: Selection, tolerance: float, relative_tolerance: float | None = None) -> Certificate | None:
    """The chosen point's :class:`Certificate`; None under the marginal rule (no paired data)."""
    chosen, level = selection.chosen, selection.confidence
    if chosen.paired is None or level is None:
        return None
    paired, extra = chosen.paired, chosen.label_free or LabelFree(0, 0)
    rate = (paired.changed + extra.changed) / (paired.examples + extra.texts)
    return Certificate(
        dev_drop=paired.drop,
        drop_bound=paired_bound(chosen, level),
        confidence=level,
        tolerance=effective_tolerance(tolerance, relative_tolerance, paired.reference_error_rate),
        error_ratio=paired.error_ratio,
        disagreement_rate=rate,
        disagreement_texts=paired.examples + extra.texts,
        smallest_certifiable_drop=smallest_certifiable_drop(
            paired.examples, paired.changed / max(paired.examples, 1), level, chosen.label_free
        ),
        dev_examples=paired.examples,
        unpruned_drop=math.nan if chosen.unpruned_paired is None else chosen.unpruned_paired.drop,
    )


def loose_bound_warning(cert: Certificate | None) -> str:
    """One sentence when the dev split cannot certify the tolerance at the chosen point's
    disagreement rate (its smallest certifiable drop exceeds it), with what to add; else ""."""
    if cert is None or cert.smallest_certifiable_drop <= cert.tolerance:
        return ""
    needed = rows_needed(
        cert.tolerance, max(cert.disagreement_rate, 1 / max(cert.disagreement_texts, 1)), cert.confidence
    )
    more = (
        f"about {needed - int(cert.dev_examples):,} more labelled dev examples ({needed:,} in all)"
        if needed
        else "far more labelled dev examples"
    )
    split = (
        f"at its disagreement rate ({cert.disagreement_rate:.1%} of {cert.disagreement_texts:,} texts) this split "
        f"cannot certify less than {cert.smallest_certifiable_drop * 100:.1f} point(s) (the tolerance: "
        f"{cert.tolerance * 100:g}) for a point that changes predictions both ways"
    )
    if cert.drop_bound <= cert.tolerance:  # certified (its changes went one way), but the split is weak
        head = (
            f"the dev split is small for the accuracy promise: on {cert.dev_examples} dev examples the chosen "
            f"model is certified (drop {cert.dev_drop * 100:.1f} point(s), {cert.confidence:.0%} upper bound "
            f"{cert.drop_bound * 100:.1f}), but {split}, so faster points may have been passed over"
        )
    else:
        head = (
            f"the accuracy promise is loose: on {cert.dev_examples} dev examples the chosen model's drop is "
            f"{cert.dev_drop * 100:.1f} point(s) but its {cert.confidence:.0%} upper bound is "
            f"{cert.drop_bound * 100:.1f}, and {split}"
        )
    return (
        f"{head}; add {more}, or unlabelled texts like the inputs (data.unlabeled_file) to measure how often "
        f"pruning changes a prediction"
    )


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
    most accurate one, which is less accurate than the backbone), else "". Under the paired rule
    only when the chosen point's observed dev drop exceeds the tolerance too: a bound that is
    merely loose is :func:`loose_bound_warning`'s. ``next_step``: what
    to try, e.g. a command."""
    chosen = selection.chosen
    if selection.eligible or (chosen.paired is not None and chosen.paired.drop <= tolerance):
        return ""  # paired rule, nothing certified but nothing seen lost: loose_bound_warning speaks
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
    loose_bound: str = ""  # loose_bound_warning's sentence, or ""

    @property
    def text(self) -> str:
        """Every sentence in one line ("" when the run gave no warning)."""
        return " ".join(w for w in (self.no_pruning, self.accuracy_lost, self.loose_bound) if w)

    @property
    def promotion_text(self) -> str:
        """The sentences that keep a model from ``@champion``: a loose bound is said, not held
        against promotion (small dev splits are the norm)."""
        return " ".join(w for w in (self.no_pruning, self.accuracy_lost) if w)


def run_warnings(
    selection: Selection,
    reference: float,
    again: str,
    stage2: Stage2Config,
    search: Any = None,
    cert: Certificate | None = None,
) -> RunWarnings:
    """The warnings of a finished run whose stage 2 picked ``selection`` (reference: stage 1's best
    dev accuracy; tolerance: ``stage2.selection_tolerance``). Each ends with a command: ``again``
    (e.g. ``adapler train --config runs/x/config.json``) with settings that prune more (no pruning:
    more epochs, a faster eta learning rate, a larger phi) or lose less (accuracy lost: start from
    the fine-tuned model, a gentler phi). ``search``: the pipeline's search ranges (``phi_min``,
    ``phi_max``), which the commands then move instead of ``stage2.phi``; the search's first
    trials take ``stage2.phi``, so the gentler command puts it inside the lower range. ``cert``:
    the chosen point's paired evidence (:func:`certificate`), whose loose bound is said too."""
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
    return RunWarnings(no_pruning, accuracy_lost, loose_bound_warning(cert))


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
