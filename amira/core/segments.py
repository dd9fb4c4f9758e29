"""Segments (utterances) of a stream, sans-IO: when one ends, where its audio is cut, and where the
next one starts.

A stream is a sequence of segments with ids 0, 1, 2, ... A segment ends

* at an **endpoint**: a run of at least `endpointing` ms of non-speech after speech. A frame is
  speech when the decoder emitted a token at it, or when it is loud (the energy gate below);
* at its **maximum length**: `max_segment_secs` of audio since its first token, checked on
  committed frames (so a segment may run one chunk past it), cut at the quietest frame of the chunk;
* at a client's Finalize, or at the end of the stream (the session decides those).

Why both the decoder and the energy: the decoder alone is blind to where a word ends. Transducers
emit a word's tokens anywhere inside it (the demo model at its start), so the blank frames after the
last token include the rest of the last word, and a run of blanks also opens inside long words.
A frame is loud when its RMS exceeds both `GATE_OF_PEAK` of the segment's loudest frame (-20 dB)
and `GATE_OF_FLOOR` times its quietest frame (so that steady background noise counts as
non-speech). Measured on the demo model's held-out long recordings and the real recordings joined
with pauses, this finds more pauses and splits fewer utterances than blank runs alone (README).

Endpoints are looked for on the frames of each streaming window: its committed chunk and its
look-ahead, decoded from a copy of the state. The look-ahead lets a segment that ends inside its
first chunk be cut before anything was committed, so that it is decoded, from a fresh state, as the
batch decode of its own audio: a pause is where normalisation and encoder context should stop
(design notes §6). The segment keeps `TRAILING_FRAMES` of the non-speech after its last speech.

Between two segments, and at the start of a stream, the audio is searched for speech
(`SpeechOnset`) and not decoded: the preprocessor normalises each window on its own, and a window of
silence alone makes the model invent words. The next segment starts `PREROLL_FRAMES` before the
first loud frame (the first segment at the stream's start, unless the silence there is longer than
the first window). So segments need not tile the stream: the silence between them belongs to
neither (every sample is still counted in the stream's audio, and quiet speech is not skipped: a
frame louder than -30 dB under the speech before it and 6 dB over the pause's floor opens the next
segment). A segment that gets no token before `endpointing` of non-speech (a cough or a door
opened it) is dropped unreported. Without endpointing there is no search: segments follow each
other.

Until a quiet frame has set a segment's floor (speech from its first sample on), the energy gate
finds nothing loud, and only tokens count as speech.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from amira.core.cache_aware import CacheAwareChunker, CacheAwareSpec
from amira.core.decoding import Emission
from amira.core.transcript import SegmentSpan
from amira.core.vocabulary import Vocabulary
from amira.core.windowing import Chunker, StreamingConfig, TokenWeaver

GATE_OF_PEAK = 0.1  # a frame quieter than -20 dB under the segment's loudest one is not speech ...
GATE_OF_FLOOR = 2.0  # ... nor one within 6 dB of its quietest one (steady noise)
GATE_OF_ONSET = 0.03  # speech resumes with a frame louder than -30 dB under the last segment's loudest
TRAILING_FRAMES = 1  # non-speech frames after a segment's last speech that stay with it
PREROLL_FRAMES = 2  # frames before the first loud one that a segment starts with
MIN_ENDPOINTING_MS = 10
MAX_ENDPOINTING_MS = 60_000
MIN_SEGMENT_SECS = 1.0
MAX_SEGMENT_SECS = 300.0  # bounds the size of every partial and segment final
DEFAULT_ENDPOINTING_MS = 640
DEFAULT_MAX_SEGMENT_SECS = 30.0
DEFAULT_INTERIM_SECS = 0.8


@attrs.frozen
class SegmentOptions:
    """How a stream is cut into segments and what it reports, as configured (server settings, query).

    `endpointing_ms` None: no endpoints (segments end at Finalize, the end, or their maximum
    length). `interim_results` False: no partials at all, only segment finals and `COMPLETE`.
    `interim_secs` None: the tentative tail only comes from each window's look-ahead; otherwise it
    is refreshed from the newest audio whenever that much audio arrived since it was last decoded.
    """

    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS
    max_segment_secs: float = DEFAULT_MAX_SEGMENT_SECS
    interim_results: bool = True
    interim_secs: float | None = DEFAULT_INTERIM_SECS


@attrs.frozen
class SegmentConfig:
    """`SegmentOptions` in a model set's encoder frames and samples."""

    endpointing_frames: int | None
    max_frames: int
    partials: bool
    interim_samples: int | None

    @classmethod
    def from_options(cls, options: SegmentOptions, frame_samples: int, sample_rate: int) -> SegmentConfig:
        frame_ms = 1000 * frame_samples / sample_rate
        endpointing = options.endpointing_ms
        interim = options.interim_secs if options.interim_results else None
        return cls(
            endpointing_frames=None if endpointing is None else max(2, round(endpointing / frame_ms)),
            max_frames=max(1, round(1000 * options.max_segment_secs / frame_ms)),
            partials=options.interim_results,
            interim_samples=None if not interim else max(1, round(interim * sample_rate)),
        )


