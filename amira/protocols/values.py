"""Scalar values from the wire (query strings, JSON fields), parsed strictly into typed values."""

from __future__ import annotations

from amira.core import audio, segments
from amira.core.errors import BadRequest

MAX_NUMBER_CHARS = 12  # longer numbers from the wire are refused before they are converted


def parse_sample_rate(value: object) -> int:
    """A sample rate from a query string or a JSON number; only plain ASCII digits are a number."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise BadRequest(f"sample_rate must be a whole number, got {value!r}")
        value = int(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"sample_rate must be a whole number, got {value!r}")
    return audio.check_sample_rate(value)


def check_pcm16_length(data: bytes) -> bytes:
    """s16le PCM has two bytes a sample: an odd byte count is a protocol error, not audio."""
    if len(data) % 2:
        raise BadRequest(f"s16le PCM must have an even number of bytes, got {len(data)}")
    return data


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
        raise BadRequest(f"{name} must be a number, got {text!r}")
    return float(digits)


def parse_endpointing(text: str) -> int | None:
    """`endpointing`: `false`, or whole milliseconds of non-speech that end a segment."""
    if text.strip() == "false":
        return None
    value = _number("endpointing", text)
    low, high = segments.MIN_ENDPOINTING_MS, segments.MAX_ENDPOINTING_MS
    if not value.is_integer() or not low <= value <= high:
        raise BadRequest(
            f"endpointing must be false or whole milliseconds from {low} to {high}, got {text!r}"
        )
    return int(value)


def parse_max_segment_secs(text: str) -> float:
    """`max_segment_secs`: seconds, within the bounds that keep every message small."""
    value = _number("max_segment_secs", text)
    low, high = segments.MIN_SEGMENT_SECS, segments.MAX_SEGMENT_SECS
    if not low <= value <= high:
        raise BadRequest(f"max_segment_secs must be from {low:g} to {high:g} seconds, got {text!r}")
    return value


def parse_bool(name: str, text: str) -> bool:
    """`true` or `false`, nothing else."""
    if text.strip() in ("true", "false"):
        return text.strip() == "true"
    raise BadRequest(f"{name} must be true or false, got {text!r}")
