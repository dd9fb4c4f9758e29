"""What the live dialects (Deepgram's `WS /v1/listen`, OpenAI's Realtime transcription) share, sans-IO.

Each dialect turns a client's frames into the native stream events (`native_stream.Audio`,
`Finalize`, `EndOfStream`, `KeepAlive`) plus `ChannelAudio` (a channel transcribed on its own),
`Reply` (a message to send back at once: an
acknowledgement, or an error that leaves the stream open), and the session's results into its own
messages. `LiveProtocol` is what the server's live-stream shell (`amira.server.live`) drives.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import numpy as np

from amira.core.errors import AmiraError
from amira.core.segments import SegmentOptions
from amira.core.transcript import StreamResult
from amira.protocols.native_stream import Audio, EndOfStream, Finalize, KeepAlive
from amira.protocols.values import parse_bool


@attrs.frozen
class Reply:
    """A message for the client, sent at once, in order with the results."""

    text: str


@attrs.frozen
class Clear:
    """Drop what was received since the last commit: finalise it without telling the client."""


@attrs.frozen
class ChannelAudio:
    """s16le PCM of one channel of a stream whose channels are transcribed apart (Deepgram's
    `multichannel=true`): each channel is its own stream session. `Audio` is channel 0's."""

    channel: int
    pcm: bytes


LiveEvent = Audio | ChannelAudio | Finalize | EndOfStream | KeepAlive | Reply | Clear


class LiveProtocol(Protocol):
    """One live stream's wire state, as the shell sees it."""

    @property
    def model(self) -> str:
        """The model set the stream session is opened on (at the first audio)."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate of the s16le PCM of `Audio` events."""
        ...

    @property
    def channels(self) -> int:
        """Stream sessions, one per channel transcribed on its own (known at the first audio)."""
        ...

    @property
    def segment_options(self) -> SegmentOptions:
        """How the session cuts the stream into segments (endpointing, interim results)."""
        ...

    def opening_messages(self) -> list[str]: ...

    def receive_bytes(self, frame: bytes) -> list[LiveEvent]: ...

    def receive_text(self, text: str) -> list[LiveEvent]: ...

    def end_input(self) -> None:
        """The input ends: the client's end of stream, inactivity or the server's shutdown."""
        ...

    def result_messages(self, result: StreamResult, channel: int) -> list[str]:
        """The messages of a result of `channel`'s session."""
        ...

    def progress_messages(self, channel: int, settled_seconds: float) -> list[str]:
        """Messages due because `channel`'s session will put no word before `settled_seconds` any
        more (`Stream.settled_seconds`); the shell asks between results."""
        ...

    def closing_messages(self) -> list[str]:
        """The last messages, after the last result (or when no audio ever came)."""
        ...

    def error_message(self, error: AmiraError, stream_id: str) -> str | None:
        """The message that precedes the close frame of a failed stream (None: the close alone)."""
        ...


class PcmFramer:
    """Bytes of interleaved samples, in pieces of any size, to whole frames mixed down to mono.

    Clients of the dialects write audio as a byte stream: a message may end in the middle of a
    sample or of a multichannel frame; the remainder is kept for the next message.
    """

    def __init__(self, bytes_per_sample: int, channels: int) -> None:
        self.frame_bytes = bytes_per_sample * channels
        self.channels = channels
        self._rest = b""

    def frames(self, data: bytes) -> bytes:
        """The whole frames of what came so far (the caller decodes them), keeping the remainder."""
        data = self._rest + data
        whole = len(data) - len(data) % self.frame_bytes
        self._rest = data[whole:]
        return data[:whole]


def mix_down(pcm: bytes, channels: int) -> bytes:
    """Interleaved s16le frames to mono s16le (the mean of the channels)."""
    if channels == 1:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    mixed: bytes = samples.mean(axis=1).round().astype("<i2").tobytes()
    return mixed


def deinterleave(pcm: bytes, channels: int) -> list[bytes]:
    """Interleaved s16le frames to one s16le buffer per channel."""
    interleaved = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return [interleaved[:, channel].tobytes() for channel in range(channels)]


def parse_boolean(name: str, value: str) -> bool:
    """`true` or `false`, in any case (the dialects' clients write `True` as often as `true`)."""
    return parse_bool(name, value[:40].lower())
