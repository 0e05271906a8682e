"""Ray Serve for real on 127.0.0.1: predictions over HTTP equal Predictor's, explanations, bad
requests -> 4xx, token-budget batching, autoscaling. One Ray cluster + one Serve instance for the
module (a tiny random 2-layer BERT with the packaged tokenizer)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from helpers import adapler_serve, free_port, save_tiny_backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow  # a real Ray Serve on 127.0.0.1 (minutes); the decoder's tests are quick

TEXTS = [
    "A gripping, beautifully acted film.",
    "Dull.",
    "The plot wanders for two hours, the dialogue is stiff, and not even the excellent score "
    "can rescue a story that never decides what it wants to be.",
    "Not bad at all.",
]
LONG = " ".join(["the film is long and slow but sometimes quite lovely"] * 8)  # > 64 tokens: truncated to 64
BUDGET = 256  # max_batch_tokens of the test app: 4 truncated long texts
SETTINGS = {
    "max_texts": 16,
    "max_chars": 2000,
    "max_request_tokens": 200,
    "max_batch_tokens": BUDGET,
    "max_body_bytes": 200_000,
    "batch_wait_timeout_s": 0.2,
    "num_cpus": 0.5,
    "max_ongoing_requests": 32,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from adapler.modeling import AdapLeRForSequenceClassification

    backbone = save_tiny_backbone(tmp_path_factory.mktemp("backbone"))
    model = AdapLeRForSequenceClassification.from_backbone(backbone, num_labels=2, label_names=["neg", "pos"])
    model.tokenizer.model_max_length = 64
    out = tmp_path_factory.mktemp("adapler-model")
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def server(model_dir):
    import ray
    from ray import serve

    from adapler_deploy.app import build_app

    port = free_port()
    # address="local": a private instance, even when a `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": model_dir, **SETTINGS}), name="adapler", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url + "/predict", timeout=60, **kwargs)


def test_predictions_match_predictor(server, model_dir):
    from adapler.inference import Predictor

    r = _post(server, json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = Predictor.from_directory(model_dir).predict(TEXTS)
    assert [p["label"] for p in got] == [p.label for p in want]
    for g, w in zip(got, want):
        assert g["probabilities"].keys() == w.probabilities.keys()
        assert all(abs(g["probabilities"][k] - w.probabilities[k]) < 1e-4 for k in w.probabilities)
        assert g["input_tokens"] == w.input_tokens and g["kept_lengths"] == w.kept_lengths
        assert abs(g["flops_speedup"] - w.flops_speedup) < 1e-6
        assert "kept_tokens" not in g
    assert httpx.get(server + "/healthz", timeout=10).json()["status"] == "ok"


def test_runtime_onnx_serves_the_labels_of_the_torch_runtime(server, model_dir):
    from ray import serve

    from adapler_deploy.app import build_app

    serve.run(build_app({"model": model_dir, **SETTINGS, "runtime": "torch"}), name="torch", route_prefix="/torch")
    try:
        assert httpx.get(server + "/healthz", timeout=10).json()["runtime"] == "onnx"  # "auto" on CPU
        assert httpx.get(server + "/torch/healthz", timeout=10).json()["runtime"] == "torch"
        torch_side = _post(server + "/torch", json={"texts": TEXTS}).json()["predictions"]
        onnx_side = _post(server, json={"texts": TEXTS}).json()["predictions"]
    finally:
        serve.delete("torch")
    assert [p["label"] for p in onnx_side] == [p["label"] for p in torch_side]
    assert [p["kept_lengths"] for p in onnx_side] == [p["kept_lengths"] for p in torch_side]
    for o, t in zip(onnx_side, torch_side):
        assert all(abs(o["probabilities"][k] - t["probabilities"][k]) < 1e-4 for k in t["probabilities"])


def test_text_pairs_over_http_match_predictor(server, model_dir):
    """Sentence pairs ([CLS] a [SEP] b [SEP]) over HTTP give what Predictor gives."""
    from adapler.inference import Predictor

    texts, pairs = TEXTS[:3], ["It was great.", None, "The acting, though, was superb."]
    r = _post(server, json={"texts": texts, "text_pairs": pairs})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    predictor = Predictor.from_directory(model_dir)
    want = predictor.predict(texts, pairs)
    alone = predictor.predict(texts)
    assert [p["input_tokens"] for p in got] == [p.input_tokens for p in want]
    assert got[0]["input_tokens"] > alone[0].input_tokens
    # in a request with pairs, a missing pair is an empty second segment (one more [SEP]), as in training
    assert got[1]["input_tokens"] == alone[1].input_tokens + 1
    for g, w in zip(got, want):
        assert all(abs(g["probabilities"][k] - w.probabilities[k]) < 1e-4 for k in w.probabilities)


def test_explain_lists_kept_tokens_of_the_input(server, model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    r = _post(server, json={"texts": TEXTS[:3], "explain": True})
    assert r.status_code == 200, r.text
    for text, p in zip(TEXTS, r.json()["predictions"]):
        input_tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, truncation=True, max_length=64)["input_ids"])
        assert len(p["kept_tokens"]) == len(p["kept_lengths"])
        for layer, kept in enumerate(p["kept_tokens"]):
            assert len(kept) == p["kept_lengths"][layer]
            assert set(kept) <= set(input_tokens), (layer, kept)


BAD = [
    ("empty body", {"content": b""}, 400),
    ("invalid JSON", {"content": b'{"texts": ["a",', "headers": {"content-type": "application/json"}}, 400),
    (
        "non-UTF-8",
        {"content": b'{"texts": ["\xff\xfe caf\xe9"]}', "headers": {"content-type": "application/json"}},
        400,
    ),
    ("arrays nested 5,000 deep", {"content": b"[" * 5000 + b"]" * 5000}, 400),
    ("objects nested 3,000 deep", {"content": b'{"a":' * 3000 + b"1" + b"}" * 3000}, 400),
    ("not an object", {"json": ["a", "b"]}, 422),
    ("texts not a list", {"json": {"texts": "a single string"}}, 422),
    ("wrong item type", {"json": {"texts": ["ok", 3]}}, 422),
    ("explain not bool", {"json": {"texts": ["ok"], "explain": "yes"}}, 422),
    ("empty list", {"json": {"texts": []}}, 422),
    ("empty text", {"json": {"texts": ["   "]}}, 422),
    ("pairs of the wrong length", {"json": {"texts": ["a", "b"], "text_pairs": ["x"]}}, 422),
    ("lone surrogate", {"content": rb'{"texts": ["caf\ud800"]}'}, 422),
    ("lone surrogate in a pair", {"content": rb'{"texts": ["a"], "text_pairs": ["\udc00 x"]}'}, 422),
    ("unknown field", {"json": {"texts": ["a"], "txt": 1}}, 422),
    # both got a 500 before adapler_deploy.decoder: json.loads' ValueError (not a JSONDecodeError)
    # and OverflowError when a factor beyond the float range met the operating points
    ("a number of 5,000 digits", {"content": b'{"texts": ["a"], "factor": ' + b"1" * 5000 + b"}"}, 400),
    ("a factor beyond the float range", {"content": b'{"texts": ["a"], "factor": 1' + b"0" * 400 + b"}"}, 422),
    ("1 MB text", {"json": {"texts": ["x" * 1_000_000]}}, 413),
    ("10,000 texts", {"json": {"texts": ["good film"] * 10_000}}, 413),
    ("too many tokens", {"json": {"texts": [LONG] * 4}}, 413),
]


def test_bad_requests_get_a_4xx_with_a_message(server):
    for name, kwargs, status in BAD:
        r = _post(server, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        message = r.json()["error"]
        assert isinstance(message, str) and len(message) > 10 and "\n" not in message, (name, message)
    r = _post(server, json={"texts": ["still alive?"]})  # the service still answers
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_concurrent_requests_are_batched_within_the_token_budget(server):
    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            texts = [[TEXTS[i % len(TEXTS)]] for i in range(12)] + [[LONG]] * 8
            responses = await asyncio.gather(*(client.post(server + "/predict", json={"texts": t}) for t in texts))
            return [r.status_code for r in responses]

    before = len(httpx.get(server + "/stats", timeout=10).json()["batches"])
    assert asyncio.run(burst()) == [200] * 20
    stats = httpx.get(server + "/stats", timeout=10).json()
    batches = stats["batches"][before:]
    assert stats["max_batch_tokens"] == BUDGET
    assert sum(b["requests"] for b in batches) == 20
    assert max(b["requests"] for b in batches) > 1, batches
    assert all(b["tokens"] <= BUDGET for b in batches), batches
    # 8 long texts of 64 tokens can not share one batch of 256 tokens
    assert len(batches) >= 3, batches


def _running_replicas(app: str, states: tuple[str, ...] = ("RUNNING",)) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "AdapLeR" not in status.deployments:
        return 0
    replica_states = status.deployments["AdapLeR"].replica_states
    return sum(replica_states.get(state, 0) for state in states)


# A scale-up decision shows as a STARTING replica at once; on a loaded 2-core machine the new
# replica may take a minute to load torch and the model before it is RUNNING.
SCALING_STATES = ("STARTING", "RUNNING")


def test_autoscaling_adds_a_replica_under_load(server, model_dir):
    from ray import serve

    from adapler_deploy.app import build_app

    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }
    args = {
        **SETTINGS,
        "model": model_dir,
        "batch_wait_timeout_s": 0.05,
        "num_cpus": 0.25,
        "autoscaling_config": autoscaling,
    }
    serve.run(build_app(args), name="auto", route_prefix="/auto")
    try:
        assert _running_replicas("auto") == 1

        async def load(seconds: float) -> int:
            stop = time.monotonic() + seconds
            peak = 1

            async def worker(client):
                while time.monotonic() < stop:
                    await client.post(server + "/auto/predict", json={"texts": [LONG, TEXTS[2]]})

            async def watch():
                nonlocal peak
                while time.monotonic() < stop and peak < 2:
                    peak = max(peak, await asyncio.to_thread(_running_replicas, "auto", SCALING_STATES))
                    await asyncio.sleep(0.5)

            async with httpx.AsyncClient(timeout=60) as client:
                tasks = [asyncio.create_task(worker(client)) for _ in range(8)]
                await watch()
                stop = time.monotonic()  # noqa: F841  (stop the workers early once scaled)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return peak

        assert asyncio.run(load(90)) >= 2, "no second replica after 90 s of load"
        deadline = time.monotonic() + 120  # and back to 1 when the load stops
        while _running_replicas("auto", SCALING_STATES) != 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert _running_replicas("auto", SCALING_STATES) == 1
    finally:
        serve.delete("auto")


def test_loadtest_counts_every_request(server):
    from adapler_deploy.loadtest import compare, run_load

    records = [
        asyncio.run(run_load(server, TEXTS * 5, concurrency=8, duration_s=3, warmup_s=0.5, texts_per_request=3))
        for _ in range(2)
    ]
    for r in records:
        assert r["requests_sent"] == r["requests_ok"] > 0, r
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["requests_per_s"] > 0 and r["flops_speedup"] > 0
    assert compare(records)["throughput_ratio"] > 0
    bad = asyncio.run(run_load("http://127.0.0.1:9", TEXTS, concurrency=2, duration_s=0.5, warmup_s=0))
    assert bad["requests_ok"] == 0 and bad["requests_sent"] == bad["connection_error"] > 0


def test_open_loop_load_keeps_its_rate_and_checks_the_labels(server, model_dir):
    from adapler.inference import Predictor
    from adapler_deploy.loadtest import run_load

    texts = TEXTS * 3
    labels = [p.label for p in Predictor.from_directory(model_dir).predict(texts)]
    record = asyncio.run(
        run_load(
            server,
            texts,
            arrival_rate=8,
            duration_s=5,
            warmup_s=0,
            max_requests=12,
            texts_per_request=2,
            labels=labels,
            concurrency=64,
        )
    )
    assert record["requests_sent"] == record["requests_ok"] == 12, record  # bounded by count before time
    assert record["arrival_rate"] == 8 and record["duration_s"] >= 11 / 8  # the 12th starts at 1.375 s
    assert record["accuracy"] == 1.0 and record["share_per_point"] == {"default": 1.0}
    wrong = [{"neg": "pos", "pos": "neg"}[label] for label in labels]
    record = asyncio.run(run_load(server, texts, arrival_rate=20, duration_s=0.5, warmup_s=0, labels=wrong))
    assert record["requests_sent"] == record["requests_ok"] == 10 and record["accuracy"] == 0.0


def test_serve_command_stops_cleanly_on_sigterm(model_dir):
    """`adapler serve` as systemd or Kubernetes run it: on SIGTERM the request in flight is
    answered, Serve and Ray shut down, and the process exits 0 without a native stack dump."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    # a request waits 5 s for its batch to fill: it is still in flight at the SIGTERM
    options = ["--replicas", "1", "--num-cpus", "0.5", "--set", "batch_wait_timeout_s=5"]
    with adapler_serve(model_dir, *options) as served:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_post, served.url, json={"texts": TEXTS[:2]})
            time.sleep(1.5)
            served.proc.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert served.proc.wait(timeout=120) == 0
        stderr = served.stderr()
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2, answer.text
    assert "adapler serve: stopping" in stderr
    for crash in ("SIGTERM received", "Aborted", "Traceback"):
        assert crash not in stderr, stderr[-3000:]


