from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from amira.core import audio
from amira.core.errors import BadAudio, BadRequest, TooLarge
from amira.protocols.values import check_pcm16_length


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
