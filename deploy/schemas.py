"""Typed settings, request and response of the Serve application (pydantic, no Ray, no torch).

The limits live in :class:`ServeSettings` (the application arguments: ``args:`` in
``deploy/serve_config.yaml``, or ``adapler serve`` flags). A request is checked in two steps:
shape and types by :class:`PredictRequest` (-> 422, also for a text that is not valid Unicode),
then size against the limits by :func:`check_limits` (-> 413); :mod:`adapler_deploy.decoder`
runs both on the raw body.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from adapler.artifacts import is_model_uri, parse_model_uri
from adapler.text import unicode_problem
from adapler_deploy import DEFAULT_MODEL


def _as_float(value: int | float) -> float:
    """A JSON number as a float. JSON integers have no bound (10**400 is valid JSON), and one
    beyond the float range would fail later arithmetic with OverflowError: it is refused here."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError("must be a finite number > 0, got an integer beyond the float range") from None


# A number (not a numeric string, not a bool), as a float: the operating-point knobs.
Number = Annotated[StrictFloat | StrictInt, AfterValidator(_as_float)]


class AdaptiveSettings(BaseModel):
    """The load-adaptive policy (adapler_deploy.adaptive): under a backlog, requests that named no
    operating point run at the fastest stored point within ``max_accuracy_drop`` (dev accuracy,
    against the ``accurate`` point); requests that named one keep it."""

    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="dev accuracy the overload point may lose vs accurate"
    )
    backlog: Literal["requests", "tokens"] = Field(
        "requests", description="what the water marks count in a replica: requests in it, or their tokens"
    )
    high_water: float = Field(..., gt=0, description="backlog from which the replica is overloaded")
    low_water: float = Field(
        ..., ge=0, description="backlog at or under which it returns to the default (after cooldown_s)"
    )
    cooldown_s: float = Field(1.0, ge=0.0, description="how long the backlog must stay at or under low_water")

    @model_validator(mode="after")
    def _marks(self) -> AdaptiveSettings:
        if self.low_water >= self.high_water:
            raise ValueError(f"adaptive.low_water ({self.low_water:g}) must be < high_water ({self.high_water:g})")
        return self


class ServeSettings(BaseModel):
    """Application arguments. Every limit is per request unless it says batch."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_MODEL,
        description="an AdapLeR model directory (safetensors) or models:/<name>@<alias> in the MLflow registry",
    )
    tracking_uri: str = Field(
        "", description="MLflow tracking URI for models:/ (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    removal: Literal["packed", "masked", "none"] = Field(
        "packed", description="packed: AdapLeR with real token removal; none: the plain backbone (the baseline)"
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantization of the linear layers (CPU only; composes with removal)"
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="onnx: ONNX Runtime graphs (exported on first load, then cached); torch: PyTorch eager; "
        "auto: onnx on CPU (the faster, bench/runtime.py), torch on GPU or with removal masked",
    )
    device: str = "cpu"
    torch_threads: int = Field(
        1,
        ge=1,
        description="intra-op threads per replica, torch or ONNX Runtime (1 is fastest for small batches on few cores)",
    )
    # request limits
    max_texts: int = Field(256, ge=1, description="texts per request")
    max_chars: int = Field(20_000, ge=1, description="characters per text")
    max_request_tokens: int | None = Field(
        None, ge=1, description="tokens per request, after truncation ([CLS]/[SEP] counted); default max_batch_tokens"
    )
    max_body_bytes: int = Field(4_000_000, ge=1, description="request body size")
    # batching
    max_batch_tokens: int = Field(8192, ge=1, description="token budget of one batch (sum over its requests)")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    predict_batch_size: int = Field(
        64, ge=1, description="texts per forward pass inside a batch (Predictor.batch_size)"
    )
    max_ongoing_requests: int = Field(64, ge=1)
    stats_window: int = Field(256, ge=1, description="batches remembered by GET /stats")
    # operating points (adapler.operating_points): the speed knob of each request
    default_operating_point: str | None = Field(
        None, description="the point of requests that name none (a stored name); default: the model as saved"
    )
    adaptive: AdaptiveSettings | None = Field(None, description="load-adaptive operating point; off when absent")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved per replica")

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.max_request_tokens is None:
            self.max_request_tokens = self.max_batch_tokens
        if self.max_request_tokens > self.max_batch_tokens:
            # A request is never split across batches: it must fit into one.
            raise ValueError(
                f"max_request_tokens ({self.max_request_tokens}) must be <= max_batch_tokens ({self.max_batch_tokens})"
            )
        if is_model_uri(self.model):
            parse_model_uri(self.model)
        if self.adaptive is not None and self.removal == "none":
            raise ValueError("adaptive moves along the model's operating points: it needs removal packed or masked")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(..., min_length=1, description="texts to classify")
    text_pairs: list[StrictStr | None] | None = Field(None, description="second texts, for pair models (same length)")
    explain: StrictBool = Field(False, description="also return the tokens kept at each layer")
    # At most one: the point to run at (the model's stored points; see GET /healthz).
    operating_point: StrictStr | None = Field(
        None, description="a stored operating point: accurate, balanced, fast, default"
    )
    target_speedup: Number | None = Field(
        None, description="the stored point with the smallest dev FLOPs speedup >= this"
    )
    factor: Number | None = Field(None, description="multiply every eta by this (> 0)")

    @model_validator(mode="after")
    def _check(self) -> PredictRequest:
        empty = [i for i, t in enumerate(self.texts) if not t.strip()]
        if empty:
            raise ValueError(f"texts must be non-empty; empty at index {empty[:10]}")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} text_pairs")
        for field, values in (("texts", self.texts), ("text_pairs", self.text_pairs or [])):
            for i, text in enumerate(values):
                if text is not None and (problem := unicode_problem(text)):
                    raise ValueError(f"{field}[{i}] is not valid Unicode: {problem}")
        return self


class LimitExceeded(ValueError):
    """A request larger than the configured limits (HTTP 413)."""


def check_limits(request: PredictRequest, settings: ServeSettings) -> None:
    """Cheap checks before tokenizing (the token limit is checked after token counting)."""
    if len(request.texts) > settings.max_texts:
        raise LimitExceeded(f"too many texts: {len(request.texts)} > max_texts {settings.max_texts}")
    for field, values in (("texts", request.texts), ("text_pairs", request.text_pairs or [])):
        for i, text in enumerate(values):
            if text is not None and len(text) > settings.max_chars:
                raise LimitExceeded(f"{field}[{i}] has {len(text)} characters > max_chars {settings.max_chars}")


class OperatingPointOut(BaseModel):
    name: str
    factor: float
    dev_accuracy: float | None = None
    dev_flops_speedup: float | None = None


class PredictionOut(BaseModel):
    label: str
    label_id: int
    probabilities: dict[str, float]
    input_tokens: int
    flops_speedup: float
    kept_lengths: list[int]
    kept_tokens: list[list[str]] | None = None
    operating_point: OperatingPointOut | None = None  # the point it ran at (None: removal none)


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]
    model: str
    removal: str
