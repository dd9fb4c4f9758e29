"""The native batch protocol, `POST /v2/decode/batch/{model}` (api.md), sans-IO.

`parse_batch_body` turns a body into 16 kHz samples (the Content-Type decides how), and
`batch_document` turns a transcript into the response document.

Parsing is CPU work that the server runs in a worker thread, and it is written so that the thread
never holds the GIL for long: `json.loads` of a 16 MiB body of byte integers holds it for about half
a second, which freezes the event loop as surely as running it there. A JSON body is therefore read
by `read_json_fields`: the small fields through the JSON decoder, bounded to `MAX_FIELD_BYTES`
each, and `audio_buffer` in steps of `CHUNK_BYTES` with numpy (the GIL changes hands between
steps). Its duration is checked from its length before anything is converted.
"""

from __future__ import annotations

import base64
import binascii
import re

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio
from amira.core.errors import BadRequest, TooLarge, UnsupportedMediaType
from amira.core.transcript import Transcript, Word
from amira.protocols.values import DECODER, check_pcm16_length, checked_json, parse_sample_rate, shown

JSON_TYPES = ("application/json",)
PCM_TYPES = ("application/octet-stream", "audio/l16", "audio/pcm")
SOUND_FILE_CONTAINERS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
}
SOUND_FILE_TYPES = tuple(SOUND_FILE_CONTAINERS)
# Not a Content-Type the native endpoint takes: what the other dialects parse a sound file as,
# whose container is known only from its first bytes (WAV, FLAC or OGG).
ANY_SOUND_FILE = "audio/*"
NO_OPAQUE = object()
AUDIO_KEY = "audio_buffer"
MAX_FIELD_BYTES = 65_536  # each JSON field but audio_buffer (an opaque is echoed back), as UTF-8
MAX_FIELDS = 64
CHUNK_BYTES = 1 << 18
ELEMENTS = "audio_buffer must hold integers from 0 to 255, one per byte"
Body = bytes | bytearray

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_IS_DIGIT = np.zeros(256, bool)
_IS_DIGIT[ord("0") : ord("9") + 1] = True
_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[[ord(c) for c in " \t\n\r"]] = True
_IN_ARRAY = _IS_DIGIT | _IS_SPACE
_IN_ARRAY[ord(",")] = True


@attrs.frozen
class BatchInput:
    samples: npt.NDArray[np.float32]
    opaque: object = NO_OPAQUE


@attrs.frozen
class AudioSpan:
    """Where `audio_buffer`'s value lies in the body: an array of byte integers or a base64 string."""

    is_array: bool
    start: int  # after the opening `[` or `"`
    end: int  # at the closing `]` or `"`

    def byte_count(self, body: Body) -> int:
        """How many bytes the value holds, from its length alone (exact when it is well-formed)."""
        if self.is_array:
            blank = _skip_space(body, self.start) >= self.end
            return 0 if blank else body.count(b",", self.start, self.end) + 1
        tail = bytes(body[max(self.start, self.end - 2) : self.end])
        return (self.end - self.start) * 3 // 4 - (len(tail) - len(tail.rstrip(b"=")))

    def decode(self, body: Body) -> bytes:
        decode = _byte_array if self.is_array else _base64
        return decode(body, self.start, self.end)


def _skip_space(body: Body, pos: int) -> int:
    match = _WHITESPACE.match(body, pos)
    return match.end() if match else pos


def _small_value(body: Body, pos: int, what: str) -> tuple[object, int]:
    """One JSON value of at most `MAX_FIELD_BYTES` at `pos`: the decoder never sees more than that.

    The window is decoded with `surrogateescape`, so that what follows the value (the audio, a cut
    character) cannot fail it; the value's own text must be UTF-8.
    """
    text = bytes(body[pos : pos + MAX_FIELD_BYTES]).decode("utf-8", "surrogateescape")
    try:
        value, end = DECODER.raw_decode(text)
        consumed = len(text[:end].encode())
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8, NaN, digit limit; deep nesting
        raise BadRequest(
            f"{what} is not valid JSON, or longer than {MAX_FIELD_BYTES} bytes: {shown(str(exc))}"
        ) from None
    if consumed == MAX_FIELD_BYTES:  # a number may go on past the window
        raise BadRequest(f"{what} is longer than {MAX_FIELD_BYTES} bytes")
    return checked_json(value, what), pos + consumed


