from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from amira.core import audio
from amira.core.errors import BadAudio, BadRequest, TooLarge
from amira.protocols.values import check_pcm16_length
from amira.testing.recordings import CARDS, read_recording


def tone(rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def sound_file(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_pcm16_round_trip() -> None:
    pcm = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert audio.from_pcm16(pcm).tolist() == [0.0, 0.5, -1.0, 32767 / 32768]


def test_odd_pcm_is_a_protocol_error() -> None:
    with pytest.raises(BadRequest, match="even number"):
        check_pcm16_length(b"\x00\x01\x02")


def test_empty_audio_is_refused() -> None:
    with pytest.raises(BadAudio, match="empty"):
        audio.from_pcm16(b"")


@pytest.mark.parametrize("rate", [0, 7999, 192_001, -16000])
def test_unsupported_rates_are_refused(rate: int) -> None:
    with pytest.raises(BadAudio, match="sample rate"):
        audio.from_pcm16(b"\x00\x00", rate)


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("WAV", "FLOAT")]
)
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_sound_files_are_decoded_mixed_and_resampled(fmt: str, subtype: str | None, rate: int) -> None:
    samples = audio.from_sound_file(sound_file(tone(rate, channels=2), rate, fmt, subtype))
    assert samples.dtype == np.float32
    assert abs(samples.size - 8000) <= 16
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / samples.size - 440) < 5


def test_stereo_is_mixed_down() -> None:
    left_right = np.stack([np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)], axis=1)
    assert np.allclose(audio.from_float(left_right), 0.125)


@pytest.mark.parametrize("data", [b"", b"RIFF\x00\x00", b"not a sound file at all", bytes(range(256))])
def test_unreadable_files_are_bad_audio(data: bytes) -> None:
    with pytest.raises(BadAudio):
        audio.from_sound_file(data)


def test_non_finite_samples_are_refused() -> None:
    with pytest.raises(BadAudio, match="NaN"):
        audio.from_float(np.array([0.0, np.nan], np.float32))


def fft_resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum: numpy only, independent of
    the soxr resampler that `amira.core.audio` uses; exact for signals a whole number of periods long."""
    size = samples.size * target // rate
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.zeros(size // 2 + 1, complex)
    keep = min(spectrum.size, out.size)
    out[:keep] = spectrum[:keep]
    return np.fft.irfft(out, size) * size / samples.size


def snr_db(reference: np.ndarray, samples: np.ndarray, cutoff: float) -> float:
    """Signal to error ratio below `cutoff` Hz (16 kHz signals), edges (filter ramps) left out."""

    def lowpass(x: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(x.astype(np.float64))
        spectrum[np.fft.rfftfreq(x.size, 1 / 16_000) > cutoff] = 0
        return np.fft.irfft(spectrum, x.size)[800:-800]

    a, b = lowpass(reference), lowpass(samples)
    return float(10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_agrees_with_an_independent_band_limited_resampler(rate: int) -> None:
    """A real recording at another rate (made without soxr) comes back to 16 kHz as the original,
    within the band both rates carry (measured: 87 dB or more), whole or streamed in pieces."""
    original = read_recording(CARDS[4])
    original = original[: original.size // 320 * 320]  # whole periods of 16000 / gcd(16000, rate)
    at_rate = fft_resample(original, 16_000, rate).astype(np.float32)
    cutoff = 0.9 * min(rate, 16_000) / 2  # below soxr's transition band
    whole = audio.from_float(at_rate, rate)
    assert whole.size == original.size
    assert snr_db(original, whole, cutoff) > 60
    resampler = audio.StreamResampler(rate)
    pcm = (np.clip(at_rate, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    pieces = [resampler.push(pcm[offset : offset + 2 * 441]) for offset in range(0, len(pcm), 2 * 441)]
    streamed = np.concatenate([*pieces, resampler.flush()])
    assert abs(streamed.size - original.size) <= 1
    assert snr_db(original, streamed[: original.size], cutoff) > 40  # 16-bit quantisation: about 50 dB


@pytest.mark.parametrize("rate", [8000, 16_000, 192_000])
def test_the_sample_rate_bounds_are_inclusive(rate: int) -> None:
    assert audio.check_sample_rate(rate) == rate


@pytest.mark.parametrize("rate", [16000.0, True, "16000", None])
def test_a_sample_rate_must_be_an_int(rate: object) -> None:
    with pytest.raises(BadAudio, match="sample rate"):
        audio.check_sample_rate(rate)  # type: ignore[arg-type]


def test_every_path_gives_float32() -> None:
    assert audio.from_pcm16(b"\x00\x40").dtype == np.float32
    assert audio.from_float(np.zeros((4, 2), np.float64)).dtype == np.float32
    assert audio.to_mono(np.zeros(4, np.float64)).dtype == np.float32
    assert audio.to_mono(np.zeros((4, 3), np.int16)).dtype == np.float32
    empty = audio.resample(np.zeros(0, np.float32), 44_100)
    assert empty.size == 0 and empty.dtype == np.float32
    with pytest.raises(BadAudio, match="shape"):
        audio.to_mono(np.zeros((2, 2, 2), np.float32))


def test_a_stream_at_16_khz_passes_through_as_float32() -> None:
    resampler = audio.StreamResampler(16_000)
    pushed = resampler.push(b"\x00\x40\x00\xc0")
    assert pushed.dtype == np.float32 and pushed.tolist() == [0.5, -0.5]
    flushed = resampler.flush()
    assert flushed.dtype == np.float32 and flushed.size == 0


def test_sound_files_are_read_only_up_to_the_limit() -> None:
    long = sound_file(np.zeros((16000 * 30, 8), np.float32), 16000, "FLAC")  # 30 s, 8 channels
    assert audio.from_sound_file(long, max_seconds=30).size == 16000 * 30
    with pytest.raises(TooLarge, match="limit of 29 s"):
        audio.from_sound_file(long, max_seconds=29)


@pytest.mark.parametrize(
    ("container", "fmt"), [("wav", "FLAC"), ("flac", "WAV"), ("ogg", "WAV"), ("wav", "AIFF")]
)
def test_the_container_must_be_the_one_the_content_type_names(container: str, fmt: str) -> None:
    with pytest.raises(BadAudio, match=f"expected {container.upper()}"):
        audio.from_sound_file(sound_file(tone(16000), 16000, fmt), containers=(container,))


@pytest.mark.parametrize(("rate", "channels"), [(16000, 9), (4000, 1), (384_000, 1)])
def test_channel_counts_and_rates_out_of_bounds_are_bad_audio(rate: int, channels: int) -> None:
    data = sound_file(tone(rate, 0.01, channels), rate, "WAV")
    with pytest.raises(BadAudio, match=r"channels|sample rate"):
        audio.from_sound_file(data, containers=audio.CONTAINERS)
