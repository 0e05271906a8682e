"""The two training stages, written once: the plain loop here is what Ray Train runs per worker.

Each loop takes a model, data loaders and a config, and hands every epoch's metrics and model to
a callback (:class:`EpochReport`), which saves checkpoints or reports them to Ray. Both loops
work on a DistributedDataParallel-wrapped model too (they call its forward, and take the
optimizer groups from the wrapped module's parameter_groups()). Under torch.distributed each
worker passes its own share of the train and dev rows, and the metrics are those of all of
them: training losses averaged over the workers, dev metrics computed on the workers' dev
shares joined (:func:`evaluate_shared`), the same on every worker.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adapler.config import Stage1Config, Stage2Config
from adapler.evaluate import EvalResult, Outputs, forward_outputs, summarize, unwrap
from adapler.modeling import FIRST_STEP_TEMPERATURE, AdapLeROutput, temperature_for_epoch
from adapler.paired import compare
from adapler.selection import Candidate, select_for

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EpochReport:
    stage: str  # "stage1" | "stage2"
    epoch: int  # 0-based
    metrics: dict[str, float]  # dev metrics (and train loss) of this epoch
    model: torch.nn.Module  # the model after this epoch (possibly DDP-wrapped)
    selected: bool = False  # the best epoch so far by the stage's selection rule


EpochCallback = Callable[[EpochReport], None]


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    candidates: list[Candidate] = field(default_factory=list)  # stage 2: the epochs as selection candidates
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    _best_state: dict | None = field(default=None, repr=False)

    def close_epoch(self, report: EpochReport, on_epoch: EpochCallback | None) -> None:
        """Keep the selected epoch's weights (in memory) and hand the epoch to the callback."""
        if report.selected:
            self.best_epoch, self.best_metrics = report.epoch, report.metrics
            self._best_state = copy.deepcopy(unwrap(report.model).state_dict())
        if on_epoch:
            on_epoch(report)

    def restore_best(self, core: torch.nn.Module) -> None:
        """End a loop at the selected epoch, in eval mode."""
        if self._best_state is not None:
            core.load_state_dict(self._best_state)
        core.eval()


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over warmup_ratio of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _decay_groups(named_params, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, param in named_params:
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _metrics(result: EvalResult, prefix: str = "dev_") -> dict[str, float]:
    metrics = {f"{prefix}{k}": v for k, v in result.summary().items()}
    metrics.update({f"{prefix}retention_layer{i + 1}": r for i, r in enumerate(result.retention)})
    return metrics


@contextmanager
def attention_dropout(model: torch.nn.Module, p: float | None) -> Iterator[None]:
    """The backbone's attention-probability dropout set to p for the duration (None: unchanged)."""
    if p is None:
        yield
        return
    core = unwrap(model)
    dropouts = core.family.attention_dropouts()
    previous = [d.p for d in dropouts]
    for d in dropouts:
        d.p = p
    try:
        yield
    finally:
        for d, old in zip(dropouts, previous):
            d.p = old


def train_stage1(
    model: torch.nn.Module,
    train_loader,
    dev_loader,
    config: Stage1Config,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    start_epoch: int = 0,
) -> TrainResult:
    """Plain fine-tuning (spec section 1); the model ends at its best dev epoch.

    start_epoch > 0 resumes a run whose weights the caller restored from that epoch's
    checkpoint: the learning-rate schedule is fast-forwarded, optimizer moments start afresh."""
    torch.manual_seed(config.seed)
    core = unwrap(model)
    device = next(core.parameters()).device
    params = core.parameter_groups()["backbone"]  # CPs and etas stay as they are
    optimizer = torch.optim.AdamW(_decay_groups(params, config.weight_decay), lr=config.lr)
    scheduler = linear_schedule(optimizer, config.epochs * len(train_loader), config.warmup_ratio)
    _fast_forward([scheduler], start_epoch * len(train_loader))
    result = TrainResult()
    for epoch in range(start_epoch, config.epochs):
        _set_epoch(train_loader, epoch)
        model.train()
        total, steps, start = 0.0, 0, time.perf_counter()
        with attention_dropout(model, config.attention_dropout):
            for batch in tqdm(train_loader, desc=f"stage 1 epoch {epoch + 1}/{config.epochs}", disable=not progress):
                batch = _to_device(batch, device)
                out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, removal="none")
                loss = F.cross_entropy(out.logits, batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total, steps = total + loss.item(), steps + 1
        metrics = {
            "train_loss": _all_reduce_mean(torch.tensor(total / max(steps, 1), device=device)).item(),
            "train_seconds": time.perf_counter() - start,
        }
        metrics.update(_metrics(evaluate_shared(model, dev_loader, removal="none")))
        result.history.append(metrics)
        selected = not result.best_metrics or metrics["dev_accuracy"] > result.best_metrics["dev_accuracy"]
        result.close_epoch(EpochReport("stage1", epoch, metrics, model, selected), on_epoch)
    result.restore_best(core)
    return result


def stage2_loss(
    out: AdapLeROutput,
    labels: torch.Tensor,
    saliency: torch.Tensor,
    gamma: float,
    phi: float,
    input_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(CE + gamma * KL + phi * length, gamma * KL, parts for logging).

    KL = sum_l w_l KL(t_l || i~_l), w_l = L, L-1, ..., 1; t_l = saliency * m_{l-1} renormalised;
    each layer's KL is multiplied by the (stop-grad) largest non-[CLS] mask, so it vanishes once
    all are gone. length = mean over the batch of sum_l n_l: in absolute tokens (the paper's
    unit) when ``input_lengths`` is None, else of sum_l n_l / n_0 with n_0 = ``input_lengths``
    (B,), each example's unpadded input length (Stage2Config.length_unit "input").
    The forward routes the length term to the etas only and CE to everything. The KL still
    reaches the etas through the hidden states (eta_l biases layer l, whose output feeds the
    later CPs): train_stage2 removes that share with the returned KL term.
    """
    ce = F.cross_entropy(out.logits, labels)
    num_layers = len(out.scores)
    kl_total = out.logits.new_zeros(())
    for index, (scores, mask) in enumerate(zip(out.scores, out.masks_before)):
        target = saliency * mask  # (B, T)
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        kl = (target * (torch.log(target.clamp_min(1e-12)) - torch.log(scores.clamp_min(1e-12)))).sum(-1)  # (B,)
        alive = mask[:, 1:].max(dim=-1).values.detach()  # (B,) largest non-[CLS] mask
        kl_total = kl_total + (num_layers - index) * (kl * alive).mean()
    lengths = out.soft_lengths.sum(-1)  # (B,) sum_l n_l, absolute tokens
    if input_lengths is not None:
        lengths = lengths / input_lengths.to(lengths.dtype)
    length = lengths.mean()
    kl_term = gamma * kl_total
    loss = ce + kl_term + phi * length
    return loss, kl_term, {"ce": ce.item(), "kl": kl_total.item(), "soft_length": length.item()}


def train_stage2(
    model: torch.nn.Module,
    train_loader,
    dev_loader,
    config: Stage2Config,
    reference_dev_score: float,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    start_epoch: int = 0,
    reference_predictions: np.ndarray | None = None,
) -> TrainResult:
    """AdapLeR training with soft removal (spec section 4); train batches must carry saliency.

    reference_dev_score: the best stage-1 dev accuracy, for the selection rule. The model ends
    at the selected epoch. start_epoch: as in train_stage1 (selection then covers the epochs
    run in this call). reference_predictions: stage 1's dev predictions (N,), in ``dev_loader``'s
    order (:func:`evaluate_shared` of stage 1's model on the same loader): each epoch is then
    also read with removal off and compared with both, example by example, and the epoch is
    chosen by the paired bound of :mod:`adapler.selection` (``result.candidates``); without them,
    by the marginal rule.
    """
    torch.manual_seed(config.seed)
    core = unwrap(model)
    device = next(core.parameters()).device
    parts = core.parameter_groups()
    backbone, predictors = parts["backbone"], parts["predictors"]
    named = backbone + predictors  # all but the etas: clipped together
    groups = _decay_groups(backbone, config.weight_decay)
    groups += [{**g, "lr": config.predictor_lr or config.lr} for g in _decay_groups(predictors, config.weight_decay)]
    model_optimizer = torch.optim.AdamW(groups, lr=config.lr, eps=1e-12)
    eta_optimizer = torch.optim.Adam([p for _, p in parts["etas"]], lr=config.eta_lr)
    total_steps = config.epochs * len(train_loader)
    schedulers = [linear_schedule(o, total_steps, config.warmup_ratio) for o in (model_optimizer, eta_optimizer)]
    step = start_epoch * len(train_loader)
    _fast_forward(schedulers, step)
    result = TrainResult()
    for epoch in range(start_epoch, config.epochs):
        _set_epoch(train_loader, epoch)
        model.train()
        sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"stage 2 epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for batch in bar:
            batch = _to_device(batch, device)
            temperature = FIRST_STEP_TEMPERATURE if step == 0 else temperature_for_epoch(epoch, config.epochs)
            out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, removal="soft", temperature=temperature)
            input_lengths = batch["attention_mask"].sum(-1) if config.length_unit == "input" else None
            loss, kl_term, parts = stage2_loss(
                out, batch["labels"], batch["saliency"], config.gamma, config.phi, input_lengths
            )
            model_optimizer.zero_grad(set_to_none=True)
            eta_optimizer.zero_grad(set_to_none=True)
            # Spec 4: the etas learn from CE + phi * length only. Take out the KL's share, which
            # reaches them through the hidden states (no detach inside one forward can cut it).
            (kl_on_etas,) = torch.autograd.grad(kl_term, core.etas, retain_graph=True, allow_unused=True)
            loss.backward()
            if kl_on_etas is not None:
                core.etas.grad -= _all_reduce_mean(kl_on_etas)
            torch.nn.utils.clip_grad_norm_([p for _, p in named], config.max_grad_norm)
            model_optimizer.step()
            eta_optimizer.step()
            for scheduler in schedulers:
                scheduler.step()
            core.clip_etas()
            step += 1
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
        means = _all_reduce_mean(torch.tensor([v / max(len(train_loader), 1) for v in sums.values()], device=device))
        metrics = {f"train_{k}": v for k, v in zip(sums, means.tolist())}
        metrics["train_seconds"] = time.perf_counter() - start
        pruned = evaluate_shared(model, dev_loader, removal="packed")
        metrics.update(_metrics(pruned))
        metrics.update({f"eta_layer{i + 1}": float(e) for i, e in enumerate(core.etas.detach())})
        candidate = Candidate("stage2", epoch, pruned.accuracy, pruned.flops_speedup)
        if reference_predictions is not None:
            candidate = paired_candidate(
                candidate, pruned, evaluate_shared(model, dev_loader, removal="none"), reference_predictions
            )
            metrics["dev_accuracy_unpruned"] = candidate.unpruned_accuracy
        result.history.append(metrics)
        result.candidates.append(candidate)
        chosen = select_for(result.candidates, reference_dev_score, config).chosen
        result.close_epoch(EpochReport("stage2", epoch, metrics, model, chosen.epoch == epoch), on_epoch)
    result.restore_best(core)
    return result


def paired_candidate(
    candidate: Candidate, pruned: EvalResult, unpruned: EvalResult, reference: np.ndarray
) -> Candidate:
    """``candidate`` with its paired comparisons on dev: ``pruned`` (its pass with removal) against
    stage 1's predictions ``reference`` and against ``unpruned`` (the same weights, removal off)."""
    return dataclasses.replace(
        candidate,
        unpruned_accuracy=unpruned.accuracy,
        paired=compare(reference, pruned.predictions, pruned.labels),
        unpruned_paired=compare(unpruned.predictions, pruned.predictions, pruned.labels),
    )


def _set_epoch(loader, epoch: int) -> None:
    """A new order per epoch for a training loader (adapler.batching.LengthGroupedBatches);
    no-op for a plain loader."""
    batches = getattr(loader, "batch_sampler", None)
    if hasattr(batches, "set_epoch"):
        batches.set_epoch(epoch)


def _fast_forward(schedulers, steps: int) -> None:
    """Move learning-rate schedules to where a resumed run left them."""
    for scheduler in schedulers:
        for _ in range(steps):
            scheduler.step()


def evaluate_shared(model, loader, removal: str) -> EvalResult:
    """Metrics of the whole split when each DDP worker's ``loader`` holds its share of it (the
    workers' outputs are gathered and joined, the same result on every worker); alone, plain
    evaluation of ``loader``."""
    outputs = forward_outputs(model, loader, removal)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shares: list[Outputs | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, outputs)
        outputs = Outputs.join(shares)
    return summarize(model, outputs, removal)


def _all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average over DDP workers (metrics; and gradients that autograd.grad took past DDP's own
    all-reduce); no-op alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor
