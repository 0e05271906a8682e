"""Ray Serve application: an AdapLeR model behind a FastAPI ingress.

    serve run deploy/serve_config.yaml              # or: adapler serve --model DIR|models:/name@alias
    curl -s 127.0.0.1:8000/predict -H 'content-type: application/json' \
         -d '{"texts": ["A gripping, beautifully acted film."], "explain": true}'

Endpoints: ``POST /predict`` (:class:`~adapler_deploy.schemas.PredictRequest` ->
:class:`~adapler_deploy.schemas.PredictResponse`), ``GET /healthz``, ``GET /stats`` (the recent
batches of this replica: requests, texts and tokens in each, and the token budget). Serve's
readiness and liveness go through :meth:`AdapLeRService.check_health`.

Inference is :class:`adapler.inference.Predictor` (tokenization, length-sorted batching, packed
removal), nothing else.

Operating points
----------------
A request may name the point of the model's speed/accuracy curve it runs at
(``"operating_point": "fast"``, ``"target_speedup": 3`` or ``"factor": 1.3``;
:mod:`adapler.operating_points`); requests at different points share a batch (the forward's
per-example ``eta_factors``). One that names none runs at ``default_operating_point`` (the model
as saved unless set), or, with the ``adaptive`` policy (:mod:`adapler_deploy.adaptive`), at the
fastest stored point within its accuracy budget while the replica's backlog is above the water
marks. Every prediction says which point ran, with its dev accuracy and speedup; a bad value is a
422 naming the stored points. Requests per point are counted in ``GET /stats`` and as the Serve
metric ``adapler_requests_per_point`` (tag ``operating_point``; Ray's metrics API).

Batching by token budget
------------------------
Ray Serve 2.60's ``@serve.batch`` takes a ``batch_size_fn``: the batch's size is computed by a
function of its items instead of ``len``, and a batch is closed when adding the next request
would pass ``max_batch_size``. We use that directly: the ingress counts each request's tokens
with ``Predictor.token_counts`` (after truncation, [CLS]/[SEP] included), the batch size is the
sum of the tokens of its requests, and ``max_batch_size`` is ``max_batch_tokens``. So 30 long
documents fill a batch that 30 tweets leave mostly empty, and a batch never holds more tokens
than the budget. A request is never split across batches, hence ``max_request_tokens <=
max_batch_tokens`` (checked in the settings); a bigger request gets a 413 from the ingress, so
Serve's "item larger than max_batch_size" error can not happen. Inside a batch, Predictor sorts
the texts by length and runs ``predict_batch_size`` texts per forward pass.

``max_ongoing_requests`` must be above the number of requests we want in one batch: a replica
admits at most ``max_ongoing_requests`` requests at a time (Serve's default is 5), and a batch
can only be made of admitted requests, so with the default no batch would ever hold more than
5 requests whatever the token budget. (Serve logs a warning when ``max_ongoing_requests`` is
below ``max_batch_size``; with ``batch_size_fn`` that "size" is our token budget, not a count
of requests, so the warning is expected and harmless.)

Hardening: binds 127.0.0.1 (serve_config.yaml, ``adapler serve``); a model directory is loaded
only if it has its weights as safetensors and no pickle-format file; every bad request is a 4xx
with ``{"error": "<one line>"}``: the body is decoded by :mod:`adapler_deploy.decoder` (pure, tested
without Ray), then this class predicts and encodes the answer.
"""

# No `from __future__ import annotations`: FastAPI (through serve.ingress) needs real annotations.

import asyncio
import copy
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics

from adapler.operating_points import OperatingPoint, OperatingPointError
from adapler_deploy.adaptive import LoadPolicy
from adapler_deploy.decoder import Rejection, declared_too_large, decode_request
from adapler_deploy.schemas import PredictRequest, PredictResponse, ServeSettings
from adapler_pipelines.model_source import resolve_model

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "AdapLeR"


@dataclass
class Job:
    """One HTTP request, as it waits in the batch queue."""

    texts: list[str]
    text_pairs: list[str | None] | None
    explain: bool
    tokens: int
    asked: bool = False  # the request named its operating point: the load policy leaves it alone
    point: OperatingPoint | None = None  # that point (None: removal none, or not asked)


def batch_tokens(jobs: list[Job]) -> int:
    """The size of a batch for ``@serve.batch``: its tokens, not its number of requests."""
    return sum(job.tokens for job in jobs)


def _answer(rejection: Rejection) -> JSONResponse:
    return JSONResponse(status_code=rejection.status, content={"error": rejection.message})


api = FastAPI(
    title="adapler",
    description="AdapLeR text classification with token removal",
    responses={
        400: {"description": "body is not UTF-8 JSON, or nested too deep"},
        413: {"description": "over a limit"},
        422: {"description": "wrong shape or types, or a text that is not valid Unicode"},
    },
)


@serve.deployment(
    name=DEPLOYMENT_NAME,
    # See the module docstring: above the number of requests a batch should hold.
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(api)
class AdapLeRService:
    def __init__(self, settings: dict[str, Any]):
        import torch

        from adapler.inference import Predictor, resolve_runtime

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.settings = ServeSettings(**settings)
        self._ready = False
        torch.set_num_threads(self.settings.torch_threads)
        directory = resolve_model(self.settings.model, self.settings.tracking_uri)
        self.runtime = resolve_runtime(self.settings.runtime, self.settings.device, self.settings.removal, directory)
        self.predictor = Predictor.from_directory(
            directory,
            device=self.settings.device,
            quantize=self.settings.quantize,
            runtime=self.runtime,
            batch_size=self.settings.predict_batch_size,
            removal=self.settings.removal,
        )
        # Token counting (the ingress, many requests at once) and inference (the batch, one at a
        # time) run in worker threads. A Hugging Face fast tokenizer is not thread-safe: a call
        # with other truncation/padding settings running beside another fails ("Unable to
        # create tensor", "Already borrowed"). So counting gets a tokenizer of its own (same
        # files, same Predictor.token_counts code, serialised by a lock), and the model's
        # tokenizer is used only by the batch (max_concurrent_batches=1).
        from transformers import AutoTokenizer

        counting_tokenizer = AutoTokenizer.from_pretrained(directory)
        counting_tokenizer.model_max_length = self.predictor.model.tokenizer.model_max_length
        self.counter = copy.copy(self.predictor)
        self.counter.model = SimpleNamespace(tokenizer=counting_tokenizer)
        self.count_lock = threading.Lock()
        self.predict_batch.set_max_batch_size(self.settings.max_batch_tokens)
        self.predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.batches: deque[dict] = deque(maxlen=self.settings.stats_window)
        self.requests_served = 0
        self._setup_points()
        # Warm up: the first forward pass pays for lazy initialisation (kernels, thread pools).
        self.predictor.predict(["warm up the model", "a second, somewhat longer text to warm up"], explain=True)
        self._ready = True
        logger.info(
            "adapler: serving %s (removal=%s, runtime=%s, quantize=%s) from %s",
            self.settings.model,
            self.settings.removal,
            self.runtime,
            self.settings.quantize,
            directory,
        )

    def _setup_points(self) -> None:
        """The default point, the load policy and its overload point, backlog and counters."""
        # OperatingPointError here (a name the model does not have) fails the replica's start, with the names
        self.default_point = self.predictor.resolve(operating_point=self.settings.default_operating_point)
        self.policy: LoadPolicy | None = None
        self.overload_point = self.default_point
        adaptive = self.settings.adaptive
        if adaptive is not None:
            points = self.predictor.operating_points
            if points is None:
                raise ValueError(
                    "the adaptive policy needs a model with stored operating points: add them with "
                    "`adapler calibrate --points` (`adapler run` stores them with the models it registers)"
                )
            self.policy = LoadPolicy(adaptive.high_water, adaptive.low_water, adaptive.cooldown_s)
            faster = points.fastest_within(adaptive.max_accuracy_drop)
            if (self.default_point.dev_flops_speedup or 0.0) < faster.dev_flops_speedup:
                self.overload_point = faster
            else:
                logger.warning(
                    "adapler: no stored point within max_accuracy_drop %g is faster than the default %s: "
                    "the adaptive policy changes nothing",
                    adaptive.max_accuracy_drop,
                    self.default_point.name,
                )
        self.backlog = {"requests": 0, "tokens": 0}  # admitted by the ingress, not answered yet
        self.requests_per_point: dict[str, int] = {}
        self.metric_requests = metrics.Counter(
            "adapler_requests_per_point",
            description="requests answered, by the operating point they ran at",
            tag_keys=("operating_point",),
        )
        self.metric_overloaded = metrics.Gauge(
            "adapler_overloaded", description="1 while the load policy runs unasked requests at its overload point"
        )

    def _overloaded(self) -> bool:
        """The load policy's state, after seeing the backlog now (False without a policy)."""
        if self.policy is None:
            return False
        overloaded = self.policy.update(self.backlog[self.settings.adaptive.backlog])
        self.metric_overloaded.set(int(overloaded))
        return overloaded

    # ------------------------------------------------------------------ health
    def check_health(self) -> None:
        """Serve's readiness/liveness hook: raising marks the replica unhealthy (it is replaced)."""
        if not self._ready:
            raise RuntimeError("model not loaded")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {
            "status": "ok" if self._ready else "loading",
            "model": self.settings.model,
            "removal": self.settings.removal,
            "runtime": self.runtime,
            "quantize": self.settings.quantize,
            "labels": self.predictor.label_names,
            "max_length": self.predictor.max_length,
            "operating_points": points.describe() if (points := self.predictor.operating_points) else None,
            "default_operating_point": self.default_point.name if self.default_point else None,
        }

    @api.get("/stats")
    async def stats(self) -> dict:
        return {
            "max_batch_tokens": self.settings.max_batch_tokens,
            "requests_served": self.requests_served,
            "requests_per_point": dict(self.requests_per_point),
            "backlog": dict(self.backlog),
            "adaptive": None
            if self.policy is None
            else {
                "overloaded": self.policy.overloaded,
                "overload_point": self.overload_point.name,
                "switches": [
                    {"overloaded": w.overloaded, "backlog": w.backlog, "time": w.at} for w in self.policy.switches
                ],
            },
            "batches": list(self.batches),
        }

    # ------------------------------------------------------------------ predict
    @api.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,  # kept_tokens only when explain=true
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(self, request: Request):
        # The body is read here and decoded by adapler_deploy.decoder rather than by FastAPI, so
        # that every bad body gets a 4xx of its own and one clear line (see that module).
        limit = self.settings.max_body_bytes
        if rejection := declared_too_large(request.headers.get("content-length"), limit):
            return _answer(rejection)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                break  # the decoder answers 413 without the rest
        req = decode_request(bytes(body), self.settings)
        if isinstance(req, Rejection):
            return _answer(req)

        asked = any(v is not None for v in (req.operating_point, req.target_speedup, req.factor))
        try:
            point = self.predictor.resolve(req.operating_point, req.target_speedup, req.factor) if asked else None
        except OperatingPointError as err:
            return _answer(Rejection(422, str(err)))

        counts = await asyncio.to_thread(self._token_counts, req.texts, req.text_pairs)
        tokens = sum(counts)
        if tokens > self.settings.max_request_tokens:
            return _answer(
                Rejection(413, f"request has {tokens} tokens > max_request_tokens {self.settings.max_request_tokens}")
            )
        self.backlog["requests"] += 1
        self.backlog["tokens"] += tokens
        self._overloaded()
        try:
            predictions = await self.predict_batch(Job(req.texts, req.text_pairs, req.explain, tokens, asked, point))
        finally:
            self.backlog["requests"] -= 1
            self.backlog["tokens"] -= tokens
            self._overloaded()  # a backlog that drains starts the policy's calm period now, not at the next request
        self.requests_served += 1
        ran = predictions[0].operating_point
        name = ran.name if ran is not None else "none"
        self.requests_per_point[name] = self.requests_per_point.get(name, 0) + 1
        self.metric_requests.inc(tags={"operating_point": name})
        return {
            "predictions": [p.to_dict() for p in predictions],
            "model": self.settings.model,
            "removal": self.settings.removal,
        }

    def _token_counts(self, texts: list[str], text_pairs: list[str | None] | None) -> list[int]:
        with self.count_lock:
            return self.counter.token_counts(texts, text_pairs)

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.01, batch_size_fn=batch_tokens)
    async def predict_batch(self, jobs: list[Job]) -> list[list]:
        """One batch of requests (at most ``max_batch_tokens`` tokens) through Predictor.

        Requests with and without text pairs are run apart: in one Predictor call a missing
        pair would be tokenized as an empty second segment."""
        start = time.perf_counter()
        overloaded = self._overloaded()
        unasked = self.overload_point if overloaded else self.default_point
        for job in jobs:
            job.point = job.point if job.asked else unasked
        results: list[list | None] = [None] * len(jobs)
        for with_pairs in (False, True):
            group = [i for i, job in enumerate(jobs) if (job.text_pairs is not None) == with_pairs]
            if not group:
                continue
            texts = [t for i in group for t in jobs[i].texts]
            pairs = [p for i in group for p in jobs[i].text_pairs] if with_pairs else None
            explain = any(jobs[i].explain for i in group)
            points = [jobs[i].point for i in group for _ in jobs[i].texts]
            predictions = await asyncio.to_thread(self.predictor.predict, texts, pairs, explain, points=points)
            offset = 0
            for i in group:
                mine = predictions[offset : offset + len(jobs[i].texts)]
                offset += len(jobs[i].texts)
                if explain and not jobs[i].explain:
                    for p in mine:
                        p.kept_tokens = None
                results[i] = mine
        self.batches.append(
            {
                "requests": len(jobs),
                "texts": sum(len(job.texts) for job in jobs),
                "tokens": batch_tokens(jobs),
                "overloaded": overloaded,
                "seconds": round(time.perf_counter() - start, 4),
                "time": time.time(),
            }
        )
        return results  # type: ignore[return-value]


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Application builder for ``serve run`` / serve_config.yaml (``import_path:
    adapler_deploy.app:build_app``); ``args`` are :class:`ServeSettings` fields plus the optional
    deployment options ``num_replicas`` and ``autoscaling_config`` (serve_config.yaml's
    ``deployments:`` section, when given, wins over these)."""
    args = dict(args or {})
    options: dict[str, Any] = {}
    for key in ("num_replicas", "autoscaling_config"):
        if args.get(key) is not None:
            options[key] = args.pop(key)
        args.pop(key, None)
    settings = ServeSettings(**args)
    return AdapLeRService.options(
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options=replica_resources(settings),
        **options,
    ).bind(settings.model_dump())


def replica_resources(settings: ServeSettings) -> dict[str, float]:
    """What each replica asks Ray for: ``num_cpus``, and one GPU when its device is cuda (Ray then
    places it on a node with a free GPU and makes that GPU the replica's ``cuda``)."""
    resources = {"num_cpus": settings.num_cpus}
    if settings.device.startswith("cuda"):
        resources["num_gpus"] = 1
    return resources
