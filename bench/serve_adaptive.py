"""Load-adaptive serving: the same overload with the adaptive policy off and on.

One replica of the Serve app on 127.0.0.1 (deploy/app.py), the model's stored operating points,
requests that name no point running at ``accurate`` (``default_operating_point``). First the
replica's capacity at ``accurate`` and at the overload point (closed loop), then, for each
``--overload`` (default 2x and 1.1x that capacity), twice the same open-loop load (labelled test
texts, bounded by --duration and by count): the app without the policy, then the same app with
``adaptive`` (deploy/adaptive.py), which runs the unasked requests at the fastest stored point
within ``--max-drop`` of ``accurate`` while the replica's backlog is above the high water mark.
The policy can only absorb an overload up to that point's capacity: the second rate is one it
can carry.

    .venv/bin/adapler calibrate --model bench/.cache/bench-rotten_tomatoes/model --data rotten_tomatoes \
        --points --output bench/.cache/bench-rotten_tomatoes-points   # bench/inference.py trains the first
    python bench/serve_adaptive.py --model bench/.cache/bench-rotten_tomatoes-points
Writes bench/results/serve_adaptive.json, a list of records (those of other data sets are kept):
one per load and policy {dataset, policy, overload, arrival_rate, requests_sent, requests_ok,
requests_per_s, p50_ms, p95_ms, p99_ms, share_per_point, accuracy, implied_accuracy, ...}, each
with the capacities and the points; a policy-on record also carries the targets (p99 >= 3x lower
than off, no request lost, measured accuracy within --max-drop of accurate's on the same texts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from dataclasses import asdict
from pathlib import Path

from adapler.inference import Predictor
from adapler_deploy.loadtest import finite, load_labelled, run_load, start_local_serve, stop_local_serve

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="AdapLeR model directory with stored operating points")
    parser.add_argument("--data", default="rotten_tomatoes", help="labelled texts: its test split")
    parser.add_argument("--texts-per-request", type=int, default=16)
    parser.add_argument(
        "--overload",
        type=float,
        nargs="+",
        default=[2.0, 1.1],
        help="arrival rates, as multiples of the capacity at accurate (one pair of runs each)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per run")
    parser.add_argument("--capacity-seconds", type=float, default=10.0, help="closed-loop measure of the capacity")
    parser.add_argument(
        "--max-drop", type=float, default=0.03, help="adaptive.max_accuracy_drop (default: the `fast` point's budget)"
    )
    parser.add_argument("--high-water", type=float, default=8, help="adaptive.high_water (requests in the replica)")
    parser.add_argument("--low-water", type=float, default=2, help="adaptive.low_water")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s): lost beyond it")
    parser.add_argument("--output", default=str(HERE / "results" / "serve_adaptive.json"))
    args = parser.parse_args()

    predictor = Predictor.from_directory(args.model)
    points = predictor.operating_points
    if points is None:
        raise SystemExit(f"{args.model} has no stored operating points: `adapler calibrate --points` adds them")
    texts, labels = load_labelled(args.data, "test")
    accurate = points.point("accurate")
    overload_point = points.fastest_within(args.max_drop)
    # Reference: the accurate point's test accuracy on these texts, through the library.
    reference = sum(p.label == y for p, y in zip(predictor.predict(texts, operating_point="accurate"), labels)) / len(
        texts
    )
    del predictor

    settings = {"model": str(Path(args.model).resolve()), "num_replicas": 1, "default_operating_point": "accurate"}
    adaptive = {
        "max_accuracy_drop": args.max_drop,
        "backlog": "requests",
        "high_water": args.high_water,
        "low_water": args.low_water,
        "cooldown_s": 1.0,
    }
    from ray import serve

    from adapler_deploy.app import build_app

    base = start_local_serve()
    try:
        serve.run(build_app(settings), name="off", route_prefix="/off")
        serve.run(build_app({**settings, "adaptive": adaptive}), name="on", route_prefix="/on")

        def load(url: str, **kwargs) -> dict:
            return asyncio.run(
                run_load(
                    url,
                    texts,
                    texts_per_request=args.texts_per_request,
                    labels=labels,
                    timeout_s=args.timeout,
                    retries=0,
                    **kwargs,
                )
            )

        capacity = {
            name: load(
                f"{base}/off",
                concurrency=4,
                duration_s=args.capacity_seconds,
                warmup_s=3,
                body={"operating_point": name},
            )["requests_per_s"]
            for name in dict.fromkeys(["accurate", overload_point.name])
        }
        records = []
        for overload in args.overload:
            rate = overload * capacity["accurate"]
            for policy in ("off", "on"):
                record = load(
                    f"{base}/{policy}",
                    concurrency=1024,
                    arrival_rate=rate,
                    duration_s=args.duration,
                    warmup_s=0,
                    max_requests=math.ceil(rate * args.duration),
                )
                records.append(
                    {
                        "policy": policy,
                        "overload": overload,
                        **record,
                        "requests_lost": record["requests_sent"] - record["requests_ok"],
                    }
                )
    finally:
        stop_local_serve()

    print(f"{args.data} test, {len(texts)} texts, {args.texts_per_request} per request; model {args.model}")
    print(f"points: {points.describe()}; overload point (within {args.max_drop:g}): {overload_point.describe()}")
    print("capacity, closed loop: " + ", ".join(f"{k} {v:.2f} requests/s" for k, v in capacity.items()))
    print(
        f"{'load':>5} {'req/s in':>8} {'policy':>6} {'ok/sent':>9} {'req/s':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'accuracy':>8} {'implied':>8}  share per point"
    )
    for r in records:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in r["share_per_point"].items())
        print(
            f"{r['overload']:4g}x {r['arrival_rate']:8.2f} {r['policy']:>6} "
            f"{r['requests_ok']:>4}/{r['requests_sent']:<4} "
            f"{r['requests_per_s']:6.2f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f} {r['p99_ms']:8.0f} "
            f"{r['accuracy']:8.4f} {r['implied_accuracy']:8.4f}  {shares}"
        )
    for off, on in zip(records[::2], records[1::2]):  # the targets, on the policy-on record of each load
        on.update(
            {
                "p99_ratio_off_over_on": off["p99_ms"] / on["p99_ms"],
                "p99_at_least_3x_lower": off["p99_ms"] >= 3 * on["p99_ms"],
                "no_request_lost_with_policy": on["requests_lost"] == 0,
                "accuracy_within_budget": on["accuracy"] >= reference - args.max_drop,
            }
        )
        print(
            f"{off['overload']:g}x: p99 off / on {on['p99_ratio_off_over_on']:.2f}x (target >= 3); lost with the "
            f"policy {on['requests_lost']} (target 0); accuracy {on['accuracy']:.4f} vs accurate's {reference:.4f} "
            f"on these texts (target >= {reference - args.max_drop:.4f})"
        )
    setup = {
        "dataset": args.data,
        "model": args.model,
        "texts": len(texts),
        "texts_per_request": args.texts_per_request,
        "points": points.to_dict(),
        "overload_point": asdict(overload_point),
        "accurate": asdict(accurate),
        "accurate_test_accuracy": reference,
        "adaptive": adaptive,
        "capacity_requests_per_s": capacity,
    }
    output = Path(args.output)
    kept = [r for r in (json.loads(output.read_text()) if output.is_file() else []) if r["dataset"] != args.data]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(finite(kept + [{**setup, **r} for r in records]), indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
