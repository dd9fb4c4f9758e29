"""The OpenAI audio dialect, sans-IO: `POST /v1/audio/transcriptions`, `GET /v1/models`, errors.

The reference for every document is the `openai` package's own types (`openai.types.audio`:
`Transcription`, `TranscriptionVerbose`, `TranscriptionWord`, `TranscriptionSegment`, the
`transcript.text.delta`/`.done` stream events; `openai.types.Model`); the tests validate what the
server sends against them.

A form is parsed into a `TranscriptionRequest`; the audio file goes through the native batch
parser (`native_batch.parse_batch_body`), so it is read, limited and resampled exactly as a sound
file posted to `/v2`. `language`, `prompt`, `temperature` and the other fields of OpenAI's form
(`include[]`, `chunking_strategy`, ...) are accepted and ignored: the model set decides.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from amira.core.errors import (
    AmiraError,
    BadRequest,
    CapacityExceeded,
    RequestError,
    Unauthorized,
    UnknownModel,
)
from amira.core.subtitles import Cue, cues_from_segments, srt, vtt
from amira.core.transcript import Transcript
from amira.core.vocabulary import Vocabulary
from amira.protocols.live import parse_boolean
from amira.protocols.multipart import FormPart, parse_form_data

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
DEFAULT_LANGUAGE = "english"


class InvalidField(BadRequest):
    """A form field with a wrong value; OpenAI's error names the field (`param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@attrs.frozen
class TranscriptionRequest:
    model: str
    audio: bytes
    response_format: str = "json"
    granularities: frozenset[str] = frozenset()
    stream: bool = False
    language: str | None = None


def _boolean(param: str, value: str) -> bool:
    try:
        return parse_boolean(param, value)
    except BadRequest as exc:
        raise InvalidField(param, str(exc)) from exc


