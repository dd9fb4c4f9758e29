"""The native streaming protocol, `WS /v2/decode/stream/{model}` (api.md), sans-IO.

`NativeStream` is fed each frame the client sent and answers with a typed event (`Audio`,
`Finalize`, `EndOfStream`, `KeepAlive`), raising the API's errors for frames that break the
rules; it reads the stream's options from the query string (`sample_rate`, and the segment options
`endpointing`, `max_segment_secs`, `interim_results`), and turns session results and errors into
the JSON text messages the client reads (api.md, "Segments": partials and segment finals carry
their `segment`, the one `COMPLETE` the whole stream with `metadata.segments`). Its
`phase` is the stream's life as the wire sees it, so the rules that span messages (nothing after
the end of stream, exactly one `COMPLETE`, nothing after an `ERROR`) are checked in one place.

The control bytes are defined here once; the client (`amira.client`) imports them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping

import attrs

from amira.core.audio import MODEL_SAMPLE_RATE
from amira.core.errors import AmiraError, BadRequest, TooLarge
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, Segment, SegmentSpan, StreamResult
from amira.protocols.native_batch import word_document
from amira.protocols.values import parse_bool, parse_endpointing, parse_max_segment_secs, parse_sample_rate

END_OF_STREAM = b"\x00"
KEEPALIVE = b"\x01"
FINALIZE_MESSAGE = json.dumps({"type": "Finalize"})


@attrs.frozen
class Audio:
    """s16le PCM at the stream's sample rate (an even number of bytes)."""

    pcm: bytes


@attrs.frozen
class Finalize:
    """Commit what was received, send a final result, keep the stream open."""


@attrs.frozen
class EndOfStream:
    """No more audio: flush, send `COMPLETE`, close with 1000."""


@attrs.frozen
class KeepAlive:
    """Only resets the inactivity timer."""


StreamEvent = Audio | Finalize | EndOfStream | KeepAlive


class StreamPhase(enum.Enum):
    """The stream's life on the wire.

    `RECEIVING`: frames are accepted. `ENDING`: the client (or the server: inactivity, shutdown)
    ended the input; results until `COMPLETE` are still sent. `COMPLETE`: the one final
    `COMPLETE` result was sent. `FAILED`: an `ERROR` message was sent. Both last phases are final:
    nothing more is sent after them.
    """

    RECEIVING = "receiving"
    ENDING = "ending"
    COMPLETE = "complete"
    FAILED = "failed"


@attrs.frozen
class StreamOptions:
    """The query parameters of a stream: its sample rate, and its segment options (the server's
    defaults where the query is silent). Other parameters (`api_key`) are not the protocol's."""

    sample_rate: int
    segments: SegmentOptions = attrs.field(factory=SegmentOptions)

    @classmethod
    def from_query(cls, query: Mapping[str, str], defaults: SegmentOptions) -> StreamOptions:
        segments = defaults
        if "endpointing" in query:
            segments = attrs.evolve(segments, endpointing_ms=parse_endpointing(query["endpointing"]))
        if "max_segment_secs" in query:
            segments = attrs.evolve(
                segments, max_segment_secs=parse_max_segment_secs(query["max_segment_secs"])
            )
        if "interim_results" in query:
            segments = attrs.evolve(
                segments, interim_results=parse_bool("interim_results", query["interim_results"])
            )
        return cls(parse_sample_rate(query.get("sample_rate", "16000")), segments)


