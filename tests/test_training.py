"""Training loops: a tiny end-to-end stage 1 -> saliency -> stage 2 run, the selection rule,
the LR schedule and the stage-2 loss computed by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from adapler.batching import make_loader
from adapler.config import Stage1Config, Stage2Config
from adapler.evaluate import evaluate, macro_f1, unwrap
from adapler.modeling import AdapLeROutput
from adapler.saliency import saliency_for_rows
from adapler.selection import select_for
from adapler.training import (
    attention_dropout,
    linear_schedule,
    stage2_loss,
    train_stage1,
    train_stage2,
)

# ---------------------------------------------------------------------------------------- end to end

CUES = {
    0: ["good", "great", "wonderful", "superb"],
    1: ["bad", "awful", "boring", "terrible"],
    2: ["table", "chair", "window", "door"],
}
FILLER = [
    "the", "a", "movie", "plot", "actor", "scene", "story", "film", "music",
    "ending", "camera", "we", "it", "this", "was", "very", "quite",
]  # fmt: skip


def synthetic_rows(make_rows, n, seed):
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 3
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 24))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[label]))
        texts.append(" ".join(words))
        labels.append(label)
    return make_rows(texts, labels=labels, ids=[f"s{seed}-{i}" for i in range(n)])


@pytest.fixture
def tiny_run(tiny_model_factory, tokenizer, make_rows):
    """Stage 1 (2 epochs) -> saliency -> stage 2 (3 epochs) on 48 synthetic examples, from the
    authors' CP init: near-uniform CPs that learn to spread in 9 steps at predictor_lr 1e-2."""
    model = tiny_model_factory(seed=5, spread_cps=False)
    train_rows = synthetic_rows(make_rows, 48, seed=1)
    dev_rows = synthetic_rows(make_rows, 24, seed=2)
    max_length, batch_size = 32, 16
    reports, eta_snapshots = [], {}

    def on_epoch(report):
        reports.append((report.stage, report.epoch, dict(report.metrics), report.selected))
        eta_snapshots[(report.stage, report.epoch)] = report.model.etas.detach().clone()

    train_loader = make_loader(train_rows, tokenizer, batch_size, max_length, shuffle=True, seed=0)
    dev_loader = make_loader(dev_rows, tokenizer, batch_size, max_length)
    stage1 = train_stage1(
        model,
        train_loader,
        dev_loader,
        Stage1Config(lr=1e-3, batch_size=batch_size, epochs=2),
        on_epoch,
        progress=False,
    )
    stage1_final = evaluate(model, dev_loader, removal="none")

    saliency = saliency_for_rows(model, train_rows, max_length, batch_size)
    train2 = make_loader(train_rows, tokenizer, batch_size, max_length, shuffle=True, seed=0, saliency=saliency)
    config2 = Stage2Config(
        lr=1e-3, eta_lr=0.15, predictor_lr=1e-2, phi=0.5, gamma=0.005, batch_size=batch_size, epochs=3
    )
    reference = stage1.best_metrics["dev_accuracy"]
    stage2 = train_stage2(
        model,
        train2,
        dev_loader,
        config2,
        reference,
        on_epoch,
        progress=False,
        reference_predictions=stage1_final.predictions,
    )
    final = evaluate(model, dev_loader, removal="packed")
    return {
        "model": model,
        "stage1": stage1,
        "stage2": stage2,
        "reports": reports,
        "final": final,
        "stage1_final": stage1_final,
        "reference": reference,
        "config2": config2,
        "etas": eta_snapshots,
        "saliency": saliency,
        "train_rows": train_rows,
        "dev_loader": dev_loader,
    }


