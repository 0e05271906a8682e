"""HTTP load client for the Serve application: bounded concurrency and duration, every request's
fate counted, throughput and latency percentiles, JSON out. Closed loop (``--concurrency``
clients) or open loop (``--arrival-rate``: a fixed rate of requests whatever the answers).

Against running services (the first target is the model, the second the baseline):

    python -m adapler_deploy.loadtest --target adapler=http://127.0.0.1:8000 \
        --target backbone=http://127.0.0.1:8001 --data rotten_tomatoes --concurrency 8 --duration 30

Or let it start Serve itself (127.0.0.1) with the same settings twice - the model with packed
removal at /adapler and the plain backbone (removal="none") at /backbone - and compare:

    python -m adapler_deploy.loadtest --model runs/demo/model --data bbc_news --json-out bench/results/serve.json

Every request ends in exactly one of: ok (2xx), http_4xx, http_5xx, connection_error, timeout,
other_error; ``requests_sent`` is their sum. A 5xx or a broken connection (a replica that died
under load, a proxy restarting) is retried up to ``--retries`` times after a short back-off:
``/predict`` is idempotent, so a retry is safe, and the request's fate is that of its last try;
``retries`` counts the extra tries and ``recovered`` the requests that a retry turned into ok.
Latency percentiles are over the ok requests.
Throughput is ok requests (and texts) per second of the measured window (after ``--warmup``).
Each record also has ``share_per_point`` (ok requests by the operating point that ran),
``implied_accuracy`` (those points' dev accuracy, averaged over the texts) and, for a labelled
data set, ``accuracy`` (the labels the service returned, checked).
The JSON has one record per target and, with two targets, ``throughput_ratio`` (first / second)
and ``ratio_over_flops_speedup`` (that ratio divided by the first target's mean FLOPs speedup).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FATES = ("ok", "http_4xx", "http_5xx", "connection_error", "timeout", "other_error")


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES, 0))
    latencies_ms: list[float] = field(default_factory=list)  # ok requests only
    texts_ok: int = 0
    speedups: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # first words of non-ok fates, for the report
    requests_per_point: dict[str, int] = field(default_factory=dict)  # ok requests by the point they ran at
    point_accuracies: list[float] = field(default_factory=list)  # per ok text: its point's dev accuracy, if known
    correct: int = 0  # ok texts whose label matches (labelled texts only)
    labelled: int = 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def load_labelled(data: str, split: str = "test", limit: int | None = None) -> tuple[list[str], list[str] | None]:
    """Texts and, for a data set, their label names: a text file (one text per line, no labels) or a
    data set name known to adapler.data (packaged offline: rotten_tomatoes, bbc_news)."""
    path = Path(data)
    if path.is_file():
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = None
    else:
        from adapler.data import load_splits

        splits = load_splits(data)
        rows = splits.split(split)
        rows = rows[rows["text"].astype(str).str.strip() != ""]
        texts = [str(t) for t in rows["text"].tolist()]
        labels = [splits.label_names[int(i)] for i in rows["label"].tolist()]
    if limit:
        texts, labels = texts[:limit], (labels[:limit] if labels else None)
    if not texts:
        raise SystemExit(f"loadtest: no texts in {data}")
    return texts, labels


async def run_load(
    url: str,
    texts: list[str],
    *,
    concurrency: int = 8,
    duration_s: float = 30.0,
    warmup_s: float = 2.0,
    texts_per_request: int = 1,
    timeout_s: float = 30.0,
    max_requests: int | None = None,
    explain: bool = False,
    retries: int = 2,
    backoff_s: float = 0.2,
    arrival_rate: float | None = None,
    labels: list[str] | None = None,
    body: dict | None = None,
) -> dict:
    """Closed loop (default): ``concurrency`` workers, each sending its next request when the last
    one ends, for ``warmup_s + duration_s`` seconds (requests started in the warm-up are not counted).

    Open loop (``arrival_rate`` requests/s): request i starts at i / arrival_rate whatever the
    answers, until ``warmup_s + duration_s`` or ``max_requests``; then the requests in flight are
    awaited. Its latency counts from the scheduled start, so a client that falls behind does not
    hide the queue (``concurrency`` caps the open connections: set it above the expected backlog).

    ``labels`` (one label name per text) adds the measured ``accuracy``; ``body`` adds fields to
    every request (e.g. ``{"operating_point": "fast"}``). Every record counts the ok requests per
    operating point that ran (``share_per_point``) and the mean dev accuracy of those points over
    the texts (``implied_accuracy``, where the server knows it)."""
    endpoint = url.rstrip("/") + "/predict"
    tally = Tally()
    chunks = itertools.cycle(
        [range(i, min(i + texts_per_request, len(texts))) for i in range(0, len(texts), texts_per_request)]
    )
    started = retried = recovered = 0
    loop_start = time.perf_counter()
    measure_from = loop_start + warmup_s
    stop_at = measure_from + duration_s

    def fate(kind: str, detail: str = "") -> None:
        tally.counts[kind] += 1
        if detail:
            key = f"{kind}: {detail[:80]}"
            tally.errors[key] = tally.errors.get(key, 0) + 1

    async def send(client: httpx.AsyncClient, batch: list[str]) -> tuple[httpx.Response | Exception, int]:
        """The request, retried on 5xx and connection errors; (last response or error, tries - 1)."""
        for attempt in range(retries + 1):
            try:
                r = await client.post(endpoint, json={"texts": batch, "explain": explain, **(body or {})})
            except httpx.TimeoutException as err:
                return err, attempt  # not retried: the server may still be working on it
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
                r = err
            except Exception as err:  # noqa: BLE001 - every fate is counted, none is lost
                return err, attempt
            if isinstance(r, httpx.Response) and r.status_code < 500:
                return r, attempt
            if attempt < retries:
                await asyncio.sleep(backoff_s * 2**attempt)
        return r, retries

    def record_ok(predictions: list[dict], indices: range) -> None:
        tally.texts_ok += len(predictions)
        tally.speedups.extend(float(p.get("flops_speedup", math.nan)) for p in predictions)
        point = (predictions[0].get("operating_point") or {}) if predictions else {}
        name = point.get("name", "none")
        tally.requests_per_point[name] = tally.requests_per_point.get(name, 0) + 1
        for i, p in zip(indices, predictions):
            accuracy = (p.get("operating_point") or {}).get("dev_accuracy")
            if accuracy is not None:
                tally.point_accuracies.append(float(accuracy))
            if labels is not None:
                tally.labelled += 1
                tally.correct += p.get("label") == labels[i]

    async def one(client: httpx.AsyncClient, counted: bool, t0: float) -> None:
        """One request, its fate counted if ``counted``; latency from ``t0``."""
        nonlocal retried, recovered
        indices = next(chunks)
        r, extra_tries = await send(client, [texts[i] for i in indices])
        latency_ms = (time.perf_counter() - t0) * 1000  # retries included: what the caller waits
        if not counted:
            return
        retried += extra_tries
        if isinstance(r, httpx.TimeoutException):
            fate("timeout", type(r).__name__)
            return
        if isinstance(r, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            fate("connection_error", type(r).__name__)
            await asyncio.sleep(0.05)  # do not spin on a dead port
            return
        if isinstance(r, Exception):
            fate("other_error", f"{type(r).__name__}: {r}")
            return
        tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
        if 200 <= r.status_code < 300:
            try:
                predictions = r.json()["predictions"]
            except (ValueError, KeyError) as err:
                fate("other_error", f"bad 2xx body: {err}")
                return
            fate("ok")
            recovered += extra_tries > 0
            tally.latencies_ms.append(latency_ms)
            record_ok(predictions, indices)
        elif 400 <= r.status_code < 500:
            fate("http_4xx", f"{r.status_code} {r.text[:60]}")
        elif r.status_code >= 500:
            fate("http_5xx", f"{r.status_code} {r.text[:60]}")
        else:
            fate("other_error", f"status {r.status_code}")

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started
        while True:
            now = time.perf_counter()
            if now >= stop_at or (max_requests is not None and started >= max_requests):
                return
            counted = now >= measure_from
            started += counted
            await one(client, counted, now)

    async def schedule(client: httpx.AsyncClient) -> None:
        nonlocal started
        in_flight = []
        for i in itertools.count():
            due = loop_start + i / arrival_rate
            if due >= stop_at or (max_requests is not None and started >= max_requests):
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            counted = due >= measure_from
            started += counted
            in_flight.append(asyncio.create_task(one(client, counted, due)))
        await asyncio.gather(*in_flight)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        if arrival_rate is not None:
            await schedule(client)
        else:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = max(time.perf_counter() - measure_from, 1e-9)
    sent = sum(tally.counts.values())
    speedups = [s for s in tally.speedups if math.isfinite(s)]
    ok = tally.counts["ok"]
    return {
        "url": url,
        "concurrency": concurrency,
        "arrival_rate": arrival_rate,
        "duration_s": round(elapsed, 3),
        "texts_per_request": texts_per_request,
        "requests_sent": sent,
        "requests_ok": ok,
        **{f"requests_{k}" if k.startswith("http") else k: v for k, v in tally.counts.items() if k != "ok"},
        "retries": retried,
        "recovered": recovered,
        "requests_per_s": ok / elapsed,
        "texts_per_s": tally.texts_ok / elapsed,
        "p50_ms": percentile(tally.latencies_ms, 50),
        "p95_ms": percentile(tally.latencies_ms, 95),
        "p99_ms": percentile(tally.latencies_ms, 99),
        "mean_ms": sum(tally.latencies_ms) / len(tally.latencies_ms) if tally.latencies_ms else math.nan,
        "flops_speedup": sum(speedups) / len(speedups) if speedups else math.nan,
        "share_per_point": {k: v / ok for k, v in sorted(tally.requests_per_point.items())} if ok else {},
        "implied_accuracy": (
            sum(tally.point_accuracies) / len(tally.point_accuracies) if tally.point_accuracies else math.nan
        ),
        "accuracy": tally.correct / tally.labelled if tally.labelled else math.nan,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
    }


def finite(value):
    """NaN/inf -> None, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def compare(records: list[dict]) -> dict:
    """Throughput of the first target over the second, and that ratio over the first's FLOPs speedup."""
    if len(records) < 2 or not records[1]["texts_per_s"]:
        return {}
    ratio = records[0]["texts_per_s"] / records[1]["texts_per_s"]
    speedup = records[0]["flops_speedup"]
    return {
        "throughput_ratio": ratio,
        "flops_speedup": speedup,
        "ratio_over_flops_speedup": ratio / speedup if speedup and math.isfinite(speedup) else math.nan,
    }


