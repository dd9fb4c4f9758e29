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
    """A decoded recording: `tokens`, the frames they were emitted at and the probability the joint gave
    each (`Emission.probability`), the words, and the lengths behind them."""

    text: str
    tokens: tuple[int, ...]
    token_frames: tuple[int, ...]
    token_probabilities: tuple[float, ...]
    words: tuple[Word, ...]
    audio_samples: int
    audio_seconds: float
    features_length: int
    encoded_length: int


def token_confidence(emission: Emission, vocab_size: int) -> float:
    """How sure the joint was of which token it emitted: NeMo's `max_prob`, among the non-blank tokens.

    At the frame where a transducer emits a token, the blank competes over *when* to emit, not over
    *what*; so the blank is taken out of the softmax: `p' = p / (1 - p_blank)` (`Emission` defines
    both) is the token's probability among the N = V - 1 non-blank tokens, at least 1/N since it is
    their argmax, and NeMo's max_prob (alpha 1) maps it linearly onto [0, 1]: `(N p' - 1) / (N - 1)`.
    0: the joint spread its non-blank mass evenly; 1: it gave all of it to the token. On the demo
    model this ranks right above wrong words better than max_prob over all V tokens, blank included,
    and no worse than NeMo's entropy-based measures (Tsallis, Rényi or Gibbs entropy with a parameter
    alpha, over all V or among the non-blank tokens) or than taking in the blank frames around the
    token, which would need more of each frame than these two probabilities (README, "Confidence",
    `python -m bench.confidence_measures`).
    """
    others = vocab_size - 1
    if others < 2:
        return 1.0  # a single non-blank token: nothing to be unsure about
    nonblank = emission.probability / (1.0 - emission.blank_probability)
    return min(1.0, max(0.0, (others * nonblank - 1.0) / (others - 1)))


def word_confidence(token_confidences: Sequence[float]) -> float:
    """A word's confidence: that of its least sure token (NeMo's default aggregation).

    The minimum flags a word when any of its pieces is doubtful and, unlike the product, does not
    rank long words below short ones for their number of pieces. (Every piece of the demo model's
    vocabulary is a whole word, so no measurement here could choose between them.)
    """
    return min(token_confidences)


def segment_confidence(words: Sequence[Word]) -> float:
    """A segment's (or a whole transcript's) confidence: the mean of its words' confidences.

    The mean follows a segment's word accuracy far better than the minimum or the product (Pearson
    0.70 against 0.46 and 0.51 on the demo model's harder set), and separates segments with errors
    from exact ones as well as the product among segments of similar length; the product wins across
    lengths only because it shrinks with every word (README, "Confidence"). A segment without words
    has confidence 0: nothing was recognised.
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
            word_confidence([token_confidence(e, vocabulary.size) for e in emissions[first : last + 1]]),
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
        token_probabilities=tuple(e.probability for e in emissions),
        words=words_from_emissions(vocabulary, emissions, frame_seconds, encoded_length),
        audio_samples=audio_samples,
        audio_seconds=audio_samples / sample_rate,
        features_length=features_length,
        encoded_length=encoded_length,
    )


def shift_words(words: Sequence[Word], seconds: float) -> tuple[Word, ...]:
    """Words timed from the start of a segment, timed from the start of the stream instead."""
    return tuple(attrs.evolve(w, start=w.start + seconds, end=w.end + seconds) for w in words)


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
    def confidence(self) -> float:
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
