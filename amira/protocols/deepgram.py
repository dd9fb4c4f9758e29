"""The Deepgram dialect, sans-IO: `POST /v1/listen` (prerecorded) and `WS /v1/listen` (live).

The reference for every message is the `deepgram-sdk` package's own types
(`deepgram.listen.v1.types`: `ListenV1Results`, `ListenV1Metadata`, `ListenV1UtteranceEnd`,
`ListenV1SpeechStarted`, `ListenV1Error`; `deepgram.types.ListenV1Response` for prerecorded); the
tests validate what the server sends against them.

Query parameters (`ListenOptions`): `model` (a model set; default `default`), `encoding`
(`linear16`, `mulaw`, `alaw`; prerecorded bodies without it are sound files), `sample_rate`,
`channels`, `multichannel`, `interim_results`, `endpointing`, `utterance_end_ms`, `vad_events`.
Formatting and language options (`punctuate`, `smart_format`, `language`, `numerals`, ...) are
accepted and ignored: the model writes what it writes. `callback` is refused: the server makes no
outbound requests.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from amira.core import g711
from amira.core.errors import AmiraError, BadRequest, TooLarge, Unauthorized
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, StreamResult, Word, segment_confidence
from amira.protocols.live import LiveEvent, PcmFramer, Reply, mix_down, parse_boolean
from amira.protocols.native_stream import Audio, EndOfStream, Finalize, KeepAlive
from amira.protocols.values import parse_endpointing, parse_sample_rate

ENCODINGS = {"linear16": 2, "mulaw": 1, "alaw": 1}  # bytes per sample
MAX_CHANNELS = 8
REFUSED = ("callback",)


def _whole_number(name: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text[:9]) <= high or len(text) > 9:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {value[:40]!r}")
    return int(text)


@attrs.frozen
class ListenOptions:
    """The query parameters of a `/v1/listen` request."""

    model: str = "default"
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    endpointing: str | None = None  # as sent; None: the server's STREAM_ENDPOINTING_MS
    utterance_end_ms: int | None = None
    vad_events: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str], live: bool) -> ListenOptions:
        for name in REFUSED:
            if name in query:
                raise BadRequest(f"{name} is not supported: this server makes no outbound requests")
        encoding = query.get("encoding")
        if encoding is not None and encoding not in ENCODINGS:
            raise BadRequest(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding[:40]!r}")
        if live and query.get("multichannel", "false").strip().lower() == "true":
            raise BadRequest(
                "multichannel=true is not supported on live streams; channels are mixed down without it"
            )
        if live and encoding is None:
            raise BadRequest(
                f"live streams need raw audio: set encoding ({', '.join(ENCODINGS)}) and sample_rate"
            )
        rate = query.get("sample_rate")
        if encoding is not None and rate is None:
            raise BadRequest("sample_rate is required with encoding")
        endpointing = query.get("endpointing")
        if endpointing is not None:
            parse_endpointing(endpointing.lower())
        utterance_end = query.get("utterance_end_ms")
        return cls(
            model=query.get("model", "default").strip() or "default",
            encoding=encoding,
            sample_rate=parse_sample_rate(rate) if rate is not None else None,
            channels=_whole_number("channels", query.get("channels", "1"), 1, MAX_CHANNELS),
            multichannel=parse_boolean("multichannel", query.get("multichannel", "false")),
            interim_results=parse_boolean("interim_results", query.get("interim_results", "false")),
            endpointing=endpointing,
            utterance_end_ms=None
            if utterance_end is None
            else _whole_number("utterance_end_ms", utterance_end, 1000, 60_000),
            vad_events=parse_boolean("vad_events", query.get("vad_events", "false")),
        )


@attrs.frozen
class ModelInfo:
    """What Deepgram's messages say about the model: the model set's name, the server's version, the
    architecture (`rnnt`/`tdt`); its uuid is derived from the name, so it is stable across restarts."""

    name: str
    version: str
    arch: str

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"amira:model-set:{self.name}"))


def word_documents(words: Sequence[Word]) -> list[dict[str, object]]:
    return [
        {
            "word": w.word,
            "start": round(w.start, 3),
            "end": round(w.end, 3),
            "confidence": round(w.confidence, 4),
            "punctuated_word": w.word,
        }
        for w in words
    ]


def alternative(transcript: str, words: Sequence[Word]) -> dict[str, object]:
    """`channel.alternatives[0]`: the transcript, its confidence (`segment_confidence`: the mean of its
    words'), its words."""
    confidence = segment_confidence(words)
    return {"transcript": transcript, "confidence": round(confidence, 4), "words": word_documents(words)}


def prerecorded_document(
    channels: Sequence[tuple[str, Sequence[Word]]],
    duration: float,
    model: ModelInfo,
    request_id: str,
    sha256: str,
    created: str,
) -> dict[str, object]:
    """`POST /v1/listen`: Deepgram's `ListenV1Response`, one entry of `results.channels` a channel."""
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": sha256,
            "created": created,
            "duration": round(duration, 3),
            "channels": len(channels),
            "models": [model.uuid],
            "model_info": {model.uuid: {"name": model.name, "version": model.version, "arch": model.arch}},
        },
        "results": {"channels": [{"alternatives": [alternative(text, words)]} for text, words in channels]},
    }