def test_models_uri_resolves_to_a_safetensors_directory(model_dir, mlflow_uri, tmp_path):
    """models:/<name>@<alias> -> the registered AdapLeR directory (in a subprocess: MLflow's
    registration and download set process-wide tracking URIs)."""
    import json
    import subprocess
    import sys

    uri = mlflow_uri
    script = f"""
import json
from adapler_pipelines.config import MlflowConfig, PipelineConfig
from adapler_pipelines.registry import RegistryError, register_model
from adapler_pipelines.model_source import resolve_model
config = PipelineConfig()
config.mlflow = MlflowConfig(tracking_uri={uri!r}, experiment="deploy-test")
register_model({model_dir!r}, config, {{}}, "adapler-deploy-test", alias="champion")
directory = resolve_model("models:/adapler-deploy-test@champion", {uri!r})
try:
    resolve_model("models:/adapler-deploy-test@nope", {uri!r})
    error = ""
except RegistryError as err:
    error = str(err)
print(json.dumps({{"dir": str(directory), "error": error}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    from adapler.inference import Predictor

    texts = TEXTS[:2]
    got = Predictor.from_directory(out["dir"]).predict(texts)
    assert [p.label for p in got] == [p.label for p in Predictor.from_directory(model_dir).predict(texts)]
    assert "alias 'nope'" in out["error"]


def _kill_one_replica(app: str) -> str:
    """SIGKILL-like end of one replica actor of ``app`` (no restart of that actor: Serve must
    notice and start a replacement)."""
    import ray

    replicas = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]
    assert len(replicas) >= 2, replicas
    victim = replicas[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    return victim["name"]


def test_a_replica_killed_under_load_loses_no_request(server, model_dir):
    from ray import serve

    from adapler_deploy.app import build_app
    from adapler_deploy.loadtest import run_load

    serve.run(
        build_app({**SETTINGS, "model": model_dir, "num_replicas": 2, "num_cpus": 0.25}),
        name="fragile",
        route_prefix="/fragile",
    )
    try:

        async def scenario() -> dict:
            load = asyncio.create_task(
                run_load(
                    server + "/fragile",
                    TEXTS * 5,
                    concurrency=6,
                    duration_s=10,
                    warmup_s=0,
                    texts_per_request=2,
                    retries=4,
                    backoff_s=0.5,
                )
            )
            await asyncio.sleep(3)
            await asyncio.to_thread(_kill_one_replica, "fragile")
            return await load

        record = asyncio.run(scenario())
        fates = ("requests_ok", "requests_http_4xx", "requests_http_5xx", "connection_error", "timeout", "other_error")
        assert record["requests_sent"] == sum(record[f] for f in fates), record  # every fate counted
        assert record["requests_sent"] == record["requests_ok"] > 0, record  # and none lost
        deadline = time.monotonic() + 180  # Serve starts a replacement for the dead replica
        while _running_replicas("fragile", SCALING_STATES) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _running_replicas("fragile", SCALING_STATES) == 2
    finally:
        serve.delete("fragile")


# ------------------------------------------------------------------ operating points
# factor, dev accuracy, dev FLOPs speedup (made up): accurate = 1, balanced = 2, fast = 4; the
# fastest within 0.02 of accurate (the adaptive policy's overload point) is fast.
POINTS_CURVE = [(1.0, 0.80, 1.0), (2.0, 0.795, 1.5), (4.0, 0.78, 3.0), (8.0, 0.70, 10.0)]


@pytest.fixture(scope="module")
def points_model_dir(model_dir, tmp_path_factory) -> str:
    """The module's model with stored operating points."""
    from adapler.modeling import AdapLeRForSequenceClassification
    from adapler.operating_points import CurvePoint, OperatingPoints, PointBudgets

    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    curve = [CurvePoint(f, a, s, 100.0) for f, a, s in POINTS_CURVE]
    model.operating_points = OperatingPoints.from_curve(curve, PointBudgets(), "made up")
    assert dict(model.operating_points.named) == {"accurate": 1.0, "balanced": 2.0, "fast": 4.0}
    out = tmp_path_factory.mktemp("points-model")
    model.save_pretrained(out)
    return str(out)


