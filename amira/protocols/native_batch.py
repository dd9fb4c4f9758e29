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
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio, g711
from amira.core.errors import BadRequest, TooLarge, UnsupportedMediaType
from amira.core.subtitles import cues_from_segments, srt, vtt
from amira.core.transcript import Segment, Transcript, Word
from amira.protocols.values import (
    DECODER,
    check_pcm16_length,
    checked_json,
    parse_bool,
    parse_sample_rate,
    shown,
)

JSON_TYPES = ("application/json",)
PCM_TYPES = ("application/octet-stream", "audio/l16", "audio/pcm")
G711_TYPES = {"audio/basic": "mulaw", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
SOUND_FILE_CONTAINERS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}
SOUND_FILE_TYPES = tuple(SOUND_FILE_CONTAINERS)
# Not a Content-Type the native endpoint takes: what the other dialects parse a sound file as,
# whose container is known only from its first bytes.
ANY_SOUND_FILE = "audio/*"
DIALECT_CONTAINERS = (*audio.CONTAINERS, "mp3")
ENCODINGS = ("linear16", "mulaw", "alaw")
TELEPHONY_RATE = 8_000  # G.711's rate: the default sample rate of µ-law and A-law bodies
AU_MAGIC = b".snd"  # an `audio/basic` body with this header is a Sun .au file, not bare µ-law
FORMATS = ("json", "text", "srt", "vtt")
TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
MAX_RAW_CHANNELS = audio.MAX_CHANNELS
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
class BatchOptions:
    """The query parameters of a batch request (api.md): how raw audio is encoded (`sample_rate`,
    `encoding`, `channels`), whether channels are transcribed separately, and the response format."""

    format: str = "json"
    multichannel: bool = False
    sample_rate: int | None = None
    encoding: str | None = None
    channels: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> BatchOptions:
        response_format = query.get("format", "json").strip().lower()
        if response_format not in FORMATS:
            raise BadRequest(f"format must be one of {', '.join(FORMATS)}, got {response_format[:40]!r}")
        encoding = query.get("encoding")
        if encoding is not None and (encoding := encoding.strip().lower()) not in ENCODINGS:
            raise BadRequest(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding[:40]!r}")
        channels = query.get("channels", "1").strip()
        if not (channels.isascii() and channels.isdigit() and 1 <= int(channels[:2]) <= MAX_RAW_CHANNELS):
            raise BadRequest(
                f"channels must be a whole number from 1 to {MAX_RAW_CHANNELS}, got {channels[:40]!r}"
            )
        rate = query.get("sample_rate")
        return cls(
            format=response_format,
            multichannel=parse_bool("multichannel", query.get("multichannel", "false")),
            sample_rate=None if rate is None else parse_sample_rate(rate),
            encoding=encoding,
            channels=int(channels),
        )


@attrs.frozen
class BatchInput:
    """A request's audio: one 16 kHz array, or one per channel with `multichannel`."""

    channels: tuple[npt.NDArray[np.float32], ...]
    opaque: object = NO_OPAQUE

    @property
    def samples(self) -> npt.NDArray[np.float32]:
        """The audio of a request that did not ask for channels: its one (mixed) channel."""
        return self.channels[0]


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


