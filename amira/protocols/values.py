"""Scalar values from the wire (query strings, JSON fields), parsed strictly into typed values."""

from __future__ import annotations

from amira.core import audio
from amira.core.errors import BadRequest


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