def _fields(parts: Iterable[FormPart]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for part in parts:
        if part.filename is None:
            name = part.name.removesuffix("[]")
            fields.setdefault(name, []).append(part.data.decode("utf-8", "replace"))
    return fields


def parse_transcription_form(content_type: str, body: bytes) -> TranscriptionRequest:
    """A transcription request from its `multipart/form-data` body."""
    parts = parse_form_data(content_type, body)
    files = [p for p in parts if p.name == "file"]
    if len(files) != 1 or not files[0].data:
        raise InvalidField("file", "the form needs exactly one non-empty `file` part (the audio file)")
    fields = _fields(p for p in parts if p.name != "file")
    model = (fields.get("model") or [""])[-1].strip()
    if not model:
        raise InvalidField(
            "model", "the form needs a `model` field (a model set of this server: GET /v1/models)"
        )
    response_format = (fields.get("response_format") or ["json"])[-1].strip()
    if response_format not in RESPONSE_FORMATS:
        raise InvalidField(
            "response_format",
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {response_format[:40]!r}",
        )
    granularities = frozenset(
        value.strip() for field in fields.get("timestamp_granularities", []) for value in field.split(",")
    )
    if not granularities <= set(GRANULARITIES):
        raise InvalidField(
            "timestamp_granularities", "timestamp_granularities[] may only be word and segment"
        )
    stream = _boolean("stream", fields["stream"][-1]) if "stream" in fields else False
    language = (fields.get("language") or [""])[-1].strip() or None
    return TranscriptionRequest(model, files[0].data, response_format, granularities, stream, language)


def json_document(transcript: Transcript) -> dict[str, object]:
    """`response_format=json`: OpenAI's `Transcription`."""
    return {
        "text": transcript.text,
        "usage": {"type": "duration", "seconds": round(transcript.audio_seconds, 3)},
    }


def _compression_ratio(text: str) -> float:
    """Whisper's repetition signal: the text's length over its zlib-compressed length."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def segment_documents(
    transcript: Transcript, cues: Sequence[Cue], vocabulary: Vocabulary
) -> list[dict[str, object]]:
    """`segments` of `verbose_json`: one per cue, with its vocabulary ids.

    `avg_logprob` is the mean natural log of the probability the joint gave each of the segment's
    tokens; fields this recogniser has no notion of are constant: `temperature` 0 (greedy decoding),
    `no_speech_prob` 0; `seek` is the start in centiseconds, as Whisper's.
    """
    spans = vocabulary.words(list(transcript.tokens))
    documents: list[dict[str, object]] = []
    for number, cue in enumerate(cues):
        first, last = spans[cue.first][1], spans[cue.last][2] + 1
        tokens = transcript.tokens[first:last]
        probabilities = transcript.token_probabilities[first:last]
        documents.append(
            {
                "id": number,
                "seek": round(cue.start * 100),
                "start": round(cue.start, 3),
                "end": round(cue.end, 3),
                "text": cue.text,
                "tokens": list(tokens),
                "temperature": 0.0,
                "avg_logprob": round(
                    sum(math.log(max(p, 1e-12)) for p in probabilities) / len(probabilities), 4
                ),
                "compression_ratio": _compression_ratio(cue.text),
                "no_speech_prob": 0.0,
            }
        )
    return documents


def verbose_document(
    transcript: Transcript, request: TranscriptionRequest, vocabulary: Vocabulary
) -> dict[str, object]:
    """`response_format=verbose_json`: OpenAI's `TranscriptionVerbose`.

    As OpenAI's, `words` come only with `timestamp_granularities[]=word`, `segments` with `segment`
    or when no granularity is asked for. `language` is the request's, or "english".
    """
    document: dict[str, object] = {
        "task": "transcribe",
        "language": request.language or DEFAULT_LANGUAGE,
        "duration": round(transcript.audio_seconds, 3),
        "text": transcript.text,
    }
    if "word" in request.granularities:
        document["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in transcript.words
        ]
    if "segment" in request.granularities or not request.granularities:
        cues = cues_from_segments(transcript.segments, transcript.audio_seconds)
        document["segments"] = segment_documents(transcript, cues, vocabulary)
    document["usage"] = {"type": "duration", "seconds": round(transcript.audio_seconds, 3)}
    return document


def text_body(transcript: Transcript, response_format: str) -> str:
    """`text`, `srt` and `vtt`: the body, served as `TEXT_TYPES[response_format]`."""
    if response_format == "text":
        return transcript.text + "\n"
    cues = cues_from_segments(transcript.segments, transcript.audio_seconds)
    return srt(cues) if response_format == "srt" else vtt(cues)


def stream_events(transcript: Transcript) -> Iterator[str]:
    """`stream=true`: Server-Sent Events, one `transcript.text.delta` a word, then `.done`.

    Joined, the deltas are exactly the final text (each word carries the space before it).
    """
    for delta in re.findall(r"\s*\S+", transcript.text):
        yield _sse({"type": "transcript.text.delta", "delta": delta})
    yield _sse({"type": "transcript.text.done", "text": transcript.text})


def _sse(document: Mapping[str, object]) -> str:
    return f"data: {json.dumps(document)}\n\n"


def models_document(names: Sequence[str], created: int) -> dict[str, object]:
    """`GET /v1/models`: the model sets, as OpenAI's `Model` objects."""
    return {"object": "list", "data": [model_document(name, created) for name in names]}


def model_document(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "amira"}


def error_document(error: AmiraError) -> dict[str, object]:
    """OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`.

    `code` is the native `error_type`, except where OpenAI has a code of its own that clients test
    for (`invalid_api_key`, `model_not_found`); client mistakes are `invalid_request_error`, the
    rest `server_error`.
    """
    codes: dict[type[AmiraError], str] = {Unauthorized: "invalid_api_key", UnknownModel: "model_not_found"}
    code = codes.get(type(error), error.error_type)
    kind = "invalid_request_error" if isinstance(error, RequestError) else "server_error"
    if isinstance(error, CapacityExceeded):
        kind = "server_error"
    return {
        "error": {
            "message": str(error),
            "type": kind,
            "param": error.param if isinstance(error, InvalidField) else None,
            "code": code,
        }
    }
