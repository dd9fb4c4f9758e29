"""Utterances joined with pauses: the long examples of stage 2 and the long held-out recordings.

No torch here, so that `python -m bench.stream_vs_batch --recipe-data` can rebuild the recipe's
whole held-out set from its cache.
"""

from __future__ import annotations

import numpy as np

from .features import SAMPLE_RATE


def join(rng: np.random.Generator, waves: list[np.ndarray], pause: tuple[float, float]) -> np.ndarray:
    """Utterances one after the other with a silent pause of random length between them, each at its
    own level (int16)."""
    pieces = []
    for index, wave in enumerate(waves):
        if index:
            pieces.append(np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), np.int16))
        pieces.append((wave * rng.uniform(0.4, 1.0)).astype(np.int16))
    return np.concatenate(pieces)


def held_out_joined(waves: list[np.ndarray], texts: list[str], seed: int) -> list[tuple[np.ndarray, str]]:
    """Held-out utterances joined with pauses, at least 3 and 8 s at a time (longer than one streaming
    window): the recipe's long-audio evaluation, and the streamed-vs-batch set in `tests/data/held_out`."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    while start < len(waves):
        group = [start]
        while group[-1] + 1 < len(waves) and (
            len(group) < 3 or sum(len(waves[i]) for i in group) < 8 * SAMPLE_RATE
        ):
            group.append(group[-1] + 1)
        start = group[-1] + 1
        wave = join(rng, [waves[i] for i in group], (0.3, 1.2))
        if len(wave) >= 8 * SAMPLE_RATE:
            out.append((wave, " ".join(texts[i] for i in group)))
    return out
