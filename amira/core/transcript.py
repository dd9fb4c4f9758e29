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


class ResultStatus(enum.Enum):
    """Where a stream result stands in the stream's life.

    `PARTIAL`: may still change; `FINAL`: a Finalize committed everything so far, the stream goes
    on; `COMPLETE`: the last result of the stream, which every stream gets exactly once.
    """

    PARTIAL = "partial"
    FINAL = "final"
    COMPLETE = "complete"


@attrs.frozen
class StreamResult:
    """A partial or final result, always for the whole stream so far.

    `tokens` and `token_frames` are those of `transcription` (committed, then the tentative tail of
    a partial); `words` are only filled in final results. `processing_time_ms` is the inference
    time spent on the window (or flush) behind it.
    """

    status: ResultStatus
    transcription: str
    committed: str
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...]
    words: tuple[Word, ...]
    audio_seconds: float
    processing_time_ms: float

    @property
    def is_final(self) -> bool:
        return self.status is not ResultStatus.PARTIAL

    @property
    def end_of_stream(self) -> bool:
        return self.status is ResultStatus.COMPLETE
