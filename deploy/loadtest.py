"""HTTP load client for the Serve application: bounded concurrency and duration, every request's
fate counted, throughput and latency percentiles, JSON out.

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
``retries`` counts the extra tries and ``recovered`` the requests that a retry turned into ok. Latency percentiles are over the ok requests.
Throughput is ok requests (and texts) per second of the measured window (after ``--warmup``).
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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def load_texts(data: str, split: str = "test", limit: int | None = None) -> list[str]:
    """A text file (one text per line) or a data set name known to adapler.data (packaged offline:
    rotten_tomatoes, bbc_news)."""
    path = Path(data)
    if path.is_file():
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from adapler.data import load_splits

        texts = [str(t) for t in load_splits(data).split(split)["text"].tolist() if str(t).strip()]
    if limit:
        texts = texts[:limit]
    if not texts:
        raise SystemExit(f"loadtest: no texts in {data}")
    return texts


async def run_load(
    url: str, texts: list[str], *, concurrency: int = 8, duration_s: float = 30.0, warmup_s: float = 2.0,
    texts_per_request: int = 1, timeout_s: float = 30.0, max_requests: int | None = None, explain: bool = False,
    retries: int = 2, backoff_s: float = 0.2,
) -> dict:
    """Closed-loop load: ``concurrency`` workers, each sending its next request when the last one
    ends, for ``warmup_s + duration_s`` seconds (requests started in the warm-up are not counted)."""
    endpoint = url.rstrip("/") + "/predict"
    tally = Tally()
    chunks = itertools.cycle([texts[i : i + texts_per_request] for i in range(0, len(texts), texts_per_request)])
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
                r = await client.post(endpoint, json={"texts": batch, "explain": explain})
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

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started, retried, recovered
        while True:
            now = time.perf_counter()
            if now >= stop_at or (max_requests is not None and started >= max_requests):
                return
            counted = now >= measure_from
            if counted:
                started += 1
            batch = next(chunks)
            t0 = time.perf_counter()
            r, extra_tries = await send(client, batch)
            latency_ms = (time.perf_counter() - t0) * 1000  # retries included: what the caller waits
            if not counted:
                continue
            retried += extra_tries
            if isinstance(r, httpx.TimeoutException):
                fate("timeout", type(r).__name__)
                continue
            if isinstance(r, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
                fate("connection_error", type(r).__name__)
                await asyncio.sleep(0.05)  # do not spin on a dead port
                continue
            if isinstance(r, Exception):
                fate("other_error", f"{type(r).__name__}: {r}")
                continue
            tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
            if 200 <= r.status_code < 300:
                try:
                    predictions = r.json()["predictions"]
                except (ValueError, KeyError) as err:
                    fate("other_error", f"bad 2xx body: {err}")
                    continue
                fate("ok")
                recovered += extra_tries > 0
                tally.latencies_ms.append(latency_ms)
                tally.texts_ok += len(predictions)
                tally.speedups.extend(float(p.get("flops_speedup", math.nan)) for p in predictions)
            elif 400 <= r.status_code < 500:
                fate("http_4xx", f"{r.status_code} {r.text[:60]}")
            elif r.status_code >= 500:
                fate("http_5xx", f"{r.status_code} {r.text[:60]}")
            else:
                fate("other_error", f"status {r.status_code}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = max(time.perf_counter() - measure_from, 1e-9)
    sent = sum(tally.counts.values())
    speedups = [s for s in tally.speedups if math.isfinite(s)]
    return {
        "url": url,
        "concurrency": concurrency,
        "duration_s": round(elapsed, 3),
        "texts_per_request": texts_per_request,
        "requests_sent": sent,
        "requests_ok": tally.counts["ok"],
        **{f"requests_{k}" if k.startswith("http") else k: v for k, v in tally.counts.items() if k != "ok"},
        "retries": retried,
        "recovered": recovered,
        "requests_per_s": tally.counts["ok"] / elapsed,
        "texts_per_s": tally.texts_ok / elapsed,
        "p50_ms": percentile(tally.latencies_ms, 50),
        "p95_ms": percentile(tally.latencies_ms, 95),
        "p99_ms": percentile(tally.latencies_ms, 99),
        "mean_ms": sum(tally.latencies_ms) / len(tally.latencies_ms) if tally.latencies_ms else math.nan,
        "flops_speedup": sum(speedups) / len(speedups) if speedups else math.nan,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
    }


def _finite(value):
    """NaN/inf -> None, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
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


def _start_serve(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Serve on 127.0.0.1 with the model twice: packed removal at /adapler, none at /backbone."""
    import socket

    import ray
    from ray import serve

    from adapler_deploy.app import build_app

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    settings: dict = {"model": args.model, "num_replicas": args.replicas, "num_cpus": args.num_cpus}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = value
    # A private local instance (not a `ray start` cluster that may run here): the shutdown at the
    # end must not take down anybody else's Serve.
    ray.init(address="local", ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    targets = []
    for name, removal in (("adapler", "packed"), ("backbone", "none")):
        serve.run(build_app({**settings, "removal": removal}), name=name, route_prefix=f"/{name}")
        targets.append((name, f"{base}/{name}"))
    return targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapler_deploy.loadtest", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", action="append", metavar="NAME=URL",
                       help="a running service (repeatable; the first is compared with the second)")
    where.add_argument("--model", help="start Serve here with this model (directory or models:/name@alias), "
                                       "as AdapLeR and as the plain backbone, and load both")
    p.add_argument("--data", default="rotten_tomatoes", help="rotten_tomatoes | bbc_news | a text file, one text per line")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="use the first N texts")
    p.add_argument("--concurrency", type=int, default=8)
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

    texts = load_texts(args.data, args.split, args.limit)
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
            record = asyncio.run(run_load(
                url, texts, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup,
                texts_per_request=args.texts_per_request, timeout_s=args.timeout,
                max_requests=args.max_requests, explain=args.explain, retries=args.retries,
            ))
            record = {"dataset": Path(args.data).name, "model": name, **record}
            records.append(record)
            print(f"{name:>10}: {record['requests_ok']}/{record['requests_sent']} ok, "
                  f"{record['requests_per_s']:.1f} req/s, {record['texts_per_s']:.1f} texts/s, "
                  f"p50 {record['p50_ms']:.1f} ms, p95 {record['p95_ms']:.1f} ms, p99 {record['p99_ms']:.1f} ms, "
                  f"FLOPs speedup {record['flops_speedup']:.2f}x", file=sys.stderr)
        summary = {"records": records, **compare(records)}
        if "throughput_ratio" in summary:
            print(f"throughput ratio {targets[0][0]}/{targets[1][0]}: {summary['throughput_ratio']:.2f}x "
                  f"(FLOPs speedup {summary['flops_speedup']:.2f}x, ratio/speedup "
                  f"{summary['ratio_over_flops_speedup']:.2f})", file=sys.stderr)
        out = json.dumps(_finite(summary), indent=2)
        print(out)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(out + "\n")
    finally:
        if started_serve:
            from ray import serve
            import ray

            serve.shutdown()
            ray.shutdown()
    lost = sum(r["requests_sent"] - r["requests_ok"] for r in records)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