def test_each_request_runs_at_the_point_it_names(server, points_model_dir):
    from ray import serve

    from adapler.inference import Predictor
    from adapler_deploy.app import build_app

    serve.run(build_app({**SETTINGS, "model": points_model_dir}), name="points", route_prefix="/points")
    try:
        url = server + "/points"
        predictor = Predictor.from_directory(points_model_dir)
        stored = {
            "accurate": (1.0, 0.80, 1.0),
            "balanced": (2.0, 0.795, 1.5),
            "fast": (4.0, 0.78, 3.0),
            "default": (1.0, 0.80, 1.0),
            "factor=8": (8.0, 0.70, 10.0),
            "factor=3": (3.0, None, None),
        }
        kept = {}
        for knob, name in (
            ({}, "default"),
            ({"operating_point": "accurate"}, "accurate"),
            ({"operating_point": "balanced"}, "balanced"),
            ({"operating_point": "fast"}, "fast"),
            ({"target_speedup": 2}, "fast"),
            ({"factor": 8}, "factor=8"),
            ({"factor": 3.0}, "factor=3"),
        ):
            r = _post(url, json={"texts": TEXTS, **knob})
            assert r.status_code == 200, (knob, r.text)
            got = r.json()["predictions"]
            factor, accuracy, speedup = stored[name]
            want_point = {"name": name, "factor": factor, "dev_accuracy": accuracy, "dev_flops_speedup": speedup}
            assert all(p["operating_point"] == {k: v for k, v in want_point.items() if v is not None} for p in got), got
            want = predictor.predict(TEXTS, **knob)  # the same point through the library
            assert [p["kept_lengths"] for p in got] == [p.kept_lengths for p in want], knob
            assert all(
                abs(g["probabilities"][k] - w.probabilities[k]) < 1e-5
                for g, w in zip(got, want)
                for k in w.probabilities
            )
            kept[name] = sum(sum(p["kept_lengths"]) for p in got)
        assert kept["factor=8"] < kept["default"]  # the points really differ

        async def mixed() -> tuple[list, list]:  # requests at different points, in the same batches
            names = ["fast", None, "balanced", None, "fast", "accurate"]
            async with httpx.AsyncClient(timeout=60) as client:
                bodies = [{"texts": TEXTS[:2], **({"operating_point": n} if n else {})} for n in names]
                responses = await asyncio.gather(*(client.post(url + "/predict", json=b) for b in bodies))
            return names, [r.json()["predictions"] for r in responses]

        names, answers = asyncio.run(mixed())
        for name, predictions in zip(names, answers):
            assert {p["operating_point"]["name"] for p in predictions} == {name or "default"}

        for body, message in (
            ({"operating_point": "turbo"}, "unknown operating point 'turbo'; stored points: accurate (factor 1"),
            ({"factor": -1}, "factor must be a finite number > 0"),
            ({"target_speedup": 50}, "target_speedup 50 is beyond the stored curve (at most 10.00x); stored points"),
            ({"target_speedup": 0}, "target_speedup must be a finite number > 0"),
            ({"operating_point": "fast", "factor": 2}, "at most one of"),
            ({"factor": "fast"}, "factor"),
        ):
            r = _post(url, json={"texts": TEXTS[:1], **body})
            assert r.status_code == 422 and message in r.json()["error"], (body, r.status_code, r.text)
        stats = httpx.get(url + "/stats", timeout=10).json()
        assert stats["requests_per_point"]["fast"] == 4 and stats["requests_per_point"]["default"] == 3, stats
        assert (
            "balanced (factor 2, dev accuracy 0.7950, 1.50x)"
            in httpx.get(url + "/healthz", timeout=10).json()["operating_points"]
        )
    finally:
        serve.delete("points")
    r = _post(server, json={"texts": TEXTS[:1], "operating_point": "fast"})  # a model without points
    assert r.status_code == 422 and "no stored operating points" in r.json()["error"], r.text


