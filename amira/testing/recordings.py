"""The test recordings (`tests/data` of the source checkout, see its SOURCES.md) and the model sets
they are decoded with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
if not DATA.is_dir():
    raise ImportError(
        f"amira.testing.recordings needs the test recordings of the source checkout, {DATA}, which is "
        "missing: run the tests and benchmarks from a checkout of the repository, not an installed package"
    )
LIBRIVOX = sorted((DATA / "librivox").glob("*.wav"))
CARDS = sorted((DATA / "cards").glob("*.wav"))
RECORDINGS = [*LIBRIVOX, *CARDS, DATA / "goforward.raw"]
MODEL_SETS = ("tdt", "rnnt")  # the random-weight sets: exact decoding, many tokens


def _real_domain() -> list[tuple[Path, str]]:
    """(recording, normalised transcript): lower case, single spaces, no <s> markers or ids."""
    cases = []
    for line in (DATA / "cards" / "cards.transcription").read_text(encoding="utf-8").splitlines():
        words = line.replace("<s>", " ").replace("</s>", " ").split()
        cases.append((DATA / "cards" / f"{words[-1].strip('()')}.wav", " ".join(words[:-1]).lower()))
    cases.append((DATA / "goforward.raw", "go forward ten meters"))
    return cases


REAL_DOMAIN = _real_domain()  # people speaking the demo model's domain, with what they say


def read_recording(path: Path) -> npt.NDArray[np.float32]:
    """16 kHz mono float32 samples of a test recording (`.raw` is headerless s16le)."""
    if path.suffix == ".raw":
        return np.frombuffer(path.read_bytes(), "<i2").astype(np.float32) / 32768.0
    samples: npt.NDArray[np.float32]
    samples, rate = soundfile.read(path, dtype="float32")  # soundfile has no type information
    assert rate == 16_000 and samples.ndim == 1
    return samples


def pcm16(samples: npt.NDArray[np.floating[Any]]) -> bytes:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
