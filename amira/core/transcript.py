"""Turning emitted tokens into text, words and timings."""

from __future__ import annotations

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

    def to_json(self) -> dict[str, object]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


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

    def to_json(self, model: str, processing_ms: float) -> dict[str, object]:
        """The batch endpoint's response document (api.md)."""
        return {
            "transcription": self.text,
            "status": "COMPLETE",
            "metadata": {
                "model": model,
                "audio_length_samples": self.audio_samples,
                "audio_seconds": round(self.audio_seconds, 3),
                "features_length": self.features_length,
                "encoded_length": self.encoded_length,
                "tokens": list(self.tokens),
                "words": [w.to_json() for w in self.words],
                "processing_time_ms": round(processing_ms, 1),
            },
        }


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