def test_adaptive_policy_speeds_up_unasked_requests_under_a_burst_and_switches_back(server, points_model_dir):
    from ray import serve

    from adapler_deploy.app import build_app

    adaptive = {"high_water": 4, "low_water": 1, "cooldown_s": 0.5, "max_accuracy_drop": 0.02}
    serve.run(
        build_app({**SETTINGS, "model": points_model_dir, "adaptive": adaptive}),
        name="adaptive",
        route_prefix="/adaptive",
    )
    try:
        url = server + "/adaptive"

        async def burst() -> tuple[list[str], list[str]]:
            async with httpx.AsyncClient(timeout=60) as client:
                unasked = [client.post(url + "/predict", json={"texts": [LONG]}) for _ in range(16)]
                asked = [
                    client.post(url + "/predict", json={"texts": [LONG], "operating_point": "accurate"})
                    for _ in range(4)
                ]
                responses = await asyncio.gather(*unasked, *asked)
            names = [r.json()["predictions"][0]["operating_point"]["name"] for r in responses]
            return names[:16], names[16:]

        unasked, asked = asyncio.run(burst())
        assert "fast" in unasked, unasked  # the backlog of 20 requests passed high_water
        assert set(unasked) <= {"fast", "default"}
        assert asked == ["accurate"] * 4  # a request that named its point keeps it
        time.sleep(1.5)  # drained: calm for more than cooldown_s
        r = _post(url, json={"texts": TEXTS[:1]})
        assert r.json()["predictions"][0]["operating_point"]["name"] == "default"
        stats = httpx.get(url + "/stats", timeout=10).json()
        assert [s["overloaded"] for s in stats["adaptive"]["switches"]] == [True, False], stats["adaptive"]
        assert stats["adaptive"]["overload_point"] == "fast" and not stats["adaptive"]["overloaded"]
        counts = stats["requests_per_point"]
        assert counts["accurate"] == 4 and counts["fast"] == unasked.count("fast")
        assert counts["default"] == unasked.count("default") + 1
        assert any(b["overloaded"] for b in stats["batches"]) and not stats["batches"][-1]["overloaded"]
    finally:
        serve.delete("adaptive")
