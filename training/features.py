"""Augmentation of 16 kHz waveforms and NeMo 128-mel features from the very graph the server uses."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import soxr

from amira.models import onnx_asr_preprocessor
from amira.tooling.streaming_preprocessor import N_FFT, streaming_preprocessor

SAMPLE_RATE = 16_000


class Preprocessor:
    """onnx-asr's `nemo128.onnx` (the repository's `preprocessor`) on one CPU thread; with `streaming`,
    the streaming models' `preprocessor_streaming` (no normalisation, `amira.tooling.streaming_preprocessor`)
    over the whole signal framed as a stream is (half a window of zeros at each end), so that training
    features equal the server's chunked features."""

    def __init__(self, streaming: bool = False) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        graph = (
            streaming_preprocessor().SerializeToString()
            if streaming
            else str(onnx_asr_preprocessor("nemo128"))
        )
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.lead = 1 + N_FFT // 2 if streaming else 0  # pre-emphasis history + half a window
        self.tail = N_FFT // 2 if streaming else 0

    def __call__(self, waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """float32 waveforms -> features [B, 128, T], lengths [B]."""
        lengths = np.array([self.lead + len(w) + self.tail for w in waveforms], np.int64)
        batch = np.zeros((len(waveforms), int(lengths.max())), np.float32)
        for row, wave in enumerate(waveforms):
            batch[row, self.lead : self.lead + len(wave)] = wave
        features, features_lens = self.session.run(None, {"waveforms": batch, "waveforms_lens": lengths})
        return features, features_lens


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of awkward (prime-ish) lengths are many times slower."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 * (1 << max(0, (-(-n // p35) - 1).bit_length()))
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _colored_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown-ish noise of unit RMS."""
    white = rng.standard_normal(n)
    exponent = rng.choice([0.0, 0.5, 1.0])
    if exponent:
        size = _fast_length(n)
        spectrum = np.fft.rfft(white, size)
        freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
        white = np.fft.irfft(spectrum / freqs**exponent, size)[:n]
    return white / (np.sqrt(np.mean(white**2)) + 1e-9)


def _random_eq(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A smooth random frequency response (+-8 dB), sometimes band-limited like a phone or old mic."""
    n = len(x)
    size = _fast_length(n)
    spectrum = np.fft.rfft(x, size)
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    knots = np.linspace(0, SAMPLE_RATE / 2, 8)
    gain_db = np.interp(freqs, knots, rng.uniform(-8, 8, len(knots)))
    if rng.random() < 0.3:
        cutoff = rng.uniform(3000, 7000)
        gain_db -= np.clip((freqs - cutoff) / 100.0, 0, 60)
    if rng.random() < 0.3:
        low = rng.uniform(100, 400)
        gain_db -= np.clip((low - freqs) / 10.0, 0, 40)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), size)[:n]


def _reverb(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    rt60 = rng.uniform(0.1, 0.5)
    n = int(min(rt60, 0.3) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.05, 0.4)
    ir[0] = 1.0
    size = _fast_length(len(x) + n - 1)
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)
    return wet[: len(x) + n // 2]


def augment(rng: np.random.Generator, wave: np.ndarray) -> np.ndarray:
    """int16 16 kHz TTS waveform -> float32 in [-1, 1): speed/pitch, EQ, reverb, pads, noise, gain."""
    x = wave.astype(np.float64) / 32768.0
    factor = rng.uniform(0.85, 1.2)  # resampling changes tempo, pitch and formants together
    x = soxr.resample(x, round(SAMPLE_RATE * factor), SAMPLE_RATE)
    if rng.random() < 0.6:
        x = _random_eq(rng, x)
    if rng.random() < 0.3:
        x = _reverb(rng, x)
    pads = (rng.uniform(0.05, 0.6, 2) * SAMPLE_RATE).astype(int)
    x = np.concatenate([np.zeros(pads[0]), x, np.zeros(pads[1])])
    rms = np.sqrt(np.mean(x**2)) + 1e-9
    snr_db = rng.uniform(5, 30) if rng.random() < 0.6 else rng.uniform(30, 60)
    x = x + _colored_noise(rng, len(x)) * rms * 10 ** (-snr_db / 20)
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.05, 1.0)
    if rng.random() < 0.1:
        x = np.clip(x * rng.uniform(1.0, 3.0), -1.0, 1.0)
    return np.clip(x, -1.0, 32767 / 32768).astype(np.float32)


def spec_augment(rng: np.random.Generator, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Two frequency masks (up to 20 mel bins) and two time masks (up to 8 % of each row) per row."""
    features = features.copy()
    for row, length in enumerate(lengths):
        for _ in range(2):
            width = rng.integers(0, 21)
            start = rng.integers(0, features.shape[1] - width + 1)
            features[row, start : start + width, :] = 0.0
            width = rng.integers(0, max(1, int(0.08 * length)) + 1)
            start = rng.integers(0, max(1, length - width + 1))
            features[row, :, start : start + width] = 0.0
    return features
