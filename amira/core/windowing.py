"""Streaming, sans-IO: buffered windows with frame-aligned commits, and token weaving.

The encoder is not streaming-aware, so a stream is cut into chunks of whole encoder frames, counted
from sample 0, and each chunk is encoded inside a window with some already-seen audio on the left
and some look-ahead on the right (`models-and-decoding.md`, "Streaming"). Because every boundary is
a whole frame, a window's encoder frame j is absolute stream frame `first_frame + j`: the decoder
continues across chunks on absolute frame indices and its tokens are committed exactly, with no
text-level alignment of overlapping transcripts.

`Chunker` only counts samples: which windows come out depends on the total number of samples fed,
never on how they were split into `feed` calls.

Finalize (a flush that is not the end of the stream): the rest of the audio is committed as a last
chunk with no look-ahead, through the end of what the encoder gives for it (`Window.decode_stop`).
Later audio resumes chunking at the first frame boundary at or after the flushed end
(`ceil(samples / frame_samples)`), with the usual left context; frames the decoder already passed
(the encoder's extra frame at the end of the flushed audio, a TDT jump) are not decoded again,
because decoding always starts at the stream decoder state's frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from amira.core.decoding import Emission
from amira.core.vocabulary import Vocabulary

CHUNK_SETTING = "STREAM_CHUNK_SECS"
LEFT_SETTING = "STREAM_LEFT_CONTEXT_SECS"
RIGHT_SETTING = "STREAM_RIGHT_CONTEXT_SECS"
FRAME_TOLERANCE = 1e-6  # in frames: 1.6 s / 0.08 s is 20.000000000000004 in floating point


class StreamingConfigError(ValueError):
    """A streaming length does not fit the model set's encoder frames; the message names the setting."""


def _whole_frames(setting: str, seconds: float, frame_samples: int, sample_rate: int) -> int:
    frame_seconds = frame_samples / sample_rate
    frames = seconds / frame_seconds
    whole = round(frames)
    if abs(frames - whole) > FRAME_TOLERANCE:
        below, above = int(frames) * frame_seconds, (int(frames) + 1) * frame_seconds
        raise StreamingConfigError(
            f"{setting}={seconds:g} is not a whole number of encoder frames ({frame_seconds:g} s each); "
            f"use e.g. {below:g} or {above:g}"
        )
    return whole


@attrs.frozen
class StreamingConfig:
    """Chunk and context lengths in encoder frames, and the samples per frame."""

    chunk_frames: int = attrs.field(validator=attrs.validators.ge(1))
    left_frames: int = attrs.field(validator=attrs.validators.ge(0))
    right_frames: int = attrs.field(validator=attrs.validators.ge(0))
    frame_samples: int = attrs.field(validator=attrs.validators.ge(1))

    @classmethod
    def from_seconds(
        cls, *, chunk: float, left: float, right: float, frame_samples: int, sample_rate: int = 16_000
    ) -> StreamingConfig:
        """Lengths in seconds, as configured: each must be a whole number of frames (0.08 s for NeMo)."""
        chunk_frames = _whole_frames(CHUNK_SETTING, chunk, frame_samples, sample_rate)
        if chunk_frames < 1:
            raise StreamingConfigError(f"{CHUNK_SETTING}={chunk:g} must be at least one encoder frame")
        for setting, seconds in ((LEFT_SETTING, left), (RIGHT_SETTING, right)):
            if seconds < 0:
                raise StreamingConfigError(f"{setting}={seconds:g} must be 0 or more")
        return cls(
            chunk_frames,
            _whole_frames(LEFT_SETTING, left, frame_samples, sample_rate),
            _whole_frames(RIGHT_SETTING, right, frame_samples, sample_rate),
            frame_samples,
        )


