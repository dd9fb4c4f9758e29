"""The OpenAI Realtime transcription dialect, `WS /v1/realtime?intent=transcription`, sans-IO.

The reference for every event is the `openai` package's own types (`openai.types.realtime`); the
tests validate what the server sends against them. Client events: `session.update` (the GA shape,
`session.audio.input.{format, transcription, turn_detection}`) and the beta
`transcription_session.update` (`input_audio_format`, `input_audio_transcription`,
`turn_detection`), `input_audio_buffer.append` (base64 audio), `.commit` and `.clear`. Server
events: `session.created`/`.updated` (or the beta `transcription_session.*`),
`input_audio_buffer.speech_started`/`.speech_stopped` (server VAD), `.committed`/`.cleared`,
`conversation.item.input_audio_transcription.delta` (append-only: only text the recogniser
committed) and `.completed`, and `error`. The stream session's segments are the items: server VAD
(`turn_detection.silence_duration_ms`) is the session's endpointing, a commit its Finalize.

Mistakes in a client event are answered with an `error` event and the session goes on, as
OpenAI's server does; only failures of the stream itself (limits, the backend) close it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import json
from collections.abc import Mapping

import attrs

from amira.core import g711
from amira.core.errors import AmiraError, BadRequest, RequestError, TooLarge, UnknownModel
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, SegmentEnd, StreamResult
from amira.protocols.live import Clear, LiveEvent, PcmFramer, Reply
from amira.protocols.native_stream import Audio, Finalize

PCM_RATE = 24_000
G711_RATE = 8_000
FORMATS = {
    "audio/pcm": ("linear16", PCM_RATE),
    "audio/pcmu": ("mulaw", G711_RATE),
    "audio/pcma": ("alaw", G711_RATE),
}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this
SERVER_VAD: dict[str, object] = {  # OpenAI's defaults
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}
MIN_SILENCE_MS, MAX_SILENCE_MS = 80, 10_000


class EventError(RequestError):
    """A client event the session cannot take; answered with an `error` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@attrs.frozen
class SessionConfig:
    """What a transcription session is configured with; `turn_detection` is echoed as given."""

    format: str = "audio/pcm"
    model: str = "default"
    language: str | None = None
    prompt: str | None = None
    turn_detection: Mapping[str, object] | None = attrs.field(factory=lambda: dict(SERVER_VAD))

    @property
    def silence_ms(self) -> int | None:
        """The endpointing of server VAD (`silence_duration_ms`); None when the client commits."""
        if self.turn_detection is None:
            return None
        return int(str(self.turn_detection["silence_duration_ms"]))


def _turn_detection(value: object, param: str) -> Mapping[str, object] | None:
    """`turn_detection`: null (the client commits) or `server_vad`, whose `silence_duration_ms` is the
    endpointing; `threshold` and `prefix_padding_ms` are echoed and ignored (the recogniser's own
    speech detection decides). `semantic_vad` is refused."""
    if value is None:
        return None
    fields = _object(value, param)
    if fields.get("type", "server_vad") != "server_vad":
        raise EventError("unsupported_value", "turn_detection must be null or server_vad", f"{param}.type")
    silence = fields.get("silence_duration_ms", SERVER_VAD["silence_duration_ms"])
    if (
        not isinstance(silence, int)
        or isinstance(silence, bool)
        or not MIN_SILENCE_MS <= silence <= MAX_SILENCE_MS
    ):
        raise EventError(
            "invalid_value",
            f"silence_duration_ms must be whole milliseconds from {MIN_SILENCE_MS} to {MAX_SILENCE_MS}",
            f"{param}.silence_duration_ms",
        )
    return {
        **SERVER_VAD,
        **{k: v for k, v in fields.items() if k in SERVER_VAD},
        "silence_duration_ms": silence,
    }


class RealtimePhase(enum.Enum):
    """`RECEIVING`: client events are read. `ENDING`: the input ended (the server's: inactivity,
    shutdown); the last transcription follows. `CLOSED`: an error closed the session."""

    RECEIVING = "receiving"
    ENDING = "ending"
    CLOSED = "closed"


