"""The request decoder of ``POST /predict``: raw bytes and headers in, a validated
:class:`~adapler_deploy.schemas.PredictRequest` or a :class:`Rejection` (a 4xx status and one
line) out. Pure (no Ray, no model, no I/O), so every bad body is tested without a server
(tests/deploy/test_decoder.py feeds it arbitrary bytes with Hypothesis). The Serve class reads
the body, calls :func:`decode_request`, and only then predicts and encodes the answer.

Bad input is a class here, not a list of cases. Each step catches the whole family its failures
belong to: bytes that are not a JSON document raise ``ValueError`` (``UnicodeDecodeError``,
``json.JSONDecodeError``, the digit limit of ``int`` on a 5,000-digit number) or
``RecursionError``; a document of the wrong shape raises pydantic's ``ValidationError``; a request
over a limit ``LimitExceeded``. And a :class:`Rejection` message is one line of valid UTF-8 by
construction, whatever user text (a key with a newline, a lone surrogate) it quotes.

Statuses: 400 the body is not a JSON document (empty, not UTF-8, not JSON, nested too deep);
413 over a limit (``max_body_bytes``, ``max_texts``, ``max_chars``); 422 a JSON document that is
not a valid request (shape, types, empty text, a text that is not valid Unicode).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate

from pydantic import ValidationError

from adapler.text import one_line
from adapler_deploy.schemas import LimitExceeded, PredictRequest, ServeSettings, check_limits

# A request is {"texts": [...]}, two levels deep. json.loads recurses once per level and fails
# with RecursionError near 1000 of them, so bounding the depth first keeps that off the path.
MAX_JSON_DEPTH = 32
_NOT_A_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^\[\]{}"]+', re.S)  # strings, and whatever else
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_ASCII_DIGITS = re.compile(r"[0-9]+")
EMPTY_BODY = 'empty request body; send JSON like {"texts": ["some text"]}'
TOO_DEEP = f"request body nests JSON arrays/objects more than {MAX_JSON_DEPTH} levels deep"


@dataclass(frozen=True)
class Rejection:
    """A request refused: its 4xx status and the one line the client gets as ``{"error": ...}``."""

    status: int  # 400, 413 or 422
    message: str

    def __post_init__(self) -> None:
        if not 400 <= self.status < 500:
            raise ValueError(f"a rejection is a 4xx status, not {self.status}")
        # one line, and any lone surrogate it quotes written as \udXXX, so that it encodes as UTF-8
        message = one_line(self.message).encode("utf-8", "backslashreplace").decode("utf-8")
        object.__setattr__(self, "message", message or "bad request")


class JsonTooDeep(ValueError):
    """Arrays/objects nested more than MAX_JSON_DEPTH deep."""


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays/objects of JSON ``text`` nest more than ``limit`` deep (brackets inside
    strings do not count). Costs less than json.loads of the same text."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_A_BRACKET.sub("", text)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def parse_json(body: bytes) -> object:
    """The JSON document in ``body``; ValueError (or RecursionError) when there is none."""
    text = body.decode("utf-8")
    if json_too_deep(text):
        raise JsonTooDeep(TOO_DEEP)
    return json.loads(text)


def _not_json_message(err: ValueError | RecursionError) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"request body is not UTF-8 (byte {err.start})"
    if isinstance(err, (JsonTooDeep, RecursionError)):
        return TOO_DEEP
    if isinstance(err, json.JSONDecodeError):
        return f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    # e.g. a 5,000-digit number: "Exceeds the limit (4300 digits) ...; use sys.set_int_max_str_digits()
    # ..." (the advice after the semicolon is for the server's code, not for the client)
    return f"request body is not valid JSON: {str(err).split(';')[0]}"


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ())) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def declared_too_large(content_length: str | None, limit: int) -> Rejection | None:
    """A 413 for a ``content-length`` header over ``limit``, before reading the body (a header
    that is not a plain decimal number is left to the body's own size check)."""
    if content_length is not None and _ASCII_DIGITS.fullmatch(content_length) and int(content_length) > limit:
        return Rejection(413, f"request body of {content_length} bytes > max_body_bytes {limit}")
    return None


def decode_request(body: bytes, settings: ServeSettings) -> PredictRequest | Rejection:
    """``body`` as a request within ``settings``' limits, or the 4xx that refuses it."""
    if len(body) > settings.max_body_bytes:
        return Rejection(413, f"request body > max_body_bytes {settings.max_body_bytes}")
    if not body.strip():
        return Rejection(400, EMPTY_BODY)
    try:
        payload = parse_json(body)
    except (ValueError, RecursionError) as err:  # every way bytes fail to be a JSON document
        return Rejection(400, _not_json_message(err))
    if not isinstance(payload, dict):
        return Rejection(
            422, f'request body must be a JSON object like {{"texts": [...]}}, not {type(payload).__name__}'
        )
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as err:
        return Rejection(422, _validation_message(err))
    try:
        check_limits(request, settings)
    except LimitExceeded as err:
        return Rejection(413, str(err))
    return request