@attrs.frozen
class Window:
    """One chunk to decode and the audio to encode for it.

    Samples `[start_sample, stop_sample)` are encoded; `start_sample` is frame aligned, so encoder
    frame j of the window is absolute frame `first_frame + j`. Frames `[commit_start, commit_stop)`
    are the chunk: decoded from the stream's decoder state and committed. Frames
    `[commit_stop, tentative_stop)` are look-ahead, decoded from a copy of the state for the
    tentative tail. A `final` window has no look-ahead and commits through the end of the encoder's
    output (`decode_stop`).
    """

    start_sample: int
    stop_sample: int
    first_frame: int
    commit_start: int
    commit_stop: int
    tentative_stop: int
    final: bool

    def decode_stop(self, encoded_length: int) -> int:
        """Where committed decoding stops, given the frames the encoder returned for the window.

        A final window decodes every frame the encoder gives: NeMo's centred STFT makes N samples
        give `N // frame_samples + 1` frames, one past the audio, and a batch decode uses it too.
        Other windows need every frame up to `tentative_stop`: an encoder that gives fewer would
        leave a gap in the committed frames.
        """
        end = self.first_frame + encoded_length
        if self.final:
            return end
        if end < self.tentative_stop:
            raise ValueError(
                f"the encoder gave {encoded_length} frames for a window of "
                f"{self.tentative_stop - self.first_frame}"
            )
        return self.commit_stop