def test_end_to_end_tiny_run(tiny_run):
    stage1, stage2, reports, final = tiny_run["stage1"], tiny_run["stage2"], tiny_run["reports"], tiny_run["final"]
    model = tiny_run["model"]

    # the callback: once per epoch, with stage names and metrics
    assert [(s, e) for s, e, _, _ in reports] == [
        ("stage1", 0),
        ("stage1", 1),
        ("stage2", 0),
        ("stage2", 1),
        ("stage2", 2),
    ]
    for stage, _, metrics, _ in reports:
        assert 0.0 <= metrics["dev_accuracy"] <= 1.0
        assert "dev_flops_speedup" in metrics and "dev_retention_layer3" in metrics
        if stage == "stage1":
            assert metrics["dev_flops_speedup"] == 1.0 and math.isfinite(metrics["train_loss"])
        else:
            assert {"train_loss", "train_ce", "train_kl", "train_soft_length", "eta_layer1", "eta_layer3"} <= set(
                metrics
            )
    assert reports[0][3] is True  # the first epoch is always the best so far
    assert len(stage1.history) == 2 and len(stage2.history) == 3

    # stage 1 ends at its best epoch
    assert stage1.best_metrics["dev_accuracy"] == max(h["dev_accuracy"] for h in stage1.history)
    assert tiny_run["stage1_final"].accuracy == pytest.approx(stage1.history[stage1.best_epoch]["dev_accuracy"])

    # saliency covers every training row, one value per token
    assert set(tiny_run["saliency"]) == set(tiny_run["train_rows"]["id"])

    # stage 2 follows the paired selection rule (stage 1's dev predictions given), and the model
    # is the selected epoch's
    candidates = stage2.candidates
    assert [c.epoch for c in candidates] == [0, 1, 2]
    for c, metrics in zip(candidates, stage2.history):
        assert c.paired.examples == c.unpruned_paired.examples == 24
        assert c.dev_accuracy == metrics["dev_accuracy"]
        assert c.unpruned_accuracy == metrics["dev_accuracy_unpruned"]
        assert c.paired.drop == pytest.approx(tiny_run["stage1_final"].accuracy - c.dev_accuracy)
    selection = select_for(candidates, tiny_run["reference"], tiny_run["config2"])
    assert selection.confidence is not None  # the paired rule, not the marginal one
    expected_best = selection.chosen.epoch
    assert stage2.best_epoch == expected_best
    assert [r[3] for r in reports[2:]][stage2.best_epoch] is True
    assert torch.equal(model.etas.detach(), tiny_run["etas"][("stage2", stage2.best_epoch)])
    assert final.accuracy == pytest.approx(stage2.history[stage2.best_epoch]["dev_accuracy"])
    assert final.flops_speedup == pytest.approx(stage2.history[stage2.best_epoch]["dev_flops_speedup"])

    # tokens really drop: a large phi pushed the etas up and the last layer keeps fewer tokens
    assert (model.etas >= 0.01 - 1e-7).all() and (model.etas <= 1.0 + 1e-7).all()
    assert model.etas.max() > 0.25
    assert final.retention[-1] < 0.9, final.retention
    assert final.flops_speedup > 1.0
    assert all(b <= a + 1e-9 for a, b in zip(final.retention, final.retention[1:]))

    # and in kept_lengths terms: mean kept length at the last layer below the mean input length
    kept, n0 = [], []
    model.eval()  # the loops leave the model in train mode, where the default removal is soft
    with torch.no_grad():
        for batch in tiny_run["dev_loader"]:
            out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
            kept.append(out.kept_lengths[:, -1].float())
            n0.append(batch["attention_mask"].sum(-1).float())
    assert torch.cat(kept).mean() < torch.cat(n0).mean()


# ---------------------------------------------------------------------------------------- optimizer groups


