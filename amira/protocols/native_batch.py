"""The native batch protocol, `POST /v2/decode/batch/{model}` (api.md), sans-IO.

`parse_batch_body` turns a body into 16 kHz samples (the Content-Type decides how), and
`batch_document` turns a transcript into the response document.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio, g711
from amira.core.errors import BadRequest, TooLarge, UnsupportedMediaType
from amira.core.subtitles import cues_from_segments, srt, vtt
from amira.core.transcript import Segment, Transcript, Word
from amira.protocols.values import check_pcm16_length, parse_bool, parse_sample_rate

JSON_TYPES = ("application/json",)
PCM_TYPES = ("application/octet-stream", "audio/l16", "audio/pcm")
G711_TYPES = {"audio/basic": "mulaw", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
SOUND_FILE_TYPES = (
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/flac",
    "audio/x-flac",
    "audio/ogg",
    "audio/mpeg",
    "audio/mp3",
)
ENCODINGS = ("linear16", "mulaw", "alaw")
TELEPHONY_RATE = 8_000  # G.711's rate: the default sample rate of µ-law and A-law bodies
AU_MAGIC = b".snd"  # an `audio/basic` body with this header is a Sun .au file, not bare µ-law
FORMATS = ("json", "text", "srt", "vtt")
TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
MAX_RAW_CHANNELS = audio.MAX_CHANNELS
NO_OPAQUE = object()


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


def _json_audio_buffer(buffer: object) -> bytes:
    """`audio_buffer` as the original clients send it (bytes as 0..255 integers) or as base64."""
    if isinstance(buffer, str):
        try:
            return base64.b64decode(buffer, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"audio_buffer is not valid base64: {exc}") from exc
    if isinstance(buffer, list):
        if not all(type(v) is int and 0 <= v <= 255 for v in buffer):
            raise BadRequest("audio_buffer must hold integers from 0 to 255, one per byte")
        return bytes(buffer)
    raise BadRequest("audio_buffer must be an array of integers 0..255 or a base64 string")


def check_duration(samples: int, rate: int, max_seconds: float) -> None:
    if samples / rate > max_seconds:
        raise TooLarge(f"the audio lasts {samples / rate:.2f} s; the limit is {max_seconds:g} s")


def _raw(body: bytes, law: str, options: BatchOptions, max_seconds: float) -> list[npt.NDArray[np.float32]]:
    """A headerless body: interleaved s16le PCM (`linear16`) or G.711 bytes (`mulaw`, `alaw`)."""
    default_rate = audio.MODEL_SAMPLE_RATE if law == "linear16" else TELEPHONY_RATE
    rate = options.sample_rate or default_rate
    if law != "linear16":
        check_duration(len(body) // options.channels, rate, max_seconds)  # before the bytes double
        body = g711.to_pcm16(body, law)
    else:
        check_pcm16_length(body)
    return audio.pcm_channels(body, rate, options.channels, max_seconds, options.multichannel)


def parse_batch_body(mimetype: str, body: bytes, options: BatchOptions, max_seconds: float) -> BatchInput:
    """Decode a body by its media type (and `encoding` for raw bodies), never past `max_seconds`
    of audio: the duration is checked before raw audio is converted, and sound files are decoded
    block by block. CPU-heavy on long audio: servers call it in a worker thread."""
    mimetype = mimetype.lower()
    if options.encoding is not None and mimetype not in PCM_TYPES:
        raise BadRequest(f"encoding is for raw audio ({', '.join(PCM_TYPES)}), not {mimetype or '(none)'}")
    if mimetype in JSON_TYPES:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"malformed JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise BadRequest("the JSON body must be an object with an audio_buffer field")
        if "audio_buffer" not in document:
            raise BadRequest("the JSON body has no audio_buffer field")
        rate = parse_sample_rate(document.get("sample_rate", audio.MODEL_SAMPLE_RATE))
        pcm = check_pcm16_length(_json_audio_buffer(document["audio_buffer"]))
        check_duration(len(pcm) // 2, rate, max_seconds)
        return BatchInput((audio.from_pcm16(pcm, rate),), document.get("opaque", NO_OPAQUE))
    if mimetype in PCM_TYPES:
        return BatchInput(tuple(_raw(body, options.encoding or "linear16", options, max_seconds)))
    if mimetype in G711_TYPES and not body.startswith(AU_MAGIC):
        return BatchInput(tuple(_raw(body, G711_TYPES[mimetype], options, max_seconds)))
    if mimetype in SOUND_FILE_TYPES or mimetype in G711_TYPES:
        return BatchInput(tuple(audio.sound_file_channels(body, max_seconds, options.multichannel)))
    accepted = ", ".join((*JSON_TYPES, *PCM_TYPES, *G711_TYPES, *SOUND_FILE_TYPES))
    raise UnsupportedMediaType(f"unsupported Content-Type {mimetype or '(none)'!r}; use one of {accepted}")


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