def raw_channels(body: bytes, options: ListenOptions) -> list[bytes]:
    """A raw prerecorded body (`encoding` set) as s16le PCM, one per channel (or one mixed down)."""
    assert options.encoding is not None
    framer = PcmFramer(ENCODINGS[options.encoding], options.channels)
    frames = framer.frames(body)
    if len(frames) != len(body):
        raise BadRequest(
            f"the body is not a whole number of {options.channels}-channel {options.encoding} frames"
        )
    pcm = frames if options.encoding == "linear16" else g711.to_pcm16(frames, options.encoding)
    if options.multichannel and options.channels > 1:
        interleaved = np.frombuffer(pcm, dtype="<i2").reshape(-1, options.channels)
        return [interleaved[:, channel].tobytes() for channel in range(options.channels)]
    return [mix_down(pcm, options.channels)]


def error_document(error: AmiraError, request_id: str) -> dict[str, object]:
    """Deepgram's HTTP error shape, `{"err_code", "err_msg", "request_id"}`."""
    code = "INVALID_AUTH" if isinstance(error, Unauthorized) else error.error_type.upper()
    return {"err_code": code, "err_msg": str(error), "request_id": request_id}


class LivePhase(enum.Enum):
    """`RECEIVING`: audio and control messages are read. `ENDING`: the input ended (CloseStream,
    inactivity, shutdown); the last results and `Metadata` follow. `CLOSED`: `Metadata` or an error
    was sent; nothing more is."""

    RECEIVING = "receiving"
    ENDING = "ending"
    CLOSED = "closed"