def test_parameter_groups_hold_every_parameter_once(tiny_model, tmp_path):
    groups = tiny_model.parameter_groups()
    assert set(groups) == {"backbone", "predictors", "etas"}
    grouped = [p for named in groups.values() for _, p in named]
    assert len({id(p) for p in grouped}) == len(grouped) == len(list(tiny_model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in tiny_model.parameters()}
    assert {id(p) for _, p in groups["predictors"]} == {id(p) for p in tiny_model.predictors.parameters()}
    assert [p for _, p in groups["etas"]] == [tiny_model.etas]
    own = dict(tiny_model.named_parameters())
    assert all(own[n] is p for named in groups.values() for n, p in named)  # the model's own names
    assert any(n.endswith("LayerNorm.weight") for n, _ in groups["backbone"])  # names still drive decay

    # DDP prefixes every name with "module."; the groups come from the wrapped model
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(tiny_model)
        wrapped = unwrap(ddp).parameter_groups()
        names = {f"module.{n}" for named in wrapped.values() for n, _ in named}
        assert names == {n for n, _ in ddp.named_parameters()}
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- schedule


def test_attention_dropout_is_set_for_the_duration_and_restored(tiny_model):
    """Only attention dropout can vary the outputs here (other dropouts off): at p=0 two training
    forwards agree, afterwards the backbone's own p is back and they differ again."""
    model = tiny_model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    attention = [layer.attention.self.dropout for layer in model.backbone.bert.encoder.layer]
    for d in attention:
        d.p = 0.5
    ids = torch.randint(1000, 2000, (2, 12))

    def logits():
        return model(ids, removal="none").logits

    with attention_dropout(model, 0.0):
        assert all(d.p == 0.0 for d in attention)
        assert torch.equal(logits(), logits())
    assert all(d.p == 0.5 for d in attention)
    assert not torch.equal(logits(), logits())
    with attention_dropout(model, None):
        assert all(d.p == 0.5 for d in attention)


def _lrs(total, ratio, steps):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = linear_schedule(optimizer, total, ratio)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_linear_schedule_warmup_then_decay():
    lrs = _lrs(100, 0.1, 101)  # warm-up of 10 steps
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.5)
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5)
    assert lrs[99] == pytest.approx(1 / 90)
    assert lrs[100] == pytest.approx(0.0)
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(b < a for a, b in zip(lrs[10:100], lrs[11:100]))


def test_linear_schedule_rounds_warmup_up_and_handles_zero():
    lrs = _lrs(50, 0.06, 50)  # ceil(3.0) = 3 warm-up steps
    assert lrs[:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert lrs[26] == pytest.approx((50 - 26) / 47)
    lrs = _lrs(10, 0.0, 10)  # at least one warm-up step
    assert lrs[0] == pytest.approx(1.0) and lrs[5] == pytest.approx(5 / 9)


# ---------------------------------------------------------------------------------------- stage-2 loss


def _hand_output():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    masks_before = [
        torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]]),  # example 1: only [CLS] left -> no KL
    ]
    scores = [
        torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.4, 0.0]]),
        torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]]),
    ]
    soft_lengths = torch.tensor([[2.5, 1.5], [2.0, 1.0]])
    kept = torch.ones(2, 2, 3, dtype=torch.bool)
    out = AdapLeROutput(logits, kept.sum(-1), kept, scores, masks_before, soft_lengths)
    labels = torch.tensor([0, 1])
    saliency = torch.tensor([[1.0, 2.0, 1.0], [3.0, 1.0, 0.0]])
    return out, labels, saliency


def _hand_value(gamma, phi):
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.5) / (math.exp(0.5) + math.exp(1.5)))) / 2
    # layer 1 (w = 2): t = saliency * m_0 renormalised
    kl0_a = 0.25 * math.log(0.25 / 0.2) + 0.5 * math.log(0.5 / 0.5) + 0.25 * math.log(0.25 / 0.3)
    kl0_b = 0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.4)
    # layer 2 (w = 1): example 0 t = [1, 1, 0] / 2, scaled by its largest non-[CLS] mask 0.5; example 1 vanishes
    kl1_a = 0.5 * math.log(0.5 / 0.5) + 0.5 * math.log(0.5 / 0.3)
    kl = 2 * (kl0_a + kl0_b) / 2 + 1 * (0.5 * kl1_a + 0.0) / 2
    length = ((2.5 + 1.5) + (2.0 + 1.0)) / 2
    return ce + gamma * kl + phi * length, ce, kl, length


