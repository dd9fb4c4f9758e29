"""The Deepgram dialect, sans-IO: `POST /v1/listen` (prerecorded) and `WS /v1/listen` (live).

The reference for every message is the `deepgram-sdk` package's own types
(`deepgram.listen.v1.types`: `ListenV1Results`, `ListenV1Metadata`, `ListenV1UtteranceEnd`,
`ListenV1SpeechStarted`, `ListenV1Error`; `deepgram.types.ListenV1Response` for prerecorded); the
tests validate what the server sends against them.

Query parameters (`ListenOptions`): `model` (a model set; default `default`), `encoding`
(`linear16`, `mulaw`, `alaw`; prerecorded bodies without it are sound files, live streams without it
start with a WAV header, which then gives the encoding, rate and channels: `sample_rate` and
`channels` are ignored), `sample_rate`, `channels`, `multichannel`, `interim_results`,
`endpointing`, `utterance_end_ms`, `vad_events`.
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

from amira.core import g711
from amira.core.errors import AmiraError, BadAudio, BadRequest, TooLarge, Unauthorized
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, StreamResult, Word, segment_confidence
from amira.protocols.live import (
    ChannelAudio,
    LiveEvent,
    PcmFramer,
    Reply,
    deinterleave,
    mix_down,
    parse_boolean,
)
from amira.protocols.native_stream import Audio, EndOfStream, Finalize, KeepAlive
from amira.protocols.values import parse_endpointing, parse_sample_rate
from amira.protocols.wav_header import read_wav_header

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
    if options.multichannel:
        return deinterleave(pcm, options.channels)
    return [mix_down(pcm, options.channels)]


def error_document(error: AmiraError, request_id: str) -> dict[str, object]:
    """Deepgram's HTTP error shape, `{"err_code", "err_msg", "request_id"}`."""
    code = "INVALID_AUTH" if isinstance(error, Unauthorized) else error.error_type.upper()
    return {"err_code": code, "err_msg": str(error), "request_id": request_id}


class LivePhase(enum.Enum):
    """`HEADER`: a stream without `encoding` waits for its WAV header (`amira.protocols.wav_header`).
    `RECEIVING`: audio and control messages are read. `ENDING`: the input ended (CloseStream,
    inactivity, shutdown); the last results and `Metadata` follow. `CLOSED`: `Metadata` or an error
    was sent; nothing more is."""

    HEADER = "header"
    RECEIVING = "receiving"
    ENDING = "ending"
    CLOSED = "closed"


@attrs.frozen
class PcmFormat:
    """The samples of a live stream: from the query (`encoding`, `sample_rate`, `channels`) or from
    its WAV header."""

    encoding: str
    sample_rate: int
    channels: int


@attrs.define
class _Utterances:
    """One channel's utterance events: the segment `SpeechStarted` was sent for, and the end of its
    last finalized word while its `UtteranceEnd` is due."""

    speech_segment: int | None = None
    last_word_end: float | None = None


