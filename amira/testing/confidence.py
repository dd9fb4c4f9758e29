"""How well word confidences separate right from wrong words: the audio, the scoring, the ROC area.

The demo model gets only a few words wrong on its clean held-out synthetic speech (7 of 296 on the
12 recordings of `tests/data/held_out`), too few for a meaningful ROC curve, so a **harder set**
adds white noise (10, 5 and 0 dB SNR) and speed changes (0.8, 1.25 and 1.4 times, pitch moving
with the speed) to the held-out and the real recordings of the model's domain. **Babble** (LibriVox
speech mixed in at 10, 5 and 0 dB) is measured beside it, not in it: speech outside the model's
56 words, which it maps onto its vocabulary, often confidently.

The candidate measures that `token_confidence` was chosen against (NeMo's entropy-based ones, the
blank frames around a token) are computed from the logits a `LookingDecoder` keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import numpy as np
import numpy.typing as npt

from amira.core import audio
from amira.core.decoding import GreedyDecoder
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


# Candidate token confidences, measured against `token_confidence` by `python -m bench.confidence_measures`
# (README, "Confidence"). Each maps log-probabilities `x` (rows of a log-softmax over v classes, [n, v])
# to n values in [0, 1]: 0 for the uniform distribution, 1 for a certain one. The entropies are NeMo's
# (`ConfidenceMethodConfig`, Laptev & Ginsburg 2023), linearly normalised: 1 - H / H(uniform); NeMo's
# exponential normalisation is a monotone function of the same H, so it ranks tokens alike.
LogProbs = npt.NDArray[np.float64]
Measure = Callable[[LogProbs], npt.NDArray[np.float64]]


def log_softmax(logits: npt.NDArray[np.floating[Any]]) -> LogProbs:
    """The log-softmax of each row, in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: LogProbs = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def max_prob(x: LogProbs) -> npt.NDArray[np.float64]:
    """NeMo's max_prob: `(v max_i p_i - 1) / (v - 1)` (what `token_confidence` takes among the non-blanks)."""
    v = x.shape[-1]
    out: npt.NDArray[np.float64] = np.clip((v * np.exp(x.max(axis=-1)) - 1) / (v - 1), 0.0, 1.0)
    return out


def tsallis(alpha: float) -> Measure:
    """Tsallis entropy `H = (1 - sum_i p_i^a) / (a - 1)`, `(v^(1-a) - 1) / (1 - a)` at the uniform:
    `1 - H / H(uniform) = 1 - (1 - sum_i p_i^a) / (1 - v^(1-a))`, for 0 < a < 1. Rényi's entropy
    `log(sum_i p_i^a) / (1 - a)` is a monotone function of the same sum: it ranks tokens alike."""
    if not 0 < alpha < 1:
        raise ValueError("the Tsallis measure takes 0 < alpha < 1 (alpha 1 is Gibbs's)")

    def measure(x: LogProbs) -> npt.NDArray[np.float64]:
        v = x.shape[-1]
        total = np.exp(alpha * x).sum(axis=-1)
        out: npt.NDArray[np.float64] = np.clip(1 - (1 - total) / (1 - v ** (1 - alpha)), 0.0, 1.0)
        return out

    return measure


def gibbs(alpha: float) -> Measure:
    """NeMo's Gibbs entropy with a parameter: `H = -sum_i p_i^a ln p_i`, `v^(1-a) ln v` at the uniform:
    `1 - H / H(uniform) = 1 + sum_i p_i^a ln p_i / (v^(1-a) ln v)`; a = 1 is Shannon's entropy. (NeMo's
    docstring writes `-sum_i p_i^a ln p_i^a`, a times this H: the normalised value is the same.)"""
    if not 0 < alpha <= 1:
        raise ValueError("the Gibbs measure takes 0 < alpha <= 1")

    def measure(x: LogProbs) -> npt.NDArray[np.float64]:
        v = x.shape[-1]
        negative = (np.exp(alpha * x) * x).sum(axis=-1)
        out: npt.NDArray[np.float64] = np.clip(1 + negative / (v ** (1 - alpha) * np.log(v)), 0.0, 1.0)
        return out

    return measure


@attrs.define
class LookingDecoder(GreedyDecoder):
    """A `GreedyDecoder` that keeps the token logits (blank included) of every frame it looks at, to try
    confidence measures on; it decodes exactly as `GreedyDecoder` does.

    `looked` holds them in order: the blank frames walked, then the frame a token is emitted at (again
    for each further token emitted on it); `emitted[k]` is the index in `looked` of token k's frame.
    """

    looked: list[npt.NDArray[np.float32]] = attrs.field(factory=list)
    emitted: list[int] = attrs.field(factory=list)

    def receive(
        self, logits: npt.NDArray[np.float32], h: npt.NDArray[np.float32], c: npt.NDArray[np.float32]
    ) -> None:
        call, spec = self._pending, self.spec
        if call is not None and logits.shape == (call.frames, spec.joint_width):
            t = self.state.frame
            while t < call.stop:  # the walk of `GreedyDecoder.receive`, looking only
                row = logits[t - call.start]
                self.looked.append(np.array(row[: spec.vocab_size], np.float32))
                if int(np.argmax(row[: spec.vocab_size])) != spec.blank:
                    self.emitted.append(len(self.looked) - 1)
                    break
                t += max(spec.durations[int(np.argmax(row[spec.vocab_size :]))], 1) if spec.durations else 1
        super().receive(logits, h, c)


BlankFrames = Literal["none", "before", "after"]


def candidate_confidences(
    decoder: LookingDecoder,
    spans: Sequence[tuple[int, int]],
    measure: Measure,
    *,
    nonblank: bool,
    blank_frames: BlankFrames = "none",
    aggregate: Callable[[Sequence[float]], float] = min,
) -> list[float]:
    """The confidence of each word (tokens `first..last` of `spans`) under a candidate measure.

    A token's own value is `measure` at its emission frame, over the non-blank tokens (the blank left
    out of the softmax, as `token_confidence` does) or over all V. With `blank_frames`, the blank
    frames walked before the token (since the previous one), or after it (until the next one: NeMo's
    `exclude_blank=False`, which gives the blanks to the token before them), add their `measure`
    over all V, taken together with the token's value by `aggregate`; a word aggregates its tokens.
    """
    if not decoder.emitted:
        return []
    rows = np.stack(decoder.looked)
    blank = decoder.spec.blank
    own = measure(log_softmax(np.delete(rows, blank, axis=1) if nonblank else rows))
    frames = measure(log_softmax(rows))
    tokens = []
    for k, index in enumerate(decoder.emitted):
        values = [float(own[index])]
        if blank_frames == "before":
            values += frames[(decoder.emitted[k - 1] + 1 if k else 0) : index].tolist()
        elif blank_frames == "after":
            end = decoder.emitted[k + 1] if k + 1 < len(decoder.emitted) else len(rows)
            values += frames[index + 1 : end].tolist()
        tokens.append(aggregate(values))
    return [aggregate(tokens[first : last + 1]) for first, last in spans]
