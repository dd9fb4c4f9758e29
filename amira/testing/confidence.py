"""How well word confidences separate right from wrong words: the audio, the scoring, the ROC area.

The demo model gets only a few words wrong on its clean held-out synthetic speech (7 of 296 on the
12 recordings of `tests/data/held_out`), too few for a meaningful ROC curve, so a **harder set**
adds white noise (10, 5 and 0 dB SNR) and speed changes (0.8, 1.25 and 1.4 times, pitch moving
with the speed) to the held-out and the real recordings of the model's domain. **Babble** (LibriVox
speech mixed in at 10, 5 and 0 dB) is measured beside it, not in it: speech outside the model's
56 words, which it maps onto its vocabulary, often confidently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio
from amira.core.transcript import segment_confidence
from amira.recognizer import Recognizer
from amira.testing.long_audio import held_out
from amira.testing.recordings import LIBRIVOX, REAL_DOMAIN, read_recording
from amira.testing.text import correct_words, levenshtein

Samples = npt.NDArray[np.float32]
Case = tuple[str, Samples, str]  # name, 16 kHz samples, reference text
Condition = Callable[[Samples, int], Samples]  # (samples, seed) -> altered samples
SNRS_DB = (10, 5, 0)
SPEEDS = (0.8, 1.25, 1.4)


def domain_cases() -> list[Case]:
    """The held-out synthetic long recordings, then the real recordings of the demo model's domain."""
    return [*held_out(), *((path.name, read_recording(path), text) for path, text in REAL_DOMAIN)]


def _mixed(samples: Samples, noise: npt.NDArray[np.floating[Any]], snr_db: float) -> Samples:
    """`samples` plus `noise` scaled to `snr_db` below the samples' mean power."""
    gain = np.sqrt(np.mean(samples**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    mixed: Samples = (samples + gain * noise).astype(np.float32)
    return mixed


def white_noise(snr_db: float) -> Condition:
    def apply(samples: Samples, seed: int) -> Samples:
        return _mixed(samples, np.random.default_rng(seed).standard_normal(samples.size), snr_db)

    return apply


def speed(factor: float) -> Condition:
    """Played `factor` times as fast (tempo and pitch together, as a tape would)."""

    def apply(samples: Samples, seed: int) -> Samples:
        return audio.resample(samples, round(audio.MODEL_SAMPLE_RATE * factor))

    return apply


def babble(snr_db: float) -> Condition:
    def apply(samples: Samples, seed: int) -> Samples:
        speech = np.concatenate([read_recording(path) for path in LIBRIVOX])
        start = np.random.default_rng(seed).integers(0, speech.size)
        return _mixed(samples, np.resize(np.roll(speech, -start), samples.size), snr_db)

    return apply


def clean(samples: Samples, seed: int) -> Samples:
    return samples


HARDER: dict[str, Condition] = {
    "clean": clean,
    **{f"white noise {snr} dB": white_noise(snr) for snr in SNRS_DB},
    **{f"speed x{factor:g}": speed(factor) for factor in SPEEDS},
}
BABBLE: dict[str, Condition] = {f"babble {snr} dB": babble(snr) for snr in SNRS_DB}


@attrs.frozen
class Scored:
    """One recording's words as recognised: confidence and rightness per word, and the whole."""

    confidences: tuple[float, ...]
    all_token_confidences: tuple[float, ...]  # the baseline: NeMo's max_prob over all V, blank included
    right: tuple[bool, ...]
    segment_confidence: float
    word_accuracy: float  # 1 - WER against the reference
    exact: bool


async def score(
    recognizer: Recognizer, cases: Sequence[Case], condition: Condition, model: str
) -> list[Scored]:
    """Each case altered by `condition` (seeded by its position), transcribed in batch and aligned."""
    out = []
    vocabulary = recognizer.engine.model_set(model).model_set.vocabulary
    v = vocabulary.size
    for seed, (_, samples, reference) in enumerate(cases):
        transcript = await recognizer.transcribe(condition(samples, seed), model)
        words, expected = [w.word for w in transcript.words], reference.split()
        probabilities = transcript.token_probabilities
        out.append(
            Scored(
                tuple(w.confidence for w in transcript.words),
                tuple(
                    min((v * p - 1) / (v - 1) for p in probabilities[first : last + 1])
                    for _, first, last in vocabulary.words(transcript.tokens)
                ),
                tuple(correct_words(words, expected)),
                segment_confidence(transcript.words),
                1 - levenshtein(words, expected) / len(expected),
                words == expected,
            )
        )
    return out


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative
    (ties count half; the Mann-Whitney U statistic over their product); NaN without both kinds."""
    values = np.asarray(scores, np.float64)
    labels = np.asarray(positive, bool)
    pos, neg = values[labels], values[~labels]
    if not pos.size or not neg.size:
        return float("nan")
    ranks = _midranks(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _midranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]
