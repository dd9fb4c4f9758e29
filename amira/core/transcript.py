"""Turning emitted tokens into text, words and timings: the results of batch and streaming."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from amira.core.decoding import Emission
from amira.core.vocabulary import Vocabulary


@attrs.frozen
class Word:
    """A word, its time span in seconds and the model's confidence in it, in [0, 1].

    `words_from_emissions` says how the times and the confidence are made.
    """

    word: str
    start: float
    end: float
    confidence: float


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


def token_confidence(probability: float, vocab_size: int) -> float:
    """NeMo's `max_prob` confidence (alpha 1) of a token the joint gave `probability`.

    `(V * p - 1) / (V - 1)`: the probability of the argmax, `1/V <= p <= 1`, mapped linearly onto
    [0, 1], so that 0 means a uniform distribution over the V tokens (blank included) and 1
    certainty. It is a monotone map of `p`: rankings, and so ROC curves, are those of `p`.
    """
    return min(1.0, max(0.0, (vocab_size * probability - 1.0) / (vocab_size - 1)))


def word_confidence(token_confidences: Sequence[float]) -> float:
    """A word's confidence: the least confident of its tokens (NeMo's default aggregation).

    The minimum flags a word when any of its pieces is doubtful, and, unlike the product, does not
    rank long words below short ones merely for having more pieces (README, "Confidence").
    """
    return min(token_confidences)


def segment_confidence(words: Sequence[Word]) -> float:
    """A segment's (or a whole transcript's) confidence: the mean of its words' confidences.

    The mean estimates the share of its words that are right when word confidences are calibrated,
    and separated segments with errors from exact ones better than the minimum on the demo model
    (README, "Confidence"). A segment without words has confidence 0, as nothing was recognised.
    """
    return sum(w.confidence for w in words) / len(words) if words else 0.0


def word_frames(
    emissions: Sequence[Emission], spans: Sequence[tuple[int, int]], end_frame: int
) -> list[tuple[int, int]]:
    """`(start, end)` frames (end exclusive) of words whose tokens are `emissions[first..last]`.

    * A token emitted at frame t with TDT duration d covers frames t .. t+d-1 (at least frame t);
      an RNN-T token covers frame t.
    * A word starts at the frame of its first token; where several words were emitted on one frame
      (RNN-T emits up to `max_symbols_per_step` tokens per frame, TDT tokens of duration 0), the later
      ones are moved forward so that every word starts at least one frame after the one before it;
      words moved past the last frame `end_frame - 1` are moved back again, one frame apart, unless
      the span holds more words than frames.
    * A word ends at the end of what its last token covers, but at least one frame after its start and
      at most at the next word's start (at `end_frame` for the last word, when it starts before it).
    """
    starts: list[int] = []
    for first, _ in spans:
        starts.append(max(emissions[first].frame, starts[-1] + 1) if starts else emissions[first].frame)
    if len(starts) <= end_frame:
        bound = end_frame
        for index in range(len(starts) - 1, -1, -1):
            bound = starts[index] = min(starts[index], bound - 1)
    frames = []
    for index, (start, (_, last)) in enumerate(zip(starts, spans, strict=True)):
        token = emissions[last]
        covered = token.frame + max(token.duration, 1)
        limit = starts[index + 1] if index + 1 < len(starts) else max(end_frame, start + 1)
        frames.append((start, min(max(covered, start + 1), limit)))
    return frames


def words_from_emissions(
    vocabulary: Vocabulary, emissions: Sequence[Emission], frame_seconds: float, end_frame: int
) -> tuple[Word, ...]:
    """The words of `emissions`, decoded from frames before `end_frame`, with times and confidences.

    Times are whole encoder frames times `frame_seconds` (`word_frames` says which frames); the
    confidence is `word_confidence` of the tokens' `token_confidence`.
    """
    groups = vocabulary.words([e.token for e in emissions])
    frames = word_frames(emissions, [(first, last) for _, first, last in groups], end_frame)
    return tuple(
        Word(
            text,
            start * frame_seconds,
            end * frame_seconds,
            word_confidence(
                [token_confidence(e.probability, vocabulary.size) for e in emissions[first : last + 1]]
            ),
        )
        for (text, first, last), (start, end) in zip(groups, frames, strict=True)
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
        words=words_from_emissions(vocabulary, emissions, frame_seconds, encoded_length),
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
