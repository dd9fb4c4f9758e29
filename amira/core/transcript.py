"""Turning emitted tokens into text, words and timings: the results of batch and streaming."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from amira.core.decoding import Emission
from amira.core.vocabulary import Vocabulary


@attrs.frozen
class Word:
    """A word and its time span in seconds.

    It starts at the frame of its first token and ends at the end of the frame of its last token.
    """

    word: str
    start: float
    end: float


@attrs.frozen
class Transcript:
    text: str
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...]
    words: tuple[Word, ...]
    audio_samples: int
    audio_seconds: float
    features_length: int
    encoded_length: int


def words_from_emissions(
    vocabulary: Vocabulary, emissions: Sequence[Emission], frame_seconds: float
) -> tuple[Word, ...]:
    tokens = [e.token for e in emissions]
    return tuple(
        Word(text, emissions[first].frame * frame_seconds, (emissions[last].frame + 1) * frame_seconds)
        for text, first, last in vocabulary.words(tokens)
    )


def build_transcript(
    vocabulary: Vocabulary,
    emissions: Sequence[Emission],
    *,
    frame_seconds: float,
    audio_samples: int,
    sample_rate: int,
    features_length: int,
    encoded_length: int,
) -> Transcript:
    tokens = tuple(e.token for e in emissions)
    return Transcript(
        text=vocabulary.detokenize(tokens),
        tokens=tokens,
        token_frames=tuple(e.frame for e in emissions),
        words=words_from_emissions(vocabulary, emissions, frame_seconds),
        audio_samples=audio_samples,
        audio_seconds=audio_samples / sample_rate,
        features_length=features_length,
        encoded_length=encoded_length,
    )


def shift_words(words: Sequence[Word], seconds: float) -> tuple[Word, ...]:
    """Words timed from the start of a segment, timed from the start of the stream instead."""
    return tuple(attrs.evolve(w, start=w.start + seconds, end=w.end + seconds) for w in words)


def segment_confidence(words: Sequence[Word]) -> float | None:
    """A segment's confidence, aggregated from its words' (issue #13, item 5).

    The hook that `metadata.segments[].confidence` is written from: None (JSON null) until words carry
    a confidence from the joint's softmax.
    """
    return None


class ResultStatus(enum.Enum):
    """Where a stream result stands in its segment's and the stream's life.

    `PARTIAL`: the open segment so far, its tail may still change; `FINAL`: a segment's last result
    (an endpoint, its maximum length, a Finalize or the end of the stream ended it), the stream goes
    on; `COMPLETE`: the last result of the stream, for the whole stream, which every stream gets
    exactly once.
    """

    PARTIAL = "partial"
    FINAL = "final"
    COMPLETE = "complete"


class SegmentEnd(enum.Enum):
    """What ended a segment: `ENDPOINT` is the speaker's pause (the wire's `speech_final`),
    `FINALIZE` the client's Finalize (`from_finalize`)."""

    ENDPOINT = "endpoint"
    MAX_LENGTH = "max_length"
    FINALIZE = "finalize"
    END_OF_STREAM = "end_of_stream"


@attrs.frozen
class SegmentSpan:
    """A segment's id and the audio it covers so far, in seconds from the start of the stream."""

    id: int
    start: float
    end: float


@attrs.frozen
class Segment:
    """A finished segment: its span, text, tokens, words and what ended it. Kept until the stream's
    `COMPLETE` result, which lists them all."""

    span: SegmentSpan
    text: str
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...]
    words: tuple[Word, ...]
    ended_by: SegmentEnd

    @property
    def confidence(self) -> float | None:
        return segment_confidence(self.words)


@attrs.frozen
class StreamResult:
    """A partial or final result of one segment, or the `COMPLETE` result of the whole stream.

    `tokens` and `token_frames` are those of `transcription` (committed, then the tentative tail of
    a partial). Times are from the start of the stream: token frames count encoder frames (a segment
    that began after a Finalize, at a sample that need not fall on a frame boundary, is offset by
    the whole frames before it; its `words` are exact). `words` are only filled in finals.
    `segment` is the segment a partial or segment final belongs to, `ended_by` what ended it
    (segment finals only), and `segments` every finished segment (`COMPLETE` only).
    `audio_seconds` is the audio the stream has received; `processing_time_ms` the inference time
    spent on the window (or flush) behind the result.
    """

    status: ResultStatus
    transcription: str
    committed: str
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...]
    words: tuple[Word, ...]
    audio_seconds: float
    processing_time_ms: float
    segment: SegmentSpan | None = None
    ended_by: SegmentEnd | None = None
    segments: tuple[Segment, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.status is not ResultStatus.PARTIAL

    @property
    def end_of_stream(self) -> bool:
        return self.status is ResultStatus.COMPLETE

    @property
    def speech_final(self) -> bool:
        return self.ended_by is SegmentEnd.ENDPOINT

    @property
    def from_finalize(self) -> bool:
        return self.ended_by is SegmentEnd.FINALIZE
