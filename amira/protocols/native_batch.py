"""The native batch protocol, `POST /v2/decode/batch/{model}` (api.md), sans-IO.

`parse_batch_body` turns a body into 16 kHz samples (the Content-Type decides how), and
`batch_document` turns a transcript into the response document.
"""

from __future__ import annotations

import base64
import binascii
import json

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio
from amira.core.errors import BadRequest, TooLarge, UnsupportedMediaType
from amira.core.transcript import Transcript, Word
from amira.protocols.values import check_pcm16_length, parse_sample_rate

JSON_TYPES = ("application/json",)
PCM_TYPES = ("application/octet-stream", "audio/l16", "audio/pcm")
SOUND_FILE_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg")
NO_OPAQUE = object()


@attrs.frozen
class BatchInput:
    samples: npt.NDArray[np.float32]
    opaque: object = NO_OPAQUE


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


def parse_batch_body(
    mimetype: str, body: bytes, query_sample_rate: str | None, max_seconds: float
) -> BatchInput:
    """Decode a body by its media type; the duration limit is checked before resampling."""
    mimetype = mimetype.lower()
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
        return BatchInput(audio.from_pcm16(pcm, rate), document.get("opaque", NO_OPAQUE))
    if mimetype in PCM_TYPES:
        rate = (
            parse_sample_rate(query_sample_rate) if query_sample_rate is not None else audio.MODEL_SAMPLE_RATE
        )
        check_duration(len(check_pcm16_length(body)) // 2, rate, max_seconds)
        return BatchInput(audio.from_pcm16(body, rate))
    if mimetype in SOUND_FILE_TYPES:
        samples = audio.from_sound_file(body)
        check_duration(samples.size, audio.MODEL_SAMPLE_RATE, max_seconds)
        return BatchInput(samples)
    accepted = ", ".join(JSON_TYPES + PCM_TYPES + SOUND_FILE_TYPES)
    raise UnsupportedMediaType(f"unsupported Content-Type {mimetype or '(none)'!r}; use one of {accepted}")


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
