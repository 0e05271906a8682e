"""Schema-driven fuzz of a running `adapler serve`: Schemathesis reads the service's own OpenAPI
document (FastAPI's /openapi.json) and sends POST /predict bodies drawn from its request schema,
valid ones and invalid ones (negative mode). No answer may be a 5xx."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from helpers import adapler_serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.slow

MAX_EXAMPLES = 100  # each mode; a request takes milliseconds on the tiny model


@pytest.fixture(scope="module")
def service(tiny_model_factory, save_review_model, tmp_path_factory):
    model_dir = save_review_model(tiny_model_factory(num_labels=2), tmp_path_factory.mktemp("fuzz-model"))
    limits = ["--set", "max_texts=8", "--set", "max_chars=500", "--set", "max_body_bytes=20000"]
    with adapler_serve(model_dir, "--replicas", "1", "--num-cpus", "0.5", *limits) as served:
        yield served.url


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_body_gets_a_5xx(service, mode):
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(service + "/openapi.json", timeout=30)
    operation = schema["/predict"]["POST"]
    statuses: Counter[int] = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
    def fuzz(case):
        response = case.call(base_url=service, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    assert sum(statuses.values()) >= MAX_EXAMPLES // 2, statuses
    assert all(status < 500 for status in statuses), statuses
    wanted = range(200, 300) if mode == "positive" else range(400, 500)
    assert any(status in wanted for status in statuses), statuses  # the fuzz reached the model / the decoder