def _object(value: object, param: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise EventError("invalid_value", f"{param} must be an object", param)
    return value


def _optional_text(value: object, param: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise EventError("invalid_value", f"{param} must be a string", param)


@attrs.define
class RealtimeTranscription:
    """One Realtime transcription session's wire state."""

    session_id: str
    known_models: frozenset[str]
    max_frame_bytes: int
    max_audio_secs: float
    beta: bool = False
    defaults: SegmentOptions = attrs.field(factory=SegmentOptions)
    config: SessionConfig = SessionConfig()
    phase: RealtimePhase = RealtimePhase.RECEIVING
    _events: int = 0
    _items: int = 0
    _previous_item: str | None = None
    _framer: PcmFramer = attrs.field(factory=lambda: PcmFramer(2, 1))
    _audio_started: bool = False
    _buffered_samples: int = 0
    _samples: int = 0
    _pending: collections.deque[str | None] = attrs.field(factory=collections.deque)
    _open_item: str | None = None
    _sent_chars: int = 0
    _speaking: bool = False

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def sample_rate(self) -> int:
        return FORMATS[self.config.format][1]

    @property
    def item_id(self) -> str:
        return f"item_{self.session_id}_{self._items:04d}"

    def _event(self, document: dict[str, object]) -> str:
        self._events += 1
        return json.dumps({"event_id": f"event_{self.session_id}_{self._events:06d}", **document})

    def _session_document(self) -> dict[str, object]:
        config = self.config
        transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
        if self.beta:
            return {
                "id": self.session_id,
                "object": "realtime.transcription_session",
                "input_audio_format": {v: k for k, v in BETA_FORMATS.items()}[config.format],
                "input_audio_transcription": transcription,
                "turn_detection": config.turn_detection,
                "input_audio_noise_reduction": None,
                "include": [],
            }
        audio_format: dict[str, object] = {"type": config.format}
        if config.format == "audio/pcm":
            audio_format["rate"] = PCM_RATE
        return {
            "type": "transcription",
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": transcription,
                    "noise_reduction": None,
                    "turn_detection": config.turn_detection,
                }
            },
            "include": [],
        }

    def _session_event(self, what: str) -> str:
        prefix = "transcription_session" if self.beta else "session"
        return self._event({"type": f"{prefix}.{what}", "session": self._session_document()})

    def opening_messages(self) -> list[str]:
        return [self._session_event("created")]

    def receive_bytes(self, frame: bytes) -> list[LiveEvent]:
        return [
            Reply(self._error(EventError("invalid_event", "binary frames are not events: send JSON text")))
        ]

    def receive_text(self, text: str) -> list[LiveEvent]:
        if self.phase is not RealtimePhase.RECEIVING:
            raise BadRequest(f"an event after the end of the session ({self.phase.value})")
        try:
            event = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [
                Reply(self._error(EventError("invalid_json", "an event must be a JSON object with a type")))
            ]
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            return self._dispatch(event)
        except EventError as exc:
            return [Reply(self._error(exc, client_event_id))]

    def _dispatch(self, event: Mapping[str, object]) -> list[LiveEvent]:
        kind = event["type"]
        if kind in ("session.update", "transcription_session.update"):
            self.beta = kind == "transcription_session.update"
            self._update(_object(event.get("session"), "session"))
            return [Reply(self._session_event("updated"))]
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"))
        if kind == "input_audio_buffer.commit":
            if self._buffered_samples < MIN_COMMIT_MS * self.sample_rate // 1000:
                raise EventError(
                    "input_audio_buffer_commit_empty",
                    f"buffer too small: commit at least {MIN_COMMIT_MS} ms of audio since the last commit",
                )
            return self._commit()
        if kind == "input_audio_buffer.clear":
            cleared = Reply(self._event({"type": "input_audio_buffer.cleared"}))
            if not self._buffered_samples:  # nothing to drop: no audio reached the session since the commit
                return [cleared]
            self._buffered_samples = 0
            self._pending.append(None)
            return [Clear(), cleared]
        raise EventError(
            "unsupported_event", f"{str(kind)[:60]!r} is not an event of a transcription session", "type"
        )

    def _update(self, session: Mapping[str, object]) -> None:
        config = self.config
        if self.beta:
            audio_format = session.get("input_audio_format")
            if audio_format is not None:
                if audio_format not in BETA_FORMATS:
                    raise EventError(
                        "invalid_value",
                        f"input_audio_format must be one of {', '.join(BETA_FORMATS)}",
                        "session.input_audio_format",
                    )
                config = attrs.evolve(config, format=BETA_FORMATS[str(audio_format)])
            transcription = session.get("input_audio_transcription")
            turn_detection = session.get("turn_detection", config.turn_detection)
            param = "session"
        else:
            if session.get("type", "transcription") != "transcription":
                raise EventError(
                    "invalid_value",
                    "only transcription sessions are served (session.type: transcription)",
                    "session.type",
                )
            audio_input = _object(
                _object(session.get("audio", {}), "session.audio").get("input", {}), "session.audio.input"
            )
            if "format" in audio_input:
                config = attrs.evolve(
                    config, format=self._format(_object(audio_input["format"], "session.audio.input.format"))
                )
            transcription = audio_input.get("transcription")
            turn_detection = audio_input.get("turn_detection", config.turn_detection)
            param = "session.audio.input"
        if transcription is not None:
            fields = _object(transcription, f"{param}.transcription")
            model = _optional_text(fields.get("model"), f"{param}.transcription.model") or config.model
            if model not in self.known_models:
                raise EventError(
                    "model_not_found",
                    f"unknown model {model!r}; configured: {', '.join(sorted(self.known_models))}",
                    f"{param}.transcription.model",
                )
            config = attrs.evolve(
                config,
                model=model,
                language=_optional_text(fields.get("language"), f"{param}.transcription.language"),
                prompt=_optional_text(fields.get("prompt"), f"{param}.transcription.prompt"),
            )
        config = attrs.evolve(
            config, turn_detection=_turn_detection(turn_detection, f"{param}.turn_detection")
        )
        fixed = (config.format, config.model, config.turn_detection)
        if self._audio_started and fixed != (
            self.config.format,
            self.config.model,
            self.config.turn_detection,
        ):
            raise EventError(
                "invalid_value",
                "the audio format, model and turn detection cannot change once audio was appended",
                param,
            )
        self.config = config

    @staticmethod
    def _format(document: Mapping[str, object]) -> str:
        kind = document.get("type", "audio/pcm")
        if kind not in FORMATS:
            raise EventError(
                "invalid_value",
                f"format type must be one of {', '.join(FORMATS)}",
                "session.audio.input.format.type",
            )
        if kind == "audio/pcm" and document.get("rate", PCM_RATE) != PCM_RATE:
            raise EventError(
                "invalid_value", f"audio/pcm is {PCM_RATE} Hz", "session.audio.input.format.rate"
            )
        return str(kind)

    def _append(self, audio: object) -> list[LiveEvent]:
        if not isinstance(audio, str):
            raise EventError("invalid_value", "audio must be a base64 string", "audio")
        if len(audio) > self.max_frame_bytes * 4 // 3 + 4:
            raise TooLarge(f"an append of more than {self.max_frame_bytes} bytes of audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError("invalid_value", f"audio is not valid base64: {exc}", "audio") from exc
        if not self._audio_started:
            self._audio_started = True
            self._framer = PcmFramer(2 if self.config.format == "audio/pcm" else 1, 1)
        frames = self._framer.frames(data)
        pcm = (
            frames
            if self.config.format == "audio/pcm"
            else g711.to_pcm16(frames, FORMATS[self.config.format][0])
        )
        self._buffered_samples += len(pcm) // 2
        self._samples += len(pcm) // 2
        if self._samples > self.max_audio_secs * self.sample_rate:
            raise TooLarge(f"the session is longer than {self.max_audio_secs:g} s of audio")
        return [Audio(pcm)] if pcm else []

    def _commit(self) -> list[LiveEvent]:
        item_id = self._open_item_id()
        committed = self._event(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": self._previous_item,
            }
        )
        self._previous_item, self._buffered_samples = item_id, 0
        self._pending.append(item_id)
        return [Finalize(), Reply(committed)]

    def end_input(self) -> None:
        if self.phase is RealtimePhase.RECEIVING:
            self.phase = RealtimePhase.ENDING

    @property
    def segment_options(self) -> SegmentOptions:
        """The server's segment options, with server VAD's `silence_duration_ms` as the endpointing."""
        return attrs.evolve(self.defaults, endpointing_ms=self.config.silence_ms, interim_results=True)

    def _open_item_id(self) -> str:
        """The item of the open segment, allocated at its first result (or at a commit)."""
        if self._open_item is None:
            self._open_item = self.item_id
            self._items += 1
        return self._open_item

    @property
    def channels(self) -> int:
        return 1

    def progress_messages(self, channel: int, settled_seconds: float) -> list[str]:
        return []  # speech_stopped comes with the endpoint's final

    def result_messages(self, result: StreamResult, channel: int = 0) -> list[str]:
        """Segments are items. A partial brings the open item's new committed text as a delta (and,
        with server VAD, `speech_started` first); a segment final completes it: by an endpoint
        (`speech_stopped` and `committed` first), by the client's commit (`committed` was sent at
        the commit), by a clear (nothing is sent), by its maximum length or the end of the stream."""
        span = result.segment
        if result.status is ResultStatus.COMPLETE or span is None:
            return []
        if self._pending and self._pending[0] is None and result.ended_by is not SegmentEnd.ENDPOINT:
            if result.status is ResultStatus.FINAL:  # the final of the audio a clear dropped
                self._pending.popleft()
                self._end_item()
            return []
        messages: list[str] = []
        if result.status is ResultStatus.PARTIAL:
            item_id = self._open_item_id()
            messages += self._speech_started(span.start)
            messages += self._delta(result.committed, item_id)
            return messages
        manual = result.ended_by is SegmentEnd.FINALIZE or (
            self._open_item is not None and self._open_item in self._pending
        )
        if manual:
            committed = self._pending.popleft() if self._pending else None
            if committed is None:  # a commit the segment ended before: its final was sent with the endpoint's
                self._end_item()
                return []
            item_id = committed
        else:
            if not (result.transcription or self._open_item):
                self._end_item()
                return []  # a segment without words nor partials: nobody heard of it
            item_id = self._open_item_id()
            messages += self._speech_started(span.start)
            if result.speech_final and self.config.turn_detection is not None:
                messages.append(
                    self._event(
                        {
                            "type": "input_audio_buffer.speech_stopped",
                            "audio_end_ms": round(span.end * 1000),
                            "item_id": item_id,
                        }
                    )
                )
                self._buffered_samples = 0
            messages.append(
                self._event(
                    {
                        "type": "input_audio_buffer.committed",
                        "item_id": item_id,
                        "previous_item_id": self._previous_item,
                    }
                )
            )
            self._previous_item = item_id
        messages += self._delta(result.transcription, item_id)
        messages.append(
            self._event(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": result.transcription,
                    "usage": {"type": "duration", "seconds": round(span.end - span.start, 3)},
                }
            )
        )
        self._end_item()
        return messages

    def _end_item(self) -> None:
        self._open_item, self._sent_chars, self._speaking = None, 0, False

    def _speech_started(self, start: float) -> list[str]:
        if self._speaking or self.config.turn_detection is None:
            return []
        self._speaking = True
        event = {
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": round(start * 1000),
            "item_id": self._open_item_id(),
        }
        return [self._event(event)]

    def _delta(self, text: str, item_id: str) -> list[str]:
        """The segment's text committed since the last delta, as an append-only delta of its item."""
        new = text[self._sent_chars :]
        if not self._sent_chars:
            new = new.lstrip()
        self._sent_chars = len(text)
        if not new:
            return []
        delta = {
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item_id,
            "content_index": 0,
            "delta": new,
        }
        return [self._event(delta)]

    def closing_messages(self) -> list[str]:
        return []

    def _error(self, error: AmiraError, client_event_id: str | None = None) -> str:
        code = error.code if isinstance(error, EventError) else error.error_type
        if isinstance(error, UnknownModel):
            code = "model_not_found"
        return self._event(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error" if isinstance(error, RequestError) else "server_error",
                    "code": code,
                    "message": str(error),
                    "param": error.param if isinstance(error, EventError) else None,
                    "event_id": client_event_id,
                },
            }
        )

    def error_message(self, error: AmiraError, stream_id: str) -> str | None:
        self.phase = RealtimePhase.CLOSED
        return self._error(error)