def frame_energies(samples: npt.NDArray[np.float32], frame_samples: int) -> npt.NDArray[np.float64]:
    """RMS of each encoder frame's samples (the last frame may be short)."""
    frames = -(-samples.size // frame_samples)
    padded = np.zeros(frames * frame_samples, np.float32)
    padded[: samples.size] = samples
    squares = np.square(padded.reshape(frames, frame_samples), dtype=np.float64)
    counts = np.full(frames, frame_samples, np.float64)
    if frames:
        counts[-1] = samples.size - (frames - 1) * frame_samples
    return np.asarray(np.sqrt(squares.sum(axis=1) / counts), dtype=np.float64)


class SegmentPhase(enum.Enum):
    """`AWAITING_SPEECH`: no token decoded yet, so the segment cannot end at an endpoint (it is
    dropped if it stays without speech for `endpointing`); `SPEECH`: tokens were decoded, and the
    non-speech after the last speech is counted."""

    AWAITING_SPEECH = "awaiting_speech"
    SPEECH = "speech"


class BoundaryKind(enum.Enum):
    """Why the end rules stop a segment: `ENDPOINT` and `MAX_LENGTH` end it with a final;
    `NO_SPEECH` drops a segment that never had speech (a noise opened it), with nothing to report."""

    ENDPOINT = "endpoint"
    MAX_LENGTH = "max_length"
    NO_SPEECH = "no_speech"


@attrs.frozen
class Boundary:
    """Where a segment stops: frames `[0, cut)` are its own; from frame `resume` on (at or after the
    cut) the audio is searched for the next speech. Frames between them were judged non-speech."""

    kind: BoundaryKind
    cut: int
    resume: int


@attrs.frozen
class _Trace:
    """What the end rules know after some frames: the phase, the first token's frame, the last
    speech frame, and the loudest and quietest frame energies."""

    phase: SegmentPhase = SegmentPhase.AWAITING_SPEECH
    first_token: int | None = None
    last_speech: int = -1
    peak: float = 0.0
    floor: float = math.inf

    def step(self, frame: int, token: bool, energy: float) -> _Trace:
        peak, floor = max(self.peak, energy), min(self.floor, energy)
        loud = energy > max(GATE_OF_PEAK * peak, GATE_OF_FLOOR * floor)
        phase, first = self.phase, self.first_token
        if token and first is None:
            phase, first = SegmentPhase.SPEECH, frame
        last = frame if token or loud else self.last_speech
        return _Trace(phase, first, last, peak, floor)


@attrs.define
class Endpointer:
    """One segment's end rules, fed the frames of each window in order.

    Only committed frames move its state on; look-ahead frames are judged from a copy, and judged
    again, committed, with the next window.
    """

    endpointing_frames: int | None
    max_frames: int
    _trace: _Trace = attrs.field(factory=_Trace, init=False)

    @property
    def phase(self) -> SegmentPhase:
        return self._trace.phase

    @property
    def speech_level(self) -> float:
        """The RMS of the segment's loudest committed frame."""
        return self._trace.peak

    def observe(
        self,
        emissions: Sequence[Emission],
        energies: npt.NDArray[np.float64],
        start: int,
        commit_stop: int,
    ) -> Boundary | None:
        """Frames `start, start + 1, ...` of a window (`energies[i]` is frame `start + i`'s RMS):
        committed before `commit_stop`, look-ahead after; `emissions` are the window's committed
        then tentative tokens. Returns where the segment stops, or None."""
        token_frames = {e.frame for e in emissions}
        trace = self._trace
        for index, energy in enumerate(energies):
            frame = start + index
            if frame == commit_stop:
                self._trace = trace
                if (boundary := self._max_length(energies, start, commit_stop)) is not None:
                    return boundary
            trace = trace.step(frame, frame in token_frames, float(energy))
            if (boundary := self._endpoint(trace, frame, start)) is not None:
                self._trace = trace
                return boundary
        if start + len(energies) <= commit_stop:
            self._trace = trace
            return self._max_length(energies, start, commit_stop)
        return None

    def _endpoint(self, trace: _Trace, frame: int, start: int) -> Boundary | None:
        run = self.endpointing_frames
        if run is None or frame - trace.last_speech < run:
            return None
        if trace.phase is SegmentPhase.AWAITING_SPEECH:
            return Boundary(BoundaryKind.NO_SPEECH, frame + 1, frame + 1)
        cut = max(start, trace.last_speech + 1 + TRAILING_FRAMES)
        return Boundary(BoundaryKind.ENDPOINT, cut, max(cut, frame + 1))

    def _max_length(self, energies: npt.NDArray[np.float64], start: int, commit_stop: int) -> Boundary | None:
        """Past the maximum length, cut at the quietest frame of the committed chunk."""
        first = self._trace.first_token
        if first is None or commit_stop - first < self.max_frames or commit_stop <= start:
            return None
        cut = start + int(np.argmin(energies[: commit_stop - start]))
        return Boundary(BoundaryKind.MAX_LENGTH, cut, cut)


@attrs.define
class SpeechOnset:
    """Between two segments: skips non-speech until speech resumes, and says where the next segment
    starts, `preroll_frames` before the first loud frame (but not before where it began looking).

    A frame is loud when its RMS exceeds both `GATE_OF_ONSET` of `reference` (the speech level of
    the segment before) and `GATE_OF_FLOOR` times the quietest frame seen here. Frames are counted
    from `position`, the stream sample where the search began; only the pre-roll is buffered, except
    that a loud frame within the first `lead_frames` starts the segment at `position` itself (at
    the start of a stream: only a silence longer than the first window is skipped).
    """

    position: int
    reference: float
    frame_samples: int
    preroll_frames: int
    lead_frames: int = 0
    _buffer: npt.NDArray[np.float32] = attrs.field(factory=lambda: np.zeros(0, np.float32), init=False)
    _skipped: int = attrs.field(default=0, init=False)  # frames dropped since the search began
    _floor: float = attrs.field(default=math.inf, init=False)

    def feed(self, samples: npt.NDArray[np.float32]) -> tuple[int, npt.NDArray[np.float32]] | None:
        """None while there is no speech; else the stream sample where the next segment starts and
        its audio from there (all that was fed since)."""
        frame_samples = self.frame_samples
        buffer = np.concatenate([self._buffer, samples]) if self._buffer.size else samples
        whole = buffer.size // frame_samples
        for index, energy in enumerate(frame_energies(buffer[: whole * frame_samples], frame_samples)):
            self._floor = min(self._floor, float(energy))
            if energy > max(GATE_OF_ONSET * self.reference, GATE_OF_FLOOR * self._floor):
                lead = self._skipped + index < self.lead_frames
                start = 0 if lead else max(0, index - self.preroll_frames) * frame_samples
                return self.position + start, buffer[start:]
        keep = 0
        if self._skipped + whole >= self.lead_frames:
            keep = max(0, whole - self.preroll_frames) * frame_samples
        self._buffer, self.position = buffer[keep:].copy(), self.position + keep
        self._skipped += keep // frame_samples
        return None

    def within_lead(self) -> tuple[int, npt.NDArray[np.float32]] | None:
        """The audio so far and where it starts, while it is all within the lead: a stream that ends
        (or is finalized) this early gets it decoded, quiet or not."""
        frames = self._skipped + self._buffer.size // self.frame_samples
        if not self._buffer.size or frames >= self.lead_frames:
            return None
        return self.position, self._buffer


@attrs.define
class OpenSegment:
    """The segment being decoded: its windows (or, for a cache-aware set, its encoder chunks), its
    tokens, its end rules.

    Frames and samples count from the segment's start, `start_sample` in the stream. `tail_end` is
    the segment sample up to which the tentative tail was decoded; an interim refresh is due once
    `interim_samples` more have arrived. `decoded_frames` is where committed decoding stopped: the
    end of the segment's last word. A cache-aware segment is encoded from fresh caches from its
    start, and commits every chunk whole: it has no tentative tail and no refreshes.
    """

    id: int
    start_sample: int
    chunker: Chunker | CacheAwareChunker
    weaver: TokenWeaver
    endpointer: Endpointer
    frame_samples: int
    tail_end: int = 0
    decoded_frames: int = 0

    @classmethod
    def open(
        cls,
        id: int,
        start_sample: int,
        streaming: StreamingConfig,
        config: SegmentConfig,
        vocabulary: Vocabulary,
        cache_aware: CacheAwareSpec | None = None,
    ) -> OpenSegment:
        return cls(
            id,
            start_sample,
            Chunker(streaming) if cache_aware is None else CacheAwareChunker(cache_aware),
            TokenWeaver(vocabulary),
            Endpointer(config.endpointing_frames, config.max_frames),
            streaming.frame_samples,
        )

    def refresh_due(self, interim_samples: int | None) -> bool:
        chunker = self.chunker
        return (
            isinstance(chunker, Chunker)
            and interim_samples is not None
            and chunker.total_samples - self.tail_end >= interim_samples
            and chunker.total_samples > chunker.next_frame * self.frame_samples
        )

    def span(self, stop_sample: int, sample_rate: int) -> SegmentSpan:
        """The segment's span up to its sample `stop_sample`, in stream seconds."""
        return SegmentSpan(
            self.id, self.start_sample / sample_rate, (self.start_sample + stop_sample) / sample_rate
        )

    @property
    def frame_offset(self) -> int:
        """Whole encoder frames from the start of the stream to the segment's start."""
        return self.start_sample // self.frame_samples
