"""The load client (deploy/loadtest.py) against a stub HTTP server on 127.0.0.1, no Ray: every
request gets one fate, retries of a 5xx, labels and operating points counted. Each load ends by
its request count (``max_requests``), not by time, so a busy machine can not leave it empty. The
same client against the real Serve app: tests/deploy/test_serve.py (slow tier)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapler_deploy.loadtest import compare, finite, percentile, run_load

POINT = {"name": "fast", "dev_accuracy": 0.9}


class Stub(BaseHTTPRequestHandler):
    """/predict: "pos" for every text; 400 when a text is "bad"; 503 to the first ``fail_first`` requests."""

    fail_first = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - the http.server name
        texts = json.loads(self.rfile.read(int(self.headers["content-length"])))["texts"]
        with Stub.lock:
            fail, Stub.fail_first = Stub.fail_first > 0, max(0, Stub.fail_first - 1)
        if fail:
            status, body = 503, {"detail": "busy"}
        elif "bad" in texts:
            status, body = 400, {"detail": "bad text"}
        else:
            status = 200
            body = {"predictions": [{"label": "pos", "flops_speedup": 2.0, "operating_point": POINT} for _ in texts]}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    Stub.fail_first = 0


def test_every_request_is_counted_with_its_point_and_labels(stub):
    texts, labels = ["a", "b", "c", "d"], ["pos", "neg", "pos", "pos"]
    record = asyncio.run(
        run_load(
            stub, texts, concurrency=2, duration_s=60, warmup_s=0, texts_per_request=2, max_requests=6, labels=labels
        )
    )
    assert record["requests_sent"] == record["requests_ok"] == 6, record
    assert record["share_per_point"] == {"fast": 1.0} and record["implied_accuracy"] == pytest.approx(0.9)
    assert record["accuracy"] == pytest.approx(0.75) and record["flops_speedup"] == 2.0
    assert record["p50_ms"] <= record["p95_ms"] <= record["p99_ms"]


def test_a_5xx_is_retried_and_a_4xx_is_not(stub):
    Stub.fail_first = 1
    record = asyncio.run(run_load(stub, ["a"], concurrency=1, duration_s=60, warmup_s=0, max_requests=1, backoff_s=0))
    assert record["requests_ok"] == 1 and record["retries"] == 1 and record["recovered"] == 1, record
    record = asyncio.run(run_load(stub, ["bad"], concurrency=1, duration_s=60, warmup_s=0, max_requests=2))
    assert record["requests_http_4xx"] == 2 and record["requests_ok"] == 0 and record["retries"] == 0, record


def test_a_dead_port_counts_connection_errors():
    record = asyncio.run(
        run_load("http://127.0.0.1:9", ["a"], concurrency=1, duration_s=60, warmup_s=0, retries=0, max_requests=2)
    )
    assert record["requests_ok"] == 0 and record["requests_sent"] == record["connection_error"] > 0


def test_percentile_finite_and_compare():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0 and percentile([1.0, 2.0], 99) == 2.0
    assert math.isnan(percentile([], 50))
    assert finite({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}
    ratio = compare([{"texts_per_s": 30.0, "flops_speedup": 3.0}, {"texts_per_s": 10.0, "flops_speedup": 1.0}])
    assert ratio["throughput_ratio"] == 3.0 and ratio["ratio_over_flops_speedup"] == 1.0