def _audio_span(body: Body, pos: int) -> tuple[AudioSpan, int]:
    opener = body[pos : pos + 1]
    if opener not in (b"[", b'"'):
        raise BadRequest("audio_buffer must be an array of integers 0..255 or a base64 string")
    end = body.find(b"]" if opener == b"[" else b'"', pos + 1)
    if end < 0:
        raise BadRequest("malformed JSON: audio_buffer does not end")
    if opener == b"[" and (body.find(b"[", pos + 1, end) >= 0 or body.find(b'"', pos + 1, end) >= 0):
        raise BadRequest(ELEMENTS)
    return AudioSpan(opener == b"[", pos + 1, end), end + 1


def read_json_fields(body: Body) -> tuple[dict[str, object], AudioSpan | None]:
    """The top-level object of a JSON body: its fields but `audio_buffer`, and where that one lies."""
    pos = _skip_space(body, 0)
    if body[pos : pos + 1] != b"{":
        raise BadRequest("the JSON body must be an object with an audio_buffer field")
    fields: dict[str, object] = {}
    span: AudioSpan | None = None
    pos = _skip_space(body, pos + 1)
    separator = body[pos : pos + 1]
    if separator == b"}":
        pos += 1
    while separator != b"}":
        if body[pos : pos + 1] != b'"' or len(fields) >= MAX_FIELDS:
            raise BadRequest(f"malformed JSON at byte {pos}: expected a field name (at most {MAX_FIELDS})")
        key, pos = _small_value(body, pos, "a field name")
        assert isinstance(key, str)
        pos = _skip_space(body, pos)
        if body[pos : pos + 1] != b":":
            raise BadRequest(f"malformed JSON at byte {pos}: expected ':'")
        pos = _skip_space(body, pos + 1)
        if key in fields or (key == AUDIO_KEY and span is not None):
            raise BadRequest(f"the field {shown(key)} appears twice")
        if key == AUDIO_KEY:
            span, pos = _audio_span(body, pos)
        else:
            fields[key], pos = _small_value(body, pos, f"the field {shown(key)}")
        pos = _skip_space(body, pos)
        separator = body[pos : pos + 1]
        if separator not in (b",", b"}"):
            raise BadRequest(f"malformed JSON at byte {pos}: expected ',' or '}}'")
        pos = _skip_space(body, pos + 1)
    if _skip_space(body, pos) != len(body):
        raise BadRequest("malformed JSON: data after the object")
    return fields, span


def _byte_chunk(text: bytes) -> npt.NDArray[np.uint8]:
    """Comma-separated integers 0..255 (a part of the array cut at a comma) as uint8, strictly JSON:
    no empty elements, no leading zeros, nothing but digits, commas and whitespace."""
    codes = np.frombuffer(text, np.uint8)
    if not _IN_ARRAY[codes].all():
        raise BadRequest(ELEMENTS)
    digit = _IS_DIGIT[codes]
    tokens = codes[~_IS_SPACE[codes]]
    comma = tokens == ord(",")
    run_start = digit & ~np.concatenate(([False], digit[:-1]))
    leading_zero = run_start & (codes == ord("0")) & np.concatenate((digit[1:], [False]))
    if (
        not tokens.size
        or comma[0]
        or comma[-1]
        or (comma[1:] & comma[:-1]).any()
        or int(run_start.sum()) != int(comma.sum()) + 1  # two numbers with only space between
        or leading_zero.any()
        or (digit[:-3] & digit[1:-2] & digit[2:-1] & digit[3:]).any()  # four digits: over 255
    ):
        raise BadRequest(ELEMENTS)
    values = np.fromstring(text, dtype=np.int64, sep=",")
    if values.max() > 255:
        raise BadRequest(ELEMENTS)
    return values.astype(np.uint8)


def _byte_array(body: Body, start: int, end: int) -> bytes:
    if _skip_space(body, start) >= end:
        return b""
    parts: list[npt.NDArray[np.uint8]] = []
    while start < end:
        cut = body.find(b",", min(start + CHUNK_BYTES, end), end)
        stop = end if cut < 0 else cut
        parts.append(_byte_chunk(bytes(body[start:stop])))
        start = stop + 1
        if start == end:  # the array ends with a comma
            raise BadRequest(ELEMENTS)
    return np.concatenate(parts).tobytes()