def test_stage2_loss_by_hand():
    out, labels, saliency = _hand_output()
    loss, kl_term, parts = stage2_loss(out, labels, saliency, gamma=0.1, phi=0.01)
    expected, ce, kl, length = _hand_value(0.1, 0.01)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert parts["soft_length"] == pytest.approx(length, rel=1e-6)
    assert kl_term.item() == pytest.approx(0.1 * kl, rel=1e-5)
    # pieces alone
    assert stage2_loss(out, labels, saliency, gamma=0.0, phi=0.0)[0].item() == pytest.approx(ce, rel=1e-6)
    assert stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)[0].item() == pytest.approx(ce + kl, rel=1e-5)
    # length_unit "input": each example's sum_l n_l over its own input length (here 4 and 2 tokens)
    _, _, per_input = stage2_loss(out, labels, saliency, gamma=0.0, phi=1.0, input_lengths=torch.tensor([4, 2]))
    assert per_input["soft_length"] == pytest.approx(((2.5 + 1.5) / 4 + (2.0 + 1.0) / 2) / 2, rel=1e-6)


def test_stage2_loss_kl_vanishes_when_only_cls_is_left():
    out, labels, saliency = _hand_output()
    base = stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)[0].item()
    # example 1's layer-2 scores do not matter: all its non-[CLS] masks are 0
    out.scores[1] = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.8, 0.0]])
    assert stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)[0].item() == pytest.approx(base, rel=1e-6)
    # but example 0's do
    out.scores[1] = torch.tensor([[0.5, 0.1, 0.4], [0.2, 0.8, 0.0]])
    assert stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)[0].item() != pytest.approx(base, rel=1e-4)
    # a layer where every example has only [CLS] left contributes nothing
    out.masks_before[1] = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    _, _, parts = stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)
    kl0_a = 0.25 * math.log(0.25 / 0.2) + 0.25 * math.log(0.25 / 0.3)
    kl0_b = 0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.4)
    assert parts["kl"] == pytest.approx(2 * (kl0_a + kl0_b) / 2, rel=1e-5)


def test_stage2_loss_alive_factor_is_not_differentiated():
    out, labels, saliency = _hand_output()
    masks = [m.clone().requires_grad_(True) for m in out.masks_before]
    out.masks_before = masks
    loss, _, _ = stage2_loss(out, labels, saliency, gamma=1.0, phi=0.0)
    loss.backward()
    # example 1 / layer 2: target is [1, 0, 0] whatever m[1:] is, and alive (=max m[1:]) is stop-grad
    assert torch.all(masks[1].grad[1, 1:] == 0)
    assert np.isfinite(masks[0].grad.numpy()).all()


# ---------------------------------------------------------------------------------------- evaluate


def test_macro_f1_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 0])
    # class 0: tp 1, fp 2, fn 1 -> 2/5; class 1: tp 2, fp 1, fn 0 -> 4/5; class 2: 0
    assert macro_f1(labels, predictions, 3) == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    assert macro_f1(labels, labels, 3) == 1.0


def test_evaluate_without_and_with_removal(tiny_model, tokenizer, make_rows):
    rows = synthetic_rows(make_rows, 10, seed=3)
    loader = make_loader(rows, tokenizer, 4, 32)
    plain = evaluate(tiny_model, loader, removal="none")
    assert plain.num_examples == 10 and plain.flops_speedup == 1.0
    assert plain.retention == [1.0, 1.0, 1.0]
    lengths = [len(tokenizer(t)["input_ids"]) for t in rows["text"]]
    assert plain.mean_input_length == pytest.approx(np.mean(lengths))
    with torch.no_grad():
        tiny_model.etas.fill_(1.0)
        for predictor in tiny_model.predictors:
            predictor.net[2].weight.mul_(20.0)
    tiny_model.train()
    pruned = evaluate(tiny_model, loader, removal="packed")
    assert tiny_model.training  # evaluate restores the mode
    assert pruned.flops_speedup > 1.0 and pruned.retention[-1] < 1.0
    assert pruned.accuracy == pytest.approx(float(np.mean(pruned.predictions == rows["label"].to_numpy())))


