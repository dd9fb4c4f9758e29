"""G.711 encoding for tests: the code whose decoded value is nearest to each sample.

The server only decodes G.711 (`amira.core.g711`); tests need the other direction to send µ-law
and A-law audio. The nearest code is what a G.711 encoder gives up to rounding at code boundaries.
"""

from __future__ import annotations

import numpy as np

from amira.core.g711 import TABLES


def encode_g711(pcm: bytes, law: str) -> bytes:
    """s16le PCM to G.711 bytes (`law`: `mulaw` or `alaw`)."""
    table = TABLES[law].astype(np.int32)
    order = np.argsort(table, kind="stable")
    values = table[order]
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    right = np.clip(np.searchsorted(values, samples), 1, len(values) - 1)
    nearer_left = samples - values[right - 1] <= values[right] - samples
    codes: bytes = order[np.where(nearer_left, right - 1, right)].astype(np.uint8).tobytes()
    return codes
