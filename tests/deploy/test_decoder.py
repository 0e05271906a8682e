"""The request decoder (adapler_deploy.decoder), without Ray: whatever the bytes, it answers a
valid request or a 4xx with one line, and nothing else escapes. Hypothesis draws arbitrary bytes,
arbitrary JSON documents and arbitrary values for every field of the request schema."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapler.operating_points import CurvePoint, OperatingPointError, OperatingPoints, PointBudgets, resolve
from adapler_deploy.decoder import MAX_JSON_DEPTH, Rejection, declared_too_large, decode_request
from adapler_deploy.schemas import PredictRequest, ServeSettings

LIMITS = ServeSettings(model="unused", max_texts=4, max_chars=60, max_body_bytes=6000)
POINTS = OperatingPoints.from_curve(
    [CurvePoint(1.0, 0.80, 1.0, 100.0), CurvePoint(2.0, 0.795, 1.5, 100.0), CurvePoint(4.0, 0.78, 3.0, 100.0)],
    PointBudgets(),
    "made up",
)
PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def check_answer(answer: PredictRequest | Rejection) -> None:
    """The decoder's contract: a request within the limits, or a 4xx with one line of UTF-8."""
    if isinstance(answer, Rejection):
        assert 400 <= answer.status < 500, answer
        assert answer.message and "\n" not in answer.message and len(answer.message.splitlines()) == 1, answer
        answer.message.encode("utf-8")  # what the JSON response is written in
        return
    assert isinstance(answer, PredictRequest), answer
    assert 1 <= len(answer.texts) <= LIMITS.max_texts
    for text in (*answer.texts, *(answer.text_pairs or [])):
        if text is not None:
            assert len(text) <= LIMITS.max_chars
            text.encode("utf-8")  # no lone surrogate reaches the tokenizer
    assert all(t.strip() for t in answer.texts)
    for value in (answer.target_speedup, answer.factor):
        assert value is None or type(value) is float
    # The next step of the ingress: the point a request names is found, or it is a 422 (one line).
    for points in (POINTS, None):
        try:
            resolve(points, answer.operating_point, answer.target_speedup, answer.factor)
        except OperatingPointError as err:
            check_answer(Rejection(422, str(err)))


# JSON values of every kind; text includes lone surrogates, newlines and whitespace only.
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
huge_numbers = st.sampled_from([10**400, -(10**400), 10**4000, 1e308, -0.0, 0.0])
numbers = st.integers() | st.floats() | huge_numbers
texts = st.text(max_size=80) | st.sampled_from(["", "   ", "\ud800", "caf\udfff", "a\nb", "ok"])
# Arbitrary values for every field of the request: of its own type or of any other JSON type.
FIELD_VALUES = {
    "texts": st.lists(st.sampled_from(["ok", "A film."]), min_size=1, max_size=4)
    | st.lists(texts, max_size=6)
    | json_values,
    "text_pairs": st.lists(st.none() | texts, max_size=6) | json_values,
    "explain": st.booleans() | json_values,
    "operating_point": st.none() | st.sampled_from(["fast", "accurate", "default", "turbo"]) | texts | json_values,
    "target_speedup": st.none() | numbers | json_values,
    "factor": st.none() | numbers | json_values,
}
assert FIELD_VALUES.keys() == PredictRequest.model_fields.keys()  # a new field needs a strategy here
requests = st.fixed_dictionaries(
    {"texts": FIELD_VALUES["texts"]},
    optional={
        **{name: values for name, values in FIELD_VALUES.items() if name != "texts"},
        "\ud800 un\nknown": json_values,
    },
) | st.dictionaries(st.sampled_from([*FIELD_VALUES, "txt"]), json_values)


def encode(document, ensure_ascii: bool) -> bytes:
    # ensure_ascii=False + surrogatepass: a lone surrogate becomes bytes that are not UTF-8
    return json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@PROPERTY
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(body):
    check_answer(decode_request(body, LIMITS))


@PROPERTY
@given(json_values, st.booleans())
def test_arbitrary_json_documents(document, ensure_ascii):
    check_answer(decode_request(encode(document, ensure_ascii), LIMITS))


