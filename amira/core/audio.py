"""Audio in: s16le PCM, float arrays and sound files, to 16 kHz mono float32 in [-1, 1).

The models want 16 kHz mono; everything else is converted here, once, at the edge. Sound files
are read block by block up to a duration limit: their headers are not trusted (a 216-byte FLAC
can claim 2^36 frames of 8 channels), and a small compressed file can hold hours of audio.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from amira.core.errors import BadAudio, TooLarge

MODEL_SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8
PCM16_SCALE = 32768.0
SOUND_FILE_BLOCK_FRAMES = 16_384  # frames decoded at a time (at most 512 KiB of float32 for 8 channels)
CONTAINERS = ("wav", "flac", "ogg")  # the sound files the API takes, by their first bytes


def check_sample_rate(rate: int) -> int:
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudio(
            f"unsupported sample rate {rate!r}: expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    return rate


def pcm16_to_float(data: bytes | bytearray) -> npt.NDArray[np.float32]:
    """s16le bytes (an even number: the protocols check it) to float32 samples."""
    if len(data) % 2:
        raise ValueError(f"s16le PCM must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_SCALE


def to_mono(samples: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Mix `[n]` or `[n, channels]` down to `[n]` float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    elif samples.ndim != 1:
        raise BadAudio(f"audio must have shape [samples] or [samples, channels], got {samples.shape}")
    return samples


def resample(
    samples: npt.NDArray[np.float32], rate: int, target: int = MODEL_SAMPLE_RATE
) -> npt.NDArray[np.float32]:
    if rate == target or samples.size == 0:
        return samples
    resampled: npt.NDArray[np.float32] = soxr.resample(samples, rate, target, quality="HQ")  # untyped
    return resampled.astype(np.float32, copy=False)


def from_float(samples: npt.NDArray[Any], rate: int = MODEL_SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """Float samples at any supported rate, mono or `[n, channels]`, to model input."""
    samples = to_mono(samples)
    if not np.all(np.isfinite(samples)):
        raise BadAudio("audio contains NaN or infinite samples")
    return require_audio(resample(samples, check_sample_rate(rate)))


def from_pcm16(data: bytes | bytearray, rate: int = MODEL_SAMPLE_RATE) -> npt.NDArray[np.float32]:
    return require_audio(resample(pcm16_to_float(data), check_sample_rate(rate)))


def sniff_container(data: bytes | bytearray) -> str | None:
    """`wav`, `flac` or `ogg` from a file's first bytes; None for anything else."""
    if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    return None


def from_sound_file(
    data: bytes | bytearray, max_seconds: float = math.inf, containers: tuple[str, ...] | None = None
) -> npt.NDArray[np.float32]:
    """A sound file's bytes, decoded block by block, mixed down and resampled.

    The file's first bytes must show one of `containers` (`wav`, `flac`, `ogg`: the one a request's
    Content-Type names, or `CONTAINERS`), so that libsndfile's other parsers are never reached; None
    takes any file libsndfile reads (the command line's local files). Decoding stops with
    `TooLarge` one block past `max_seconds`, whatever the header claims; channel counts above
    `MAX_CHANNELS` and rates outside `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE` are `BadAudio`.
    """
    if containers is not None and (found := sniff_container(data)) not in containers:
        what = f"a {found.upper()} file" if found else "not a WAV, FLAC or OGG file"
        expected = " or ".join(container.upper() for container in containers)
        raise BadAudio(f"the body is {what}; expected {expected}")
    blocks: list[npt.NDArray[np.float32]] = []
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels = check_sample_rate(sound.samplerate), sound.channels
            if not 1 <= channels <= MAX_CHANNELS:
                raise BadAudio(f"{channels} channels; at most {MAX_CHANNELS} are supported")
            limit, frames = max_seconds * rate, 0
            while len(block := sound.read(SOUND_FILE_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                frames += len(block)
                if frames > limit:
                    raise TooLarge(f"the audio lasts more than the limit of {max_seconds:g} s")
                blocks.append(to_mono(block))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"cannot read the sound file: {exc}") from exc
    return from_float(np.concatenate(blocks) if blocks else np.zeros(0, np.float32), rate)


def require_audio(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if samples.size == 0:
        raise BadAudio("the audio is empty")
    return samples


class StreamResampler:
    """Chunked s16le PCM to 16 kHz float32 for a stream; the output does not depend on chunk sizes."""

    def __init__(self, rate: int) -> None:
        self.rate = check_sample_rate(rate)
        self._soxr = (
            None if rate == MODEL_SAMPLE_RATE else soxr.ResampleStream(rate, MODEL_SAMPLE_RATE, 1, "float32")
        )

    @property
    def resamples(self) -> bool:
        """Whether the stream's rate is not the model's, so that `push` does more than convert."""
        return self._soxr is not None

    def push(self, pcm: bytes) -> npt.NDArray[np.float32]:
        samples = pcm16_to_float(pcm)
        return samples if self._soxr is None else self._soxr.resample_chunk(samples)

    def flush(self) -> npt.NDArray[np.float32]:
        """What the resampler still holds; the stream's last audio."""
        if self._soxr is None:
            return np.zeros(0, np.float32)
        rest: npt.NDArray[np.float32] = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
        return rest  # annotated: soxr has no type information