@attrs.define
class NativeStream:
    """One stream's protocol state: frames in, events out; results in, messages out."""

    max_frame_bytes: int
    max_audio_secs: float
    options: StreamOptions = StreamOptions(MODEL_SAMPLE_RATE)
    phase: StreamPhase = StreamPhase.RECEIVING
    received_samples: int = 0

    def configure(self, query: Mapping[str, str], defaults: SegmentOptions) -> StreamOptions:
        """The stream's options from the upgrade request's query string."""
        self.options = StreamOptions.from_query(query, defaults)
        return self.options

    def receive_bytes(self, frame: bytes) -> StreamEvent:
        """A binary frame: audio, or a control byte."""
        self._expect_receiving()
        if not frame:
            raise BadRequest("empty binary frame")
        if len(frame) > self.max_frame_bytes:
            raise TooLarge(f"frame of {len(frame)} bytes; the limit is {self.max_frame_bytes}")
        if frame == END_OF_STREAM:
            return self.end_input()
        if frame == KEEPALIVE:
            return KeepAlive()
        if len(frame) % 2:
            raise BadRequest(
                f"a frame of {len(frame)} bytes is neither audio (even length) nor a control byte"
            )
        self.received_samples += len(frame) // 2
        if self.received_samples > self.max_audio_secs * self.options.sample_rate:
            raise TooLarge(f"the stream is longer than {self.max_audio_secs:g} s of audio")
        return Audio(frame)

    def receive_text(self, text: str) -> StreamEvent:
        """A text frame: one of the JSON control messages."""
        self._expect_receiving()
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return KeepAlive()
        if kind == "Finalize":
            return Finalize()
        if kind == "CloseStream":
            return self.end_input()
        raise BadRequest("text frames must be a JSON control message: KeepAlive, Finalize or CloseStream")

    def end_input(self) -> EndOfStream:
        """The input ends: by the client's end of stream, or the server's (inactivity, shutdown)."""
        if self.phase is StreamPhase.RECEIVING:
            self.phase = StreamPhase.ENDING
        return EndOfStream()

    def result_message(self, result: StreamResult) -> str:
        """A session result as the JSON text the client reads; the `COMPLETE` one ends the stream."""
        if self.phase in (StreamPhase.COMPLETE, StreamPhase.FAILED):
            raise RuntimeError(f"a result after the stream ended ({self.phase.value})")
        if result.status is ResultStatus.COMPLETE:
            self.phase = StreamPhase.COMPLETE
        return json.dumps(result_document(result))

    def error_message(self, error: AmiraError, transcription: str, stream_id: str) -> str:
        """The `ERROR` message; after it the stream is closed with the error's close code."""
        self.phase = StreamPhase.FAILED
        return json.dumps(
            {
                "transcription": transcription,
                "status": "ERROR",
                "error_type": error.error_type,
                "message": f"{error} (stream {stream_id})",
            }
        )

    def _expect_receiving(self) -> None:
        if self.phase is not StreamPhase.RECEIVING:
            raise BadRequest(f"a frame after the end of the stream ({self.phase.value})")


def span_document(span: SegmentSpan) -> dict[str, object]:
    return {"id": span.id, "start": round(span.start, 3), "end": round(span.end, 3)}


def segment_document(segment: Segment) -> dict[str, object]:
    return span_document(segment.span) | {"text": segment.text, "confidence": round(segment.confidence, 4)}


def result_document(result: StreamResult) -> dict[str, object]:
    """A partial or segment final (of the open segment, with its `segment`), or `COMPLETE` (of the
    whole stream, with `metadata.segments`). Finals carry their tokens and words."""
    metadata: dict[str, object] = {
        "audio_seconds": round(result.audio_seconds, 3),
        "processing_time_ms": round(result.processing_time_ms, 1),
    }
    if result.is_final:
        metadata |= {"tokens": list(result.tokens), "words": [word_document(w) for w in result.words]}
    if result.end_of_stream:
        metadata["segments"] = [segment_document(segment) for segment in result.segments]
    document: dict[str, object] = {
        "transcription": result.transcription,
        "status": "COMPLETE" if result.end_of_stream else "ACTIVE",
        "is_final": result.is_final,
        "speech_final": result.speech_final,
        "from_finalize": result.from_finalize,
        "committed": result.committed,
    }
    if result.segment is not None:
        document["segment"] = span_document(result.segment)
    document["metadata"] = metadata
    return document