def _raw(body: Body, law: str, options: BatchOptions, max_seconds: float) -> list[npt.NDArray[np.float32]]:
    """A headerless body: interleaved s16le PCM (`linear16`) or G.711 bytes (`mulaw`, `alaw`)."""
    default_rate = audio.MODEL_SAMPLE_RATE if law == "linear16" else TELEPHONY_RATE
    rate = options.sample_rate or default_rate
    pcm = bytes(body)
    if law != "linear16":
        check_duration(len(pcm) // options.channels, rate, max_seconds)  # before the bytes double
        pcm = g711.to_pcm16(pcm, law)
    else:
        check_pcm16_length(pcm)
    return audio.pcm_channels(pcm, rate, options.channels, max_seconds, options.multichannel)


def parse_json_body(body: Body, max_seconds: float) -> BatchInput:
    """`{"audio_buffer": ..., "sample_rate": ..., "opaque": ...}`: the duration is checked first."""
    fields, span = read_json_fields(body)
    if span is None:
        raise BadRequest("the JSON body has no audio_buffer field")
    rate = parse_sample_rate(fields.get("sample_rate", audio.MODEL_SAMPLE_RATE))
    check_duration(span.byte_count(body) // 2, rate, max_seconds)
    pcm = check_pcm16_length(span.decode(body))
    return BatchInput((audio.from_pcm16(pcm, rate),), fields.get("opaque", NO_OPAQUE))


def check_media_type(mimetype: str) -> str:
    """The body's media type, lower case, when the API takes it; `UnsupportedMediaType` otherwise.
    Checked before the body is read."""
    mimetype = mimetype.lower()
    if mimetype in (*JSON_TYPES, *PCM_TYPES, *G711_TYPES, *SOUND_FILE_TYPES):
        return mimetype
    accepted = ", ".join((*JSON_TYPES, *PCM_TYPES, *G711_TYPES, *SOUND_FILE_TYPES))
    raise UnsupportedMediaType(f"unsupported Content-Type {mimetype or '(none)'!r}; use one of {accepted}")


def parse_batch_body(mimetype: str, body: Body, options: BatchOptions, max_seconds: float) -> BatchInput:
    """Decode a body by its media type (and `encoding` for raw bodies), never past `max_seconds`
    of audio: the duration is checked before raw audio is converted, and sound files are decoded
    block by block. CPU-heavy on long audio: servers call it in a worker thread."""
    if mimetype == ANY_SOUND_FILE:
        channels = audio.sound_file_channels(body, max_seconds, options.multichannel, DIALECT_CONTAINERS)
        return BatchInput(tuple(channels))
    mimetype = check_media_type(mimetype)
    if options.encoding is not None and mimetype not in PCM_TYPES:
        raise BadRequest(f"encoding is for raw audio ({', '.join(PCM_TYPES)}), not {mimetype}")
    if mimetype in JSON_TYPES:
        return parse_json_body(body, max_seconds)
    if mimetype in PCM_TYPES:
        return BatchInput(tuple(_raw(body, options.encoding or "linear16", options, max_seconds)))
    if mimetype in G711_TYPES and not body.startswith(AU_MAGIC):
        return BatchInput(tuple(_raw(body, G711_TYPES[mimetype], options, max_seconds)))
    container = SOUND_FILE_CONTAINERS.get(mimetype, "au")  # G.711 types with a .snd header
    channels = audio.sound_file_channels(body, max_seconds, options.multichannel, (container,))
    return BatchInput(tuple(channels))


def word_document(word: Word) -> dict[str, object]:
    """A word of `metadata.words`: times in seconds to the millisecond, confidence to 4 decimals."""
    return {
        "word": word.word,
        "start": round(word.start, 3),
        "end": round(word.end, 3),
        "confidence": round(word.confidence, 4),
    }


def segment_document(segment: Segment, channel: int | None = None) -> dict[str, object]:
    """A segment of the `segments` list: its span, text, words and confidence (and channel)."""
    document: dict[str, object] = {
        "id": segment.span.id,
        "start": round(segment.span.start, 3),
        "end": round(segment.span.end, 3),
        "text": segment.text,
        "words": [word_document(w) for w in segment.words],
        "confidence": round(segment.confidence, 4),
    }
    if channel is not None:
        document["channel"] = channel
    return document


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
        "segments": [segment_document(segment) for segment in transcript.segments],
    }
    if opaque is not NO_OPAQUE:
        document["opaque"] = opaque
    return document


def timeline(transcripts: Sequence[Transcript]) -> list[tuple[int, Segment]]:
    """Every channel's segments as `(channel, segment)`, in order of their start (then channel)."""
    return sorted(
        ((channel, segment) for channel, t in enumerate(transcripts) for segment in t.segments),
        key=lambda item: (item[1].span.start, item[0]),
    )


def multichannel_document(
    transcripts: Sequence[Transcript], model: str, processing_ms: float, opaque: object = NO_OPAQUE
) -> dict[str, object]:
    """`multichannel=true`: `channels` holds each channel's own document (as if it had been sent
    alone); the top level is the conversation: the segments of all channels in order of their
    start, each with its `channel`, and their text, tokens and words in that order."""
    ordered = timeline(transcripts)
    first = transcripts[0]
    document: dict[str, object] = {
        "transcription": " ".join(segment.text for _, segment in ordered if segment.text),
        "status": "COMPLETE",
        "metadata": {
            "model": model,
            "audio_length_samples": first.audio_samples,
            "audio_seconds": round(first.audio_seconds, 3),
            "channels": len(transcripts),
            "tokens": [t for _, segment in ordered for t in segment.tokens],
            "words": [word_document(w) | {"channel": c} for c, segment in ordered for w in segment.words],
            "processing_time_ms": round(processing_ms, 1),
        },
        "segments": [segment_document(segment, channel) for channel, segment in ordered],
        "channels": [
            {"channel": channel, **batch_document(t, model, processing_ms)}
            for channel, t in enumerate(transcripts)
        ],
    }
    if opaque is not NO_OPAQUE:
        document["opaque"] = opaque
    return document


def text_body(transcripts: Sequence[Transcript], response_format: str, multichannel: bool) -> str:
    """`format=text|srt|vtt`: the transcript, or subtitles from its segments' words (api.md).

    With `multichannel`, text is one line per segment in order, `[chN] ` before it, and every cue's
    first line starts with its channel's label."""
    if response_format == "text":
        if not multichannel:
            return transcripts[0].text + "\n"
        return "".join(f"[ch{c}] {segment.text}\n" for c, segment in timeline(transcripts) if segment.text)
    cues = sorted(
        (
            cue
            for channel, transcript in enumerate(transcripts)
            for cue in cues_from_segments(
                transcript.segments, transcript.audio_seconds, f"[ch{channel}]" if multichannel else ""
            )
        ),
        key=lambda cue: cue.start,
    )
    return srt(cues) if response_format == "srt" else vtt(cues)