@attrs.define
class DeepgramLive:
    """One `WS /v1/listen` stream: binary audio and JSON control messages in; `Results`,
    `SpeechStarted`, `UtteranceEnd`, `Metadata` and `Error` messages out.

    The session's segments are Deepgram's utterances: a partial is an interim `Results` of the open
    segment, a segment final a final `Results` (`speech_final` when an endpoint ended it,
    `from_finalize` when a `Finalize` did), with the span of audio it covers. With `vad_events`, a
    segment's first result is preceded by `SpeechStarted` (at the segment's start); with
    `utterance_end_ms`, an endpoint's final is followed by `UtteranceEnd` (at its last word's end).
    """

    options: ListenOptions
    model_info: ModelInfo
    request_id: str
    created: str
    max_frame_bytes: int
    max_audio_secs: float
    defaults: SegmentOptions = attrs.field(factory=SegmentOptions)
    phase: LivePhase = LivePhase.RECEIVING
    _framer: PcmFramer = attrs.field(init=False)
    _sha256: hashlib._Hash = attrs.field(init=False, factory=hashlib.sha256)
    _samples: int = 0
    _speech_segment: int | None = None  # the segment SpeechStarted was sent for

    def __attrs_post_init__(self) -> None:
        assert self.options.encoding is not None
        self._framer = PcmFramer(ENCODINGS[self.options.encoding], self.options.channels)

    @property
    def model(self) -> str:
        return self.options.model

    @property
    def sample_rate(self) -> int:
        assert self.options.sample_rate is not None
        return self.options.sample_rate

    def opening_messages(self) -> list[str]:
        return []

    def receive_bytes(self, frame: bytes) -> list[LiveEvent]:
        self._expect_receiving()
        if not frame:  # Deepgram's legacy end of stream: an empty binary message
            return [self._end()]
        if len(frame) > self.max_frame_bytes:
            raise TooLarge(f"frame of {len(frame)} bytes; the limit is {self.max_frame_bytes}")
        self._sha256.update(frame)
        frames = self._framer.frames(frame)
        encoding = self.options.encoding
        pcm = frames if encoding == "linear16" else g711.to_pcm16(frames, str(encoding))
        pcm = mix_down(pcm, self.options.channels)
        self._samples += len(pcm) // 2
        if self._samples > self.max_audio_secs * self.sample_rate:
            raise TooLarge(f"the stream is longer than {self.max_audio_secs:g} s of audio")
        return [Audio(pcm)] if pcm else []

    def receive_text(self, text: str) -> list[LiveEvent]:
        self._expect_receiving()
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return [KeepAlive()]
        if kind == "Finalize":
            return [Finalize()]
        if kind == "CloseStream":
            return [self._end()]
        if kind == "Configure":
            return [Reply(json.dumps(self._configure_failure()))]
        description = "text messages must be JSON control messages: KeepAlive, Finalize or CloseStream"
        return [
            Reply(
                json.dumps(
                    {
                        "type": "Error",
                        "variant": "SchemaError",
                        "description": description,
                        "message": text[:200],
                    }
                )
            )
        ]

    def _configure_failure(self) -> dict[str, object]:
        return {
            "type": "ConfigureFailure",
            "request_id": self.request_id,
            "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
            "description": "this server's models take no keyterms or formatting options",
        }

    def _end(self) -> EndOfStream:
        self.end_input()
        return EndOfStream()

    def end_input(self) -> None:
        if self.phase is LivePhase.RECEIVING:
            self.phase = LivePhase.ENDING

    def _expect_receiving(self) -> None:
        if self.phase is not LivePhase.RECEIVING:
            raise BadRequest(f"a message after the end of the stream ({self.phase.value})")

    @property
    def segment_options(self) -> SegmentOptions:
        """The server's segment options, with the stream's `interim_results` and `endpointing`."""
        options = attrs.evolve(self.defaults, interim_results=self.options.interim_results)
        if self.options.endpointing is not None:
            options = attrs.evolve(
                options, endpointing_ms=parse_endpointing(self.options.endpointing.lower())
            )
        return options

    def result_messages(self, result: StreamResult) -> list[str]:
        span = result.segment
        if result.status is ResultStatus.COMPLETE or span is None:  # every segment had its final already
            return []
        messages: list[str] = []
        if (
            self.options.vad_events
            and span.id != self._speech_segment
            and (result.transcription or result.words)
        ):
            self._speech_segment = span.id
            messages.append(
                json.dumps({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(span.start, 3)})
            )
        final = result.status is ResultStatus.FINAL
        words = result.words if final else ()
        messages.append(
            self._results(
                result.transcription,
                words,
                span.start,
                span.end,
                is_final=final,
                speech_final=result.speech_final,
                from_finalize=result.from_finalize,
            )
        )
        if final and result.speech_final and words and self.options.utterance_end_ms is not None:
            messages.append(
                json.dumps(
                    {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(words[-1].end, 3)}
                )
            )
        return messages

    def _results(
        self,
        transcript: str,
        words: Sequence[Word],
        start: float,
        end: float,
        *,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> str:
        return json.dumps(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": round(max(end - start, 0.0), 3),
                "start": round(start, 3),
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {"alternatives": [alternative(transcript, words)]},
                "metadata": {
                    "request_id": self.request_id,
                    "model_info": {
                        "name": self.model_info.name,
                        "version": self.model_info.version,
                        "arch": self.model_info.arch,
                    },
                    "model_uuid": self.model_info.uuid,
                },
            }
        )

    def closing_messages(self) -> list[str]:
        self.phase = LivePhase.CLOSED
        return [
            json.dumps(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": self.request_id,
                    "sha256": self._sha256.hexdigest(),
                    "created": self.created,
                    "duration": round(self._samples / self.sample_rate, 3),
                    "channels": self.options.channels,
                    "models": [self.model_info.uuid],
                    "model_info": {
                        self.model_info.uuid: {
                            "name": self.model_info.name,
                            "version": self.model_info.version,
                            "arch": self.model_info.arch,
                        }
                    },
                }
            )
        ]

    def error_message(self, error: AmiraError, stream_id: str) -> str | None:
        self.phase = LivePhase.CLOSED
        return live_error_message(error, stream_id)


def live_error_message(error: AmiraError, stream_id: str) -> str:
    """The `Error` message that precedes the close frame of a failed (or refused) live stream."""
    return json.dumps(
        {"type": "Error", "variant": error.error_type, "description": f"{error} (stream {stream_id})"}
    )