@PROPERTY
@given(requests, st.booleans())
def test_arbitrary_values_for_every_field(document, ensure_ascii):
    check_answer(decode_request(encode(document, ensure_ascii), LIMITS))


# JSON's number grammar, unbounded (json.dumps can not write an int of more than 4,300 digits).
number_literals = st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True) | (
    st.tuples(st.sampled_from(["", "-"]), st.integers(1, 5500)).map(
        lambda sign_digits: sign_digits[0] + "9" * sign_digits[1]
    )
)


@PROPERTY
@given(st.sampled_from(sorted(FIELD_VALUES)), number_literals)
def test_arbitrary_number_literals_in_every_field(field, literal):
    body = b'{"texts": ["a"], "%s": %s}' % (field.encode(), literal.encode())
    check_answer(decode_request(body, LIMITS))


@PROPERTY
@given(st.text(max_size=20) | st.integers(min_value=0).map(str))
def test_arbitrary_content_length_headers(header):
    answer = declared_too_large(header, LIMITS.max_body_bytes)
    assert answer is None or answer.status == 413
    if header.isascii() and header.isdigit() and int(header) > LIMITS.max_body_bytes:
        assert answer is not None and str(LIMITS.max_body_bytes) in answer.message


# Each status once, and the bodies that got a 500 from `adapler serve` before the decoder
# caught failures by their class: a number of more than 4,300 digits (json.loads raises a bare
# ValueError, not JSONDecodeError) and an integer knob beyond the float range (OverflowError
# when the operating point was resolved).
CASES = [
    (b"", 400, "empty request body"),
    (b'{"texts": ["a",', 400, "not valid JSON: Expecting value at line 1"),
    (b'{"texts": ["\xff caf\xe9"]}', 400, "not UTF-8 (byte 12)"),
    (b"[" * 1000 + b"]" * 1000, 400, f"more than {MAX_JSON_DEPTH} levels deep"),
    (b'{"texts": ["a"], "factor": ' + b"1" * 4400 + b"}", 400, "not valid JSON: Exceeds the limit (4300 digits)"),
    (b'["a"]', 422, "must be a JSON object"),
    (b'{"texts": ["a"], "factor": 1' + b"0" * 400 + b"}", 422, "factor: Value error, must be a finite number > 0"),
    (b'{"texts": ["a"], "target_speedup": -1' + b"0" * 400 + b"}", 422, "target_speedup: Value error"),
    (rb'{"texts": ["caf\ud800"]}', 422, "lone surrogate U+D800"),
    (b'{"texts": ["a"], "two\\nlines": 1}', 422, "two lines: Extra inputs are not permitted"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "too many texts: 5 > max_texts 4"),
    (b'{"texts": ["' + b"x" * 61 + b'"]}', 413, "texts[0] has 61 characters > max_chars 60"),
    (b'{"texts": ["' + b"x" * 6000 + b'"]}', 413, "request body > max_body_bytes 6000"),
]


@pytest.mark.parametrize(("body", "status", "message"), CASES, ids=[c[2][:30] for c in CASES])
def test_each_rejection(body, status, message):
    answer = decode_request(body, LIMITS)
    assert isinstance(answer, Rejection) and answer.status == status and message in answer.message, answer
    check_answer(answer)


def test_a_valid_request_is_decoded():
    answer = decode_request(b'{"texts": ["A film."], "text_pairs": [null], "explain": true, "factor": 8}', LIMITS)
    assert answer == PredictRequest(texts=["A film."], text_pairs=[None], explain=True, factor=8.0)
    assert type(answer.factor) is float and math.isfinite(answer.factor)


def test_content_length_over_the_limit():
    assert declared_too_large("3001", 3000).message == "request body of 3001 bytes > max_body_bytes 3000"
    assert declared_too_large("3000", 3000) is None
    assert declared_too_large("\u00b2", 3000) is None  # a digit to str.isdigit, not to int()


def test_a_rejection_is_a_4xx_on_one_line():
    assert Rejection(422, "a\nb\u2028c \ud800").message == "a b c \\ud800"
    with pytest.raises(ValueError, match="4xx"):
        Rejection(500, "no")