@attrs.define
class Chunker:
    """Cuts a stream of 16 kHz samples into windows; holds only the audio the next window needs.

    Call `next_window` until it returns None after each `feed`: the buffer then never holds more
    than left context + chunk + right context + one `feed`'s worth of samples. Besides it, only the
    samples of the latest window are kept, until the next window replaces them.
    """

    config: StreamingConfig
    _pieces: list[npt.NDArray[np.float32]] = attrs.field(factory=list, init=False)
    _buffer_start: int = attrs.field(default=0, init=False)  # absolute sample of the first buffered one
    _total: int = attrs.field(default=0, init=False)
    _next_frame: int = attrs.field(default=0, init=False)  # where the next chunk starts
    _latest: tuple[Window, npt.NDArray[np.float32]] | None = attrs.field(default=None, init=False)

    @property
    def total_samples(self) -> int:
        return self._total

    @property
    def buffered_samples(self) -> int:
        return self._total - self._buffer_start

    @property
    def next_frame(self) -> int:
        """Where the next chunk starts: every frame before it is committed."""
        return self._next_frame

    def feed(self, samples: npt.NDArray[Any]) -> None:
        """Append samples (copied: the caller may reuse its array)."""
        piece = np.array(samples, dtype=np.float32).reshape(-1)
        if piece.size:
            self._pieces.append(piece)
            self._total += piece.size

    def next_window(self) -> Window | None:
        """The next chunk, once it and its look-ahead have arrived, and at least one sample more.

        The extra sample makes a stream of exactly chunk + look-ahead one final window at `flush`,
        which is then the batch decode.
        """
        config = self.config
        start = self._next_frame
        stop = start + config.chunk_frames
        lookahead = stop + config.right_frames
        if self._total <= lookahead * config.frame_samples:
            return None
        return self._emit(start, stop, lookahead, lookahead * config.frame_samples, final=False)

    def flush(self) -> Window | None:
        """The rest as a final chunk with no look-ahead (end of stream or Finalize); None if no rest."""
        frame_samples = self.config.frame_samples
        start = self._next_frame
        if self._total <= start * frame_samples:
            return None
        stop = -(-self._total // frame_samples)
        return self._emit(start, stop, stop, self._total, final=True)

    def interim(self) -> tuple[Window, npt.NDArray[np.float32]] | None:
        """A window from the next chunk's start to the newest sample, with its usual left context, and
        its audio: decoded from a copy of the state, it refreshes the tentative tail. It is never
        committed and leaves the chunker as it was. None when no audio waits past the commits."""
        config, frame_samples = self.config, self.config.frame_samples
        start = self._next_frame
        if self._total <= start * frame_samples:
            return None
        first_frame = max(0, start - config.left_frames)
        stop = -(-self._total // frame_samples)
        window = Window(first_frame * frame_samples, self._total, first_frame, start, stop, stop, final=True)
        return window, self._buffered(window.start_sample, self._total)

    def cut(self, window: Window, frame: int) -> tuple[Window, npt.NDArray[np.float32]]:
        """End the stream at frame `frame` of the latest window `window`, which was not committed.

        Returns the final window that commits `window`'s chunk up to the cut (its audio is
        `samples()`), and the audio from the cut to the newest sample, which belongs to whatever
        comes next. The chunker is spent afterwards.
        """
        frame_samples = self.config.frame_samples
        if not window.commit_start <= frame <= window.tentative_stop:
            raise ValueError(
                f"cut at frame {frame} outside frames {window.commit_start}..{window.tentative_stop}"
            )
        cut = frame * frame_samples
        rest = np.concatenate(
            [
                self.samples(window)[cut - window.start_sample :],
                self._buffered(window.stop_sample, self._total),
            ]
        )
        final = attrs.evolve(window, stop_sample=cut, commit_stop=frame, tentative_stop=frame, final=True)
        self._latest = (final, self.samples(window)[: cut - window.start_sample])
        self._pieces, self._buffer_start, self._total = [], cut, cut
        return final, rest

    def samples(self, window: Window) -> npt.NDArray[np.float32]:
        """The audio to encode for `window`, which must be the latest window returned."""
        if self._latest is None or self._latest[0] is not window:
            raise ValueError(f"the samples of {window} are no longer buffered: only the latest window's are")
        return self._latest[1]

    def _buffered(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Samples `[start, stop)`, which must still be buffered."""
        if start < self._buffer_start:
            raise ValueError(f"sample {start} is no longer buffered (from {self._buffer_start})")
        if len(self._pieces) > 1:
            self._pieces = [np.concatenate(self._pieces)]
        buffer = self._pieces[0] if self._pieces else np.zeros(0, np.float32)
        return buffer[start - self._buffer_start : stop - self._buffer_start]

    def _emit(self, start: int, stop: int, lookahead: int, stop_sample: int, *, final: bool) -> Window:
        """Cut the window's samples out, then forget what the next window's left context does not need."""
        config, frame_samples = self.config, self.config.frame_samples
        first_frame = max(0, start - config.left_frames)
        window = Window(
            start_sample=first_frame * frame_samples,
            stop_sample=stop_sample,
            first_frame=first_frame,
            commit_start=start,
            commit_stop=stop,
            tentative_stop=lookahead,
            final=final,
        )
        buffer = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        offset = self._buffer_start
        self._latest = (window, buffer[window.start_sample - offset : stop_sample - offset])
        self._next_frame = stop
        keep = max(0, stop - config.left_frames) * frame_samples
        self._pieces = [buffer[keep - offset :].copy()] if keep < self._total else []
        self._buffer_start = min(keep, self._total)
        return window


@attrs.frozen
class Snapshot:
    """What a result shows: committed emissions then the tentative tail, and whether it is news."""

    committed: str
    transcription: str
    emissions: tuple[Emission, ...]
    changed: bool


@attrs.define
class TokenWeaver:
    """Committed emissions plus the latest tentative tail, woven on absolute frames.

    `transcription` always starts with `committed`: both are the detokenised pieces of one token
    sequence, of which the committed tokens are a prefix.
    """

    vocabulary: Vocabulary
    committed: list[Emission] = attrs.field(factory=list)
    tentative: tuple[Emission, ...] = ()
    _reported: tuple[str, str] | None = attrs.field(default=None, init=False)

    def commit(self, emissions: Sequence[Emission]) -> None:
        """Append emissions that never change again; they must not go back in time."""
        self._check_order(emissions)
        self.committed.extend(emissions)

    def propose(self, emissions: Sequence[Emission]) -> None:
        """Replace the tentative tail (empty for a final result)."""
        self._check_order(emissions)
        self.tentative = tuple(emissions)

    def snapshot(self) -> Snapshot:
        """The texts now; `changed` is False when they equal those of the previous snapshot."""
        emissions = (*self.committed, *self.tentative)
        committed = self.vocabulary.detokenize(e.token for e in self.committed)
        transcription = self.vocabulary.detokenize(e.token for e in emissions)
        changed = self._reported != (committed, transcription)
        self._reported = (committed, transcription)
        return Snapshot(committed, transcription, emissions, changed)

    def _check_order(self, emissions: Sequence[Emission]) -> None:
        last = self.committed[-1].frame if self.committed else 0
        for emission in emissions:
            if emission.frame < last:
                raise ValueError(f"emission at frame {emission.frame} comes before frame {last}")
            last = emission.frame
