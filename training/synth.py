"""Speech synthesis of the grammar with free TTS engines from Debian: espeak-ng, flite and festival.

Each utterance gets a random voice and random speaking rate and pitch (where the engine takes them),
and is resampled to 16 kHz mono int16. All randomness comes from the caller's `random.Random`.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000
ESPEAK_ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
]
ESPEAK_VARIANTS = (
    [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)] + ["klatt", "klatt2", "klatt3"]
)
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
FESTIVAL_VOICES = ["voice_kal_diphone", "voice_ked_diphone", "voice_cmu_us_slt_arctic_hts"]
ENGINES = {"espeak-ng": 0.4, "flite": 0.35, "festival": 0.25}
DEBIAN_PACKAGES = [
    "espeak-ng",
    "flite",
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-us-slt-hts",
]


@dataclass(frozen=True)
class Request:
    text: str
    engine: str
    voice: str
    rate: float  # 1.0 = the voice's normal speed; > 1 is slower (a duration stretch)
    pitch: int  # espeak-ng pitch 0..99, flite mean F0 in Hz; unused by festival


def check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "flite", "festival") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing TTS tools {missing}: apt-get install -y {' '.join(DEBIAN_PACKAGES)}")


def random_request(rng: random.Random, text: str) -> Request:
    engine = rng.choices(list(ENGINES), list(ENGINES.values()))[0]
    rate = rng.uniform(0.8, 1.35)
    if engine == "espeak-ng":
        voice = f"{rng.choice(ESPEAK_ACCENTS)}+{rng.choice(ESPEAK_VARIANTS)}"
        return Request(text, engine, voice, rate, rng.randint(20, 80))
    if engine == "flite":
        return Request(text, engine, rng.choice(FLITE_VOICES), rate, rng.randint(90, 200))
    return Request(text, engine, rng.choice(FESTIVAL_VOICES), rate, 0)


def _to_16k(data: np.ndarray, rate: int) -> np.ndarray:
    if data.ndim > 1:
        data = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        data = soxr.resample(data, rate, SAMPLE_RATE)
    peak = float(np.abs(data).max()) or 1.0
    return np.round(data / peak * 0.9 * 32767).astype(np.int16)


def _read(blob: bytes | Path) -> np.ndarray:
    data, rate = soundfile.read(io.BytesIO(blob) if isinstance(blob, bytes) else blob, dtype="float32")
    return _to_16k(data, rate)


def _espeak(req: Request) -> np.ndarray:
    words_per_minute = int(175 / req.rate)
    out = subprocess.run(
        [
            "espeak-ng",
            "-v",
            req.voice,
            "-s",
            str(words_per_minute),
            "-p",
            str(req.pitch),
            "--stdout",
            req.text,
        ],
        check=True,
        capture_output=True,
    ).stdout
    return _read(out)


def _flite(req: Request, tmp: Path) -> np.ndarray:
    path = tmp / "flite.wav"
    subprocess.run(
        [
            "flite",
            "-voice",
            req.voice,
            "--setf",
            f"duration_stretch={req.rate:.3f}",
            "--setf",
            f"int_f0_target_mean={req.pitch}",
            "-t",
            req.text,
            "-o",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return _read(path)


def _festival(reqs: list[tuple[int, Request]], tmp: Path) -> dict[int, np.ndarray]:
    """One festival process per voice, synthesising all of its utterances."""
    results: dict[int, np.ndarray] = {}
    by_voice: dict[str, list[tuple[int, Request]]] = {}
    for index, req in reqs:
        by_voice.setdefault(req.voice, []).append((index, req))
    for voice, items in sorted(by_voice.items()):
        lines = [f"({voice})"]
        for index, req in items:
            lines.append(f"(Parameter.set 'Duration_Stretch {req.rate:.3f})")
            lines.append(
                f'(utt.save.wave (utt.synth (Utterance Text "{req.text}")) "{tmp}/fest{index}.wav" \'riff)'
            )
        script = tmp / "script.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True)
        for index, _ in items:
            path = tmp / f"fest{index}.wav"
            results[index] = _read(path)
            path.unlink()
    return results


def synthesize(requests: list[Request]) -> list[np.ndarray]:
    """16 kHz int16 waveforms of the requests, in order."""
    check_tools()
    out: list[np.ndarray | None] = [None] * len(requests)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        festival = []
        for index, req in enumerate(requests):
            if req.engine == "espeak-ng":
                out[index] = _espeak(req)
            elif req.engine == "flite":
                out[index] = _flite(req, tmp)
            else:
                festival.append((index, req))
        for index, wave in _festival(festival, tmp).items():
            out[index] = wave
    return [w for w in out if w is not None]