# ---------------------------------------------------------------------------------------- gradient routing in a step


def _first_step_grads(tiny_model_factory, tokenizer, make_rows, monkeypatch, gamma, phi):
    """The gradients the optimizers apply in the first stage-2 step: the etas' (Adam) and the model's
    (AdamW), read from .grad when step() is called, whatever the loop did to produce them."""
    rows = synthetic_rows(make_rows, 8, seed=4)
    rng = np.random.default_rng(0)
    saliency = {
        i: rng.random(len(tokenizer(t, truncation=True, max_length=32)["input_ids"])).astype(np.float32)
        for i, t in zip(rows["id"], rows["text"])
    }
    loader = make_loader(rows, tokenizer, 8, 32, saliency=saliency)  # one batch
    model = tiny_model_factory(seed=5)
    with torch.no_grad():
        model.etas.fill_(0.8)
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(5.0)
    watched = {
        "etas": model.etas,
        "query": model.backbone.bert.encoder.layer[0].attention.self.query.weight,
        "cp": model.predictors[1].net[0].weight,
    }
    grads = {}

    def recording(base):
        class Recording(base):
            def step(self, closure=None):
                for group in self.param_groups:
                    for param in group["params"]:
                        for name, target in watched.items():
                            if param is target and name not in grads:
                                grads[name] = None if param.grad is None else param.grad.clone()
                return super().step(closure)

        return Recording

    monkeypatch.setattr(torch.optim, "Adam", recording(torch.optim.Adam))
    monkeypatch.setattr(torch.optim, "AdamW", recording(torch.optim.AdamW))
    config = Stage2Config(lr=1e-3, eta_lr=1e-3, gamma=gamma, phi=phi, batch_size=8, epochs=1, max_grad_norm=1e9)
    train_stage2(model, loader, loader, config, reference_dev_score=0.0, progress=False)
    monkeypatch.undo()
    assert set(grads) == set(watched)
    return {k: torch.zeros_like(watched[k]) if v is None else v for k, v in grads.items()}


def test_stage2_step_kl_does_not_reach_the_etas(tiny_model_factory, tokenizer, make_rows, monkeypatch):
    # spec 4: the etas are trained by CE + phi * length only; gamma must not change their gradient
    without_kl = _first_step_grads(tiny_model_factory, tokenizer, make_rows, monkeypatch, gamma=0.0, phi=0.01)
    with_kl = _first_step_grads(tiny_model_factory, tokenizer, make_rows, monkeypatch, gamma=1.0, phi=0.01)
    assert not torch.allclose(with_kl["cp"], without_kl["cp"])  # the KL does train the CPs
    assert torch.allclose(with_kl["etas"], without_kl["etas"], rtol=1e-5, atol=1e-8), (
        f"KL reached the etas: {with_kl['etas']} vs {without_kl['etas']}"
    )


def test_stage2_step_length_does_not_reach_the_model(tiny_model_factory, tokenizer, make_rows, monkeypatch):
    small = _first_step_grads(tiny_model_factory, tokenizer, make_rows, monkeypatch, gamma=0.01, phi=0.0)
    large = _first_step_grads(tiny_model_factory, tokenizer, make_rows, monkeypatch, gamma=0.01, phi=1.0)
    assert not torch.allclose(large["etas"], small["etas"])  # the length term does train the etas
    assert torch.allclose(large["query"], small["query"], rtol=1e-5, atol=1e-9)
    assert torch.allclose(large["cp"], small["cp"], rtol=1e-5, atol=1e-9)
