"""Audio in: s16le PCM, float arrays and sound files, to 16 kHz mono float32 in [-1, 1).

The models want 16 kHz mono; everything else is converted here, once, at the edge. Multi-channel
audio is mixed down, or kept as one array per channel where a request asks for channels separately.
Sound files are read block by block up to a duration limit: their headers are not trusted (a
216-byte FLAC can claim 2^36 frames of 8 channels), and a small compressed file can hold hours of
audio.
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
    """`wav`, `flac`, `ogg`, `au` or `mp3` from a file's first bytes; None for anything else."""
    if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b".snd":
        return "au"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"  # an ID3 tag or an MPEG audio frame's sync word
    return None


def from_sound_file(
    data: bytes | bytearray, max_seconds: float = math.inf, containers: tuple[str, ...] | None = None
) -> npt.NDArray[np.float32]:
    """A sound file's bytes, decoded block by block, mixed down and resampled."""
    (samples,) = sound_file_channels(data, max_seconds, containers=containers)
    return samples


def _too_long(seconds: float, max_seconds: float) -> TooLarge:
    return TooLarge(f"the audio lasts more than {seconds:.2f} s, past the limit of {max_seconds:g} s")


def sound_file_channels(
    data: bytes | bytearray,
    max_seconds: float = math.inf,
    multichannel: bool = False,
    containers: tuple[str, ...] | None = None,
) -> list[npt.NDArray[np.float32]]:
    """A sound file (WAV with PCM, float, µ-law or A-law samples, FLAC, OGG, MP3, AU where the
    installed libsndfile reads them) as 16 kHz float32, mixed down or one array per channel.

    The file's first bytes must show one of `containers` (the one a request's Content-Type names,
    or `CONTAINERS`), so that libsndfile's other parsers are never reached; None takes any file
    libsndfile reads (the command line's local files). The file is read and resampled block by
    block (the original rate is never held whole) and refused with `TooLarge` one block past
    `max_seconds`, whatever the header claims; channel counts above `MAX_CHANNELS` and rates
    outside `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE` are `BadAudio`, and so is a file that turns out
    corrupt half-way.
    """
    if containers is not None and (found := sniff_container(data)) not in containers:
        what = (
            f"a {found.upper()} file" if found else f"not a {' or '.join(c.upper() for c in containers)} file"
        )
        expected = " or ".join(container.upper() for container in containers)
        raise BadAudio(f"the body is {what}; expected {expected}")
    blocks: list[npt.NDArray[np.float32]] = []
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels = check_sample_rate(sound.samplerate), sound.channels
            if not 1 <= channels <= MAX_CHANNELS:
                raise BadAudio(f"{channels} channels; at most {MAX_CHANNELS} are supported")
            kept = channels if multichannel else 1
            resampler = None
            if rate != MODEL_SAMPLE_RATE:  # block by block: only 16 kHz samples are ever held
                resampler = soxr.ResampleStream(rate, MODEL_SAMPLE_RATE, kept, "float32", quality="HQ")
            frames = 0
            while len(block := sound.read(SOUND_FILE_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                frames += len(block)
                if frames > max_seconds * rate:
                    raise _too_long(frames / rate, max_seconds)
                if not np.all(np.isfinite(block)):
                    raise BadAudio("audio contains NaN or infinite samples")
                block = block if multichannel else to_mono(block)[:, None]
                blocks.append(block if resampler is None else resampler.resample_chunk(block))
            if resampler is not None:
                blocks.append(resampler.resample_chunk(np.zeros((0, kept), np.float32), last=True))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"cannot read the sound file: {exc}") from exc
    resampled = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    del blocks
    return [require_audio(np.ascontiguousarray(resampled[:, c])) for c in range(resampled.shape[1])]


def pcm_channels(
    pcm: bytes, rate: int, channels: int, max_seconds: float = math.inf, multichannel: bool = False
) -> list[npt.NDArray[np.float32]]:
    """Interleaved s16le PCM of `channels` channels, mixed down or one 16 kHz array per channel;
    the duration is checked from the length before anything is converted."""
    rate = check_sample_rate(rate)
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadAudio(f"{channels} channels; at most {MAX_CHANNELS} are supported")
    if len(pcm) % (2 * channels):
        raise BadAudio(f"the body is not a whole number of {channels}-channel 16-bit frames")
    frames = len(pcm) // (2 * channels)
    if frames > max_seconds * rate:
        raise _too_long(frames / rate, max_seconds)
    interleaved = pcm16_to_float(pcm).reshape(frames, channels)
    if not multichannel:
        return [from_float(interleaved, rate)]
    return [from_float(np.ascontiguousarray(interleaved[:, c]), rate) for c in range(channels)]


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