@attrs.define
class DeepgramLive:
    """One `WS /v1/listen` stream: binary audio and JSON control messages in; `Results`,
    `SpeechStarted`, `UtteranceEnd`, `Metadata` and `Error` messages out.

    The session's segments are Deepgram's utterances: a partial is an interim `Results` of the open
    segment (with its words so far), a segment final a final `Results` (`speech_final` when an
    endpoint ended it, `from_finalize` when a `Finalize` did), with the span of audio it covers.
    With `vad_events`, a segment's first result is preceded by `SpeechStarted` (at the segment's
    start). With `utterance_end_ms`, `UtteranceEnd` comes once that much audio has passed after the
    last finalized word's end without a new word, as Deepgram defines it: the shell tells the
    protocol how far the session has settled (`progress_messages`), since no result comes while
    the session skips a pause; a stream that ends that long after its last word gets it last.

    With `multichannel=true`, every channel is its own session (`channels` of them; the shell
    sends each its `ChannelAudio`), and every message names its channel (`channel_index`
    `[i, channels]`). Without it, the channels are mixed down into one session.
    """

    options: ListenOptions
    model_info: ModelInfo
    request_id: str
    created: str
    max_frame_bytes: int
    max_audio_secs: float
    defaults: SegmentOptions = attrs.field(factory=SegmentOptions)
    phase: LivePhase = LivePhase.RECEIVING
    _format: PcmFormat | None = attrs.field(init=False, default=None)
    _framer: PcmFramer | None = attrs.field(init=False, default=None)
    _header: bytes = b""  # the first bytes of a stream without encoding, until its header is whole
    _sha256: hashlib._Hash = attrs.field(init=False, factory=hashlib.sha256)
    _samples: int = 0  # frames (one sample of every channel) received
    _utterances: list[_Utterances] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        options = self.options
        if options.encoding is None:
            self.phase = LivePhase.HEADER
        else:
            assert options.sample_rate is not None
            self._use(PcmFormat(options.encoding, options.sample_rate, options.channels))

    def _use(self, pcm_format: PcmFormat) -> None:
        self._format = pcm_format
        self._framer = PcmFramer(ENCODINGS[pcm_format.encoding], pcm_format.channels)
        self._utterances = [_Utterances() for _ in range(self.channels)]

    @property
    def model(self) -> str:
        return self.options.model

    @property
    def pcm_format(self) -> PcmFormat:
        assert self._format is not None, "the format is known before the first audio"
        return self._format

    @property
    def sample_rate(self) -> int:
        return self.pcm_format.sample_rate

    @property
    def channels(self) -> int:
        """Sessions: one per channel with `multichannel=true`, else one for the mix."""
        return self.pcm_format.channels if self.options.multichannel else 1

    def opening_messages(self) -> list[str]:
        return []

    def receive_bytes(self, frame: bytes) -> list[LiveEvent]:
        self._expect_receiving()
        if not frame:  # Deepgram's legacy end of stream: an empty binary message
            return [self._end()]
        if len(frame) > self.max_frame_bytes:
            raise TooLarge(f"frame of {len(frame)} bytes; the limit is {self.max_frame_bytes}")
        self._sha256.update(frame)
        return self._receive_header(frame) if self.phase is LivePhase.HEADER else self._audio(frame)

    def _receive_header(self, frame: bytes) -> list[LiveEvent]:
        self._header += frame
        header = read_wav_header(self._header)
        if header is None:
            return []
        if header.channels > MAX_CHANNELS or header.channels < 1:
            raise BadAudio(f"the WAV header says {header.channels} channels; 1 to {MAX_CHANNELS} are served")
        self._use(PcmFormat(header.encoding, parse_sample_rate(str(header.sample_rate)), header.channels))
        self.phase = LivePhase.RECEIVING
        samples, self._header = self._header[header.data_offset :], b""
        return self._audio(samples)

    def _audio(self, data: bytes) -> list[LiveEvent]:
        pcm_format = self.pcm_format
        assert self._framer is not None
        frames = self._framer.frames(data)
        pcm = frames if pcm_format.encoding == "linear16" else g711.to_pcm16(frames, pcm_format.encoding)
        self._samples += len(pcm) // (2 * pcm_format.channels)
        if self._samples > self.max_audio_secs * pcm_format.sample_rate:
            raise TooLarge(f"the stream is longer than {self.max_audio_secs:g} s of audio")
        if not pcm:
            return []
        if not self.options.multichannel:
            return [Audio(mix_down(pcm, pcm_format.channels))]
        return [
            ChannelAudio(channel, samples)
            for channel, samples in enumerate(deinterleave(pcm, pcm_format.channels))
        ]

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
        if self.phase in (LivePhase.HEADER, LivePhase.RECEIVING):
            self.phase = LivePhase.ENDING

    def _expect_receiving(self) -> None:
        if self.phase not in (LivePhase.HEADER, LivePhase.RECEIVING):
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

    def _channel_index(self, channel: int) -> list[int]:
        return [channel, self.channels]

    def result_messages(self, result: StreamResult, channel: int = 0) -> list[str]:
        span = result.segment
        if result.status is ResultStatus.COMPLETE or span is None:  # every segment had its final already
            return []
        utterances = self._utterances[channel]
        messages: list[str] = []
        if result.words:
            messages += self._new_words(channel, result.words[0].start)
        if (
            self.options.vad_events
            and span.id != utterances.speech_segment
            and (result.transcription or result.words)
        ):
            utterances.speech_segment = span.id
            messages.append(
                json.dumps(
                    {
                        "type": "SpeechStarted",
                        "channel": self._channel_index(channel),
                        "timestamp": round(span.start, 3),
                    }
                )
            )
        final = result.status is ResultStatus.FINAL
        messages.append(
            self._results(
                channel,
                result.transcription,
                result.words,
                span.start,
                span.end,
                is_final=final,
                speech_final=result.speech_final,
                from_finalize=result.from_finalize,
            )
        )
        if final and result.words and self.options.utterance_end_ms is not None:
            utterances.last_word_end = result.words[-1].end
        return messages

    def _due(self, channel: int) -> float | None:
        """When the channel's `UtteranceEnd` is due, if one is: `utterance_end_ms` after the end of
        its last finalized word."""
        last = self._utterances[channel].last_word_end
        if last is None or self.options.utterance_end_ms is None:
            return None
        return last + self.options.utterance_end_ms / 1000

    def _new_words(self, channel: int, first_start: float) -> list[str]:
        """Words again: `UtteranceEnd` first if they start after it was due, else none is sent."""
        due = self._due(channel)
        if due is None:
            return []
        if first_start >= due:
            return self._utterance_end(channel)
        self._utterances[channel].last_word_end = None
        return []

    def progress_messages(self, channel: int, settled_seconds: float) -> list[str]:
        """The session of `channel` will put no word before `settled_seconds` any more."""
        due = self._due(channel)
        return self._utterance_end(channel) if due is not None and settled_seconds >= due else []

    def _utterance_end(self, channel: int) -> list[str]:
        utterances = self._utterances[channel]
        last, utterances.last_word_end = utterances.last_word_end, None
        return [
            json.dumps(
                {
                    "type": "UtteranceEnd",
                    "channel": self._channel_index(channel),
                    "last_word_end": round(last or 0.0, 3),
                }
            )
        ]

    def _results(
        self,
        channel: int,
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
                "channel_index": self._channel_index(channel),
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
        """`UtteranceEnd`s still due within the audio received, then `Metadata`."""
        self.phase = LivePhase.CLOSED
        pcm_format = self._format
        duration = self._samples / pcm_format.sample_rate if pcm_format is not None else 0.0
        messages = [
            message
            for channel in range(len(self._utterances))
            for message in self.progress_messages(channel, duration)
        ]
        messages.append(
            json.dumps(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": self.request_id,
                    "sha256": self._sha256.hexdigest(),
                    "created": self.created,
                    "duration": round(duration, 3),
                    "channels": pcm_format.channels if pcm_format is not None else self.options.channels,
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
        )
        return messages

    def error_message(self, error: AmiraError, stream_id: str) -> str | None:
        self.phase = LivePhase.CLOSED
        return live_error_message(error, stream_id)


def live_error_message(error: AmiraError, stream_id: str) -> str:
    """The `Error` message that precedes the close frame of a failed (or refused) live stream."""
    return json.dumps(
        {"type": "Error", "variant": error.error_type, "description": f"{error} (stream {stream_id})"}
    )