def _base64(body: Body, start: int, end: int) -> bytes:
    text = bytes(body[start:end])
    if b"\\" in text:  # "\/" is how some encoders write "/" in JSON strings
        text = text.replace(b"\\/", b"/")
    out = bytearray()
    try:
        for offset in range(0, len(text), CHUNK_BYTES):  # a multiple of 4 characters: whole groups
            out += base64.b64decode(text[offset : offset + CHUNK_BYTES], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"audio_buffer is not valid base64: {exc}") from exc
    return bytes(out)


def check_duration(samples: int, rate: int, max_seconds: float) -> None:
    if samples / rate > max_seconds:
        raise TooLarge(f"the audio lasts {samples / rate:.2f} s; the limit is {max_seconds:g} s")


def parse_json_body(body: Body, max_seconds: float) -> BatchInput:
    """`{"audio_buffer": ..., "sample_rate": ..., "opaque": ...}`: the duration is checked first."""
    fields, span = read_json_fields(body)
    if span is None:
        raise BadRequest("the JSON body has no audio_buffer field")
    rate = parse_sample_rate(fields.get("sample_rate", audio.MODEL_SAMPLE_RATE))
    check_duration(span.byte_count(body) // 2, rate, max_seconds)
    pcm = check_pcm16_length(span.decode(body))
    return BatchInput(audio.from_pcm16(pcm, rate), fields.get("opaque", NO_OPAQUE))


def check_media_type(mimetype: str) -> str:
    """The body's media type, lower case, when the API takes it; `UnsupportedMediaType` otherwise.
    Checked before the body is read."""
    mimetype = mimetype.lower()
    if mimetype in JSON_TYPES or mimetype in PCM_TYPES or mimetype in SOUND_FILE_TYPES:
        return mimetype
    accepted = ", ".join((*JSON_TYPES, *PCM_TYPES, *SOUND_FILE_TYPES))
    raise UnsupportedMediaType(f"unsupported Content-Type {mimetype or '(none)'!r}; use one of {accepted}")


def parse_batch_body(
    mimetype: str, body: Body, query_sample_rate: str | None, max_seconds: float
) -> BatchInput:
    """Decode a body by its media type; the duration limit is checked before anything is resampled
    (before anything is decoded, where the length tells)."""
    if mimetype == ANY_SOUND_FILE:
        return BatchInput(audio.from_sound_file(body, max_seconds, audio.CONTAINERS))
    mimetype = check_media_type(mimetype)
    if mimetype in JSON_TYPES:
        return parse_json_body(body, max_seconds)
    if mimetype in PCM_TYPES:
        rate = (
            parse_sample_rate(query_sample_rate) if query_sample_rate is not None else audio.MODEL_SAMPLE_RATE
        )
        check_duration(len(check_pcm16_length(body)) // 2, rate, max_seconds)
        return BatchInput(audio.from_pcm16(body, rate))
    return BatchInput(audio.from_sound_file(body, max_seconds, (SOUND_FILE_CONTAINERS[mimetype],)))


def word_document(word: Word) -> dict[str, object]:
    """A word of `metadata.words`: times in seconds to the millisecond, confidence to 4 decimals."""
    return {
        "word": word.word,
        "start": round(word.start, 3),
        "end": round(word.end, 3),
        "confidence": round(word.confidence, 4),
    }


def batch_document(
    transcript: Transcript, model: str, processing_ms: float, opaque: object = NO_OPAQUE
) -> dict[str, object]:
    """The batch endpoint's response document (api.md); `opaque` is echoed when the request had one."""
    document: dict[str, object] = {
        "transcription": transcript.text,
        "status": "COMPLETE",
        "metadata": {
            "model": model,
            "audio_length_samples": transcript.audio_samples,
            "audio_seconds": round(transcript.audio_seconds, 3),
            "features_length": transcript.features_length,
            "encoded_length": transcript.encoded_length,
            "tokens": list(transcript.tokens),
            "words": [word_document(w) for w in transcript.words],
            "processing_time_ms": round(processing_ms, 1),
        },
    }
    if opaque is not NO_OPAQUE:
        document["opaque"] = opaque
    return document
