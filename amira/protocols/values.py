"""Values from the wire (query strings, JSON fields, headers), parsed strictly into typed values.

Every value a client sends passes through one of these parsers, so that a malformed one is always
the API's `bad_request`/`bad_audio`, never a Python exception that escapes as a 500: `str.isdigit`
accepts "²", `json.loads` raises `RecursionError` on deep nesting and `ValueError` on integers of
more than 4300 digits, and Python's JSON accepts `NaN`, which no JSON client can read back.
"""

from __future__ import annotations

import json
import re

from amira.core import audio, segments
from amira.core.errors import BadRequest

MAX_JSON_DEPTH = 32  # nesting of any JSON value a client sends (an `opaque` is echoed back)
SHOWN_CHARS = 40  # of a bad value, in an error message
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_NUMBER_CHARS = 12  # longer numbers from the wire are refused before they are converted


def shown(value: object) -> str:
    """A value as an error message shows it: its repr, cut short (a 4000-digit number is no message)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def parse_sample_rate(value: object) -> int:
    """A sample rate from a query string or a JSON number; only plain ASCII digits are a number."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise BadRequest(f"sample_rate must be a whole number, got {shown(value)}")
        value = int(text)
    if not isinstance(value, int) or isinstance(value, bool) or value.bit_length() > 32:
        raise BadRequest(f"sample_rate must be a whole number, got {shown(value)}")
    return audio.check_sample_rate(value)


def check_pcm16_length(data: bytes | bytearray) -> bytes | bytearray:
    """s16le PCM has two bytes a sample: an odd byte count is a protocol error, not audio."""
    if len(data) % 2:
        raise BadRequest(f"s16le PCM must have an even number of bytes, got {len(data)}")
    return data


def parse_request_id(value: str | None) -> str | None:
    """A client's `X-Request-Id` when it is 1 to 64 of `[A-Za-z0-9._-]`, else None (the server makes
    one): ids are echoed in headers and written to logs, where control characters do harm."""
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def json_depth_within(value: object, max_depth: int) -> bool:
    """Whether `value` nests no more than `max_depth` arrays and objects (`[]` is 1, `[[]]` 2),
    found level by level, without recursion."""
    level = [value]
    for depth in range(max_depth + 1):
        containers = [item for item in level if isinstance(item, (list, dict))]
        if not containers:
            return True
        if depth == max_depth:
            return False
        level = [
            child for item in containers for child in (item.values() if isinstance(item, dict) else item)
        ]
    return True


def checked_json(value: object, what: str) -> object:
    """A decoded JSON value, refused when it nests deeper than `MAX_JSON_DEPTH`."""
    if not json_depth_within(value, MAX_JSON_DEPTH):
        raise BadRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_json(text: str, what: str = "the JSON") -> object:
    """A JSON text, strictly: malformed, too deep, `NaN`, or a number too long are `bad_request`."""
    try:
        value = DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, digit limit, NaN; deep nesting
        raise BadRequest(f"{what} is not valid JSON: {shown(str(exc))}") from None
    return checked_json(value, what)


def _number(name: str, text: str) -> float:
    """A plain ASCII decimal number (digits, at most one point): no signs, exponents, "nan", "²"."""
    digits = text.strip()
    whole, point, fraction = digits.partition(".")
    if (
        not digits.isascii()
        or len(digits) > MAX_NUMBER_CHARS
        or not (whole + fraction).isdigit()
        or (point and not fraction)
    ):
        raise BadRequest(f"{name} must be a number, got {shown(text)}")
    return float(digits)


def parse_endpointing(text: str) -> int | None:
    """`endpointing`: `false`, or whole milliseconds of non-speech that end a segment."""
    if text.strip() == "false":
        return None
    value = _number("endpointing", text)
    low, high = segments.MIN_ENDPOINTING_MS, segments.MAX_ENDPOINTING_MS
    if not value.is_integer() or not low <= value <= high:
        raise BadRequest(
            f"endpointing must be false or whole milliseconds from {low} to {high}, got {shown(text)}"
        )
    return int(value)


def parse_max_segment_secs(text: str) -> float:
    """`max_segment_secs`: seconds, within the bounds that keep every message small."""
    value = _number("max_segment_secs", text)
    low, high = segments.MIN_SEGMENT_SECS, segments.MAX_SEGMENT_SECS
    if not low <= value <= high:
        raise BadRequest(f"max_segment_secs must be from {low:g} to {high:g} seconds, got {shown(text)}")
    return value


def parse_bool(name: str, text: str) -> bool:
    """`true` or `false`, nothing else."""
    if text.strip() in ("true", "false"):
        return text.strip() == "true"
    raise BadRequest(f"{name} must be true or false, got {shown(text)}")
