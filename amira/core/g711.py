"""G.711 µ-law and A-law (ITU-T G.711), the 8-bit telephone encodings, to s16le PCM.

Deepgram's `encoding=mulaw|alaw` and the OpenAI Realtime formats `audio/pcmu`/`audio/pcma` carry
one byte per sample; each byte is looked up in a 256-entry table of the linear value it stands for.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _mulaw_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype("<i2")


def _alaw_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype("<i2")


TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def to_pcm16(data: bytes, law: str) -> bytes:
    """G.711 bytes (`law`: `mulaw` or `alaw`) as s16le PCM at the same sample rate."""
    return TABLES[law][np.frombuffer(data, dtype=np.uint8)].tobytes()