def start_local_serve(port: int = 0) -> str:
    """A private local Ray instance (not a `ray start` cluster that may run here: the shutdown at
    the end must not take down anybody else's Serve) with Serve on 127.0.0.1:``port`` (0: a free
    one). Returns the base URL; stop with :func:`stop_local_serve`."""
    import ray
    from ray import serve

    from adapler_deploy.ports import free_ports

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    port = port or free_ports()[0]
    ray.init(address="local", ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def stop_local_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def _start_serve(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Serve on 127.0.0.1 with the model twice: packed removal at /adapler, none at /backbone."""
    from ray import serve

    from adapler_deploy.app import build_app

    settings: dict = {"model": args.model, "num_replicas": args.replicas, "num_cpus": args.num_cpus}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = value
    base = start_local_serve(args.port)
    targets = []
    for name, removal in (("adapler", "packed"), ("backbone", "none")):
        serve.run(build_app({**settings, "removal": removal}), name=name, route_prefix=f"/{name}")
        targets.append((name, f"{base}/{name}"))
    return targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapler_deploy.loadtest", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--target",
        action="append",
        metavar="NAME=URL",
        help="a running service (repeatable; the first is compared with the second)",
    )
    where.add_argument(
        "--model",
        help="start Serve here with this model (directory or models:/name@alias), "
        "as AdapLeR and as the plain backbone, and load both",
    )
    p.add_argument(
        "--data", default="rotten_tomatoes", help="rotten_tomatoes | bbc_news | a text file, one text per line"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="use the first N texts")
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="closed loop: clients; open loop (--arrival-rate): the most open connections",
    )
    p.add_argument(
        "--arrival-rate",
        type=float,
        metavar="R",
        help="open loop: start R requests per second whatever the answers (default: closed loop)",
    )
    p.add_argument("--operating-point", metavar="NAME", help="send this operating point with every request")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each measurement")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--retries", type=int, default=2, help="tries again after a 5xx or a broken connection")
    p.add_argument("--max-requests", type=int, help="stop a target after this many measured requests")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--json-out", help="also write the JSON here")
    # --model only
    p.add_argument("--port", type=int, default=0, help="--model: Serve port (default: a free one)")
    p.add_argument("--replicas", type=int, default=1, help="--model: replicas per application (fixed, same for both)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="--model: CPUs reserved per replica")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="--model: an application setting")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.texts_per_request < 1:
        p.error("--concurrency and --texts-per-request must be >= 1, --duration > 0")
    if args.arrival_rate is not None and not args.arrival_rate > 0:
        p.error("--arrival-rate must be > 0")

    texts, labels = load_labelled(args.data, args.split, args.limit)
    body = {"operating_point": args.operating_point} if args.operating_point else None
    started_serve = False
    try:
        if args.model:
            targets = _start_serve(args)
            started_serve = True
        else:
            targets = []
            for item in args.target:
                name, sep, url = item.partition("=")
                if not sep or not url.startswith(("http://", "https://")):
                    p.error(f"--target {item!r}: expected NAME=http://host:port")
                targets.append((name, url))
        records = []
        for name, url in targets:
            record = asyncio.run(
                run_load(
                    url,
                    texts,
                    concurrency=args.concurrency,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    texts_per_request=args.texts_per_request,
                    timeout_s=args.timeout,
                    max_requests=args.max_requests,
                    explain=args.explain,
                    retries=args.retries,
                    arrival_rate=args.arrival_rate,
                    labels=labels,
                    body=body,
                )
            )
            record = {"dataset": Path(args.data).name, "model": name, **record}
            records.append(record)
            print(
                f"{name:>10}: {record['requests_ok']}/{record['requests_sent']} ok, "
                f"{record['requests_per_s']:.1f} req/s, {record['texts_per_s']:.1f} texts/s, "
                f"p50 {record['p50_ms']:.1f} ms, p95 {record['p95_ms']:.1f} ms, p99 {record['p99_ms']:.1f} ms, "
                f"FLOPs speedup {record['flops_speedup']:.2f}x",
                file=sys.stderr,
            )
        summary = {"records": records, **compare(records)}
        if "throughput_ratio" in summary:
            print(
                f"throughput ratio {targets[0][0]}/{targets[1][0]}: {summary['throughput_ratio']:.2f}x "
                f"(FLOPs speedup {summary['flops_speedup']:.2f}x, ratio/speedup "
                f"{summary['ratio_over_flops_speedup']:.2f})",
                file=sys.stderr,
            )
        out = json.dumps(finite(summary), indent=2)
        print(out)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(out + "\n")
    finally:
        if started_serve:
            stop_local_serve()
    lost = sum(r["requests_sent"] - r["requests_ok"] for r in records)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
