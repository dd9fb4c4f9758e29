"""Cache-aware streaming encoders (NeMo's cache-aware ONNX export), sans-IO.

A cache-aware encoder encodes each chunk of a stream once: it takes the chunk's log-mel frames with
the last `pre_encode_frames` mel frames of the previous chunk prepended (`processed_signal`,
`processed_signal_length`), and per-layer caches (`cache_last_channel` [L, B, C, D],
`cache_last_time` [L, B, D, K], `cache_last_channel_len` [B]; some exports put B first), and returns
the chunk's encoder frames and the caches for the next chunk (`..._next`). Encoder frame j of chunk
k is absolute stream frame `k * chunk_frames / subsampling + j`, so the greedy decoder continues
across chunks exactly as it does across windows.

Features. A stream's features come from the *streaming preprocessor*
(`amira.tooling.streaming_preprocessor`): NeMo's log-mel frames with no normalisation (NeMo's
streaming models use none), framed 'valid': a call on samples `[s - 1, e)` gives the frames whose
512-sample windows lie inside `[s, e)`, sample `s - 1` being only the pre-emphasis history.
`CacheAwareChunker` feeds it exactly the samples each new frame needs, with half a window of zeros
before the stream and after its end (NeMo's centred STFT with zero padding), so the frames of a
stream fed in any pieces equal those of the whole signal in one call, bit for bit; a frame needs
256 samples (16 ms) past its centre, the only look-ahead of the path.

Caches. Their layout (batch axis 0 or 1) is read from the encoder's input shapes at start-up
(`CacheTensor.batch_axis`); a stream's caches are numpy arrays of batch 1 (`EncoderCaches`),
pooled by the engine like the decoder states. Where the backend keeps them (Triton's sequence
batcher with implicit state), `CacheAwareSpec.caches` is empty and a call carries only the chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

HOP = 160  # samples per mel frame (10 ms)
WINDOW = 512  # samples per mel frame's STFT window
HALF_WINDOW = WINDOW // 2
HISTORY = 1  # the pre-emphasis sample before the first one framed


@attrs.frozen
class CacheTensor:
    """One cache input of the encoder, its `_next` output, and its shape for one stream."""

    name: str
    next_name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    batch_axis: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@attrs.frozen
class CacheAwareSpec:
    """What the engine and the chunker need to know about a cache-aware encoder.

    `chunk_frames` mel frames go into each call after `pre_encode_frames` cached ones; `chunk_frames`
    is a multiple of `subsampling`. `caches` are the caches AMIRA keeps, empty when the backend keeps
    them per sequence (`backend_state`); `length_shape` is the signal length's shape for one stream.
    """

    chunk_frames: int = attrs.field(validator=attrs.validators.ge(1))
    pre_encode_frames: int = attrs.field(validator=attrs.validators.ge(0))
    subsampling: int = attrs.field(validator=attrs.validators.ge(1))
    feature_size: int = attrs.field(validator=attrs.validators.ge(1))
    signal: str = "processed_signal"
    signal_length: str = "processed_signal_length"
    encoded: str = "encoded"
    encoded_length: str = "encoded_len"
    caches: tuple[CacheTensor, ...] = ()
    backend_state: bool = False
    length_shape: tuple[int, ...] = (1,)  # (1, 1) where the backend batches the model ([B, 1])

    def __attrs_post_init__(self) -> None:
        if self.chunk_frames % self.subsampling:
            raise ValueError(
                f"the chunk ({self.chunk_frames} mel frames) must be a whole number of encoder frames "
                f"({self.subsampling} mel frames each)"
            )
        if self.backend_state and self.caches:
            raise ValueError("caches are kept either by the backend or by AMIRA, not both")

    @property
    def chunk_encoder_frames(self) -> int:
        return self.chunk_frames // self.subsampling

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.encoded, self.encoded_length, *(cache.next_name for cache in self.caches))

    def chunk_inputs(
        self, signal: npt.NDArray[np.float32], length: int, caches: EncoderCaches | None
    ) -> dict[str, npt.NDArray[Any]]:
        """One call's inputs: the chunk (`[1, F, P + n]`, `length` valid mel frames) and the caches."""
        inputs: dict[str, npt.NDArray[Any]] = {
            self.signal: signal,
            self.signal_length: np.full(self.length_shape, length, np.int64),
        }
        if caches is not None:
            inputs.update(caches.arrays)
        return inputs

    def end_inputs(self) -> dict[str, npt.NDArray[Any]]:
        """A call that encodes nothing (one encoder frame of zeros past the valid length): what a
        sequence-end request carries when a stream ends without a last chunk to send."""
        signal = np.zeros((1, self.feature_size, self.pre_encode_frames + self.subsampling), np.float32)
        return self.chunk_inputs(signal, self.pre_encode_frames, None)


@attrs.define
class EncoderCaches:
    """One stream's caches (batch 1), updated in place after every chunk so that pooled arrays stay pooled."""

    arrays: dict[str, npt.NDArray[Any]]

    @classmethod
    def zeros(cls, spec: CacheAwareSpec) -> EncoderCaches:
        return cls({cache.name: np.zeros(cache.shape, cache.dtype) for cache in spec.caches})

    def reset(self) -> None:
        for array in self.arrays.values():
            array.fill(0)

    def update(self, spec: CacheAwareSpec, outputs: dict[str, npt.NDArray[Any]]) -> None:
        """Take the `_next` caches of a call's outputs; their shapes must be the caches' own."""
        for cache in spec.caches:
            value = outputs[cache.next_name]
            if value.shape != cache.shape:
                raise ValueError(f"{cache.next_name} has shape {value.shape}, expected {cache.shape}")
            np.copyto(self.arrays[cache.name], value, casting="same_kind")


class CachePool:
    """Pre-allocated `EncoderCaches` of one model set, zeroed when handed out (as `StatePool`)."""

    def __init__(self, spec: CacheAwareSpec, size: int) -> None:
        self._spec = spec
        self._free = [EncoderCaches.zeros(spec) for _ in range(size)]
        self.size = size

    @property
    def available(self) -> int:
        return len(self._free)

    def acquire(self) -> EncoderCaches:
        caches = self._free.pop() if self._free else EncoderCaches.zeros(self._spec)
        caches.reset()
        return caches

    def release(self, caches: EncoderCaches) -> None:
        if len(self._free) < self.size:
            self._free.append(caches)

    @contextmanager
    def caches(self) -> Iterator[EncoderCaches]:
        caches = self.acquire()
        try:
            yield caches
        finally:
            self.release(caches)


@attrs.frozen
class Chunk:
    """One encoder call: `signal` [1, F, P + n] with `length` valid mel frames (the pre-encode cache
    included) gives encoder frames `[first_frame, first_frame + frames)` of the stream; `final` is the
    stream's last chunk. Its audio is stream samples `[start_sample, stop_sample)`."""

    signal: npt.NDArray[np.float32]
    length: int
    first_frame: int
    frames: int
    final: bool
    start_sample: int
    stop_sample: int


@attrs.define
class CacheAwareChunker:
    """A stream's audio in, streaming-preprocessor calls and encoder chunks out.

    Call `features_request` after each `feed` and give what the preprocessor returns for it to
    `add_features`, then take `next_chunk` until None. `finish` marks the end of the audio: the
    half window of zeros after it is framed, and the rest of the mel frames become a last, shorter
    chunk. Which chunks come out depends on the audio alone, never on how it was split into `feed`
    calls. The chunker holds the audio from the first sample of its oldest unencoded frame on
    (for framing, a chunk's energies and `audio`), and the mel frames not yet encoded.
    """

    spec: CacheAwareSpec
    _audio: list[npt.NDArray[np.float32]] = attrs.field(init=False)
    _audio_start: int = attrs.field(
        default=-(HALF_WINDOW + HISTORY), init=False
    )  # stream sample of _audio[0]
    _total: int = attrs.field(default=0, init=False)
    _framed: int = attrs.field(default=0, init=False)  # mel frames requested so far
    _mel: list[npt.NDArray[np.float32]] = attrs.field(factory=list, init=False)  # unencoded mel frames
    _mel_count: int = attrs.field(default=0, init=False)
    _encoded_mel: int = attrs.field(default=0, init=False)  # mel frames already in chunks
    _pre_encode: npt.NDArray[np.float32] = attrs.field(init=False)
    _finished: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._audio = [np.zeros(HALF_WINDOW + HISTORY, np.float32)]
        self._pre_encode = np.zeros((self.spec.feature_size, self.spec.pre_encode_frames), np.float32)

    @property
    def total_samples(self) -> int:
        return self._total

    @property
    def next_frame(self) -> int:
        """The first encoder frame not yet in a chunk."""
        return self._encoded_mel // self.spec.subsampling

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, samples: npt.NDArray[Any]) -> None:
        """Append 16 kHz samples (copied)."""
        if self._finished:
            raise ValueError("the stream's audio has ended")
        piece = np.array(samples, dtype=np.float32).reshape(-1)
        if piece.size:
            self._audio.append(piece)
            self._total += piece.size

    def finish(self) -> None:
        """The end of the audio: frames may now reach into the half window of zeros after it."""
        if not self._finished:
            self._audio.append(np.zeros(HALF_WINDOW, np.float32))
            self._finished = True

    @property
    def _all_framed(self) -> bool:
        """After `finish`: every frame of the whole signal was requested (N samples give N // 160 + 1
        frames, NeMo's centred count; none for no audio at all)."""
        return self._finished and self._framed == (self._total // HOP + 1 if self._total else 0)

    def features_request(self) -> npt.NDArray[np.float32] | None:
        """The preprocessor input (`[N]` samples, history first) for every mel frame the audio so far
        allows, or None; `add_features` must get its frames before the next request."""
        if self._all_framed or not self._total:
            return None
        buffer = self._buffer()
        start = self._framed * HOP - (HALF_WINDOW + HISTORY) - self._audio_start  # frame's history sample
        available = buffer.size - start
        count = (available - HISTORY - WINDOW) // HOP + 1
        if count <= 0:
            return None
        self._framed += count
        return buffer[start : start + HISTORY + (count - 1) * HOP + WINDOW]

    def add_features(self, features: npt.NDArray[np.float32]) -> None:
        """The frames [F, n] the preprocessor returned for the latest request, in order."""
        if features.ndim != 2 or features.shape[0] != self.spec.feature_size:
            raise ValueError(f"expected features [{self.spec.feature_size}, n], got {features.shape}")
        if self._mel_count + self._encoded_mel + features.shape[1] > self._framed:
            raise ValueError(f"got {features.shape[1]} frames, more than were requested")
        self._mel.append(features)
        self._mel_count += features.shape[1]

    def next_chunk(self) -> Chunk | None:
        """The next full chunk, or after `finish` (and all its frames added) the last one; else None."""
        spec = self.spec
        if self._mel_count >= spec.chunk_frames:
            valid = spec.chunk_frames
        elif self._all_framed and self._mel_count and self._mel_count + self._encoded_mel == self._framed:
            valid = self._mel_count
        else:
            return None
        frames = -(-valid // spec.subsampling)
        mel = np.concatenate(self._mel, axis=1) if len(self._mel) > 1 else self._mel[0]
        signal = np.zeros(
            (1, spec.feature_size, spec.pre_encode_frames + frames * spec.subsampling), np.float32
        )
        signal[0, :, : spec.pre_encode_frames] = self._pre_encode
        signal[0, :, spec.pre_encode_frames : spec.pre_encode_frames + valid] = mel[:, :valid]
        self._mel = [mel[:, valid:]] if valid < mel.shape[1] else []
        self._mel_count -= valid
        if spec.pre_encode_frames:
            self._pre_encode = signal[0, :, signal.shape[2] - spec.pre_encode_frames :].copy()
        first_frame = self.next_frame
        self._encoded_mel += valid
        final = self._all_framed and not self._mel_count and self._encoded_mel == self._framed
        frame_samples = HOP * spec.subsampling
        chunk = Chunk(
            signal=signal,
            length=spec.pre_encode_frames + valid,
            first_frame=first_frame,
            frames=frames,
            final=final,
            start_sample=first_frame * frame_samples,
            stop_sample=min(self._total, (first_frame + frames) * frame_samples),
        )
        self._forget_audio()
        return chunk

    def audio(self, start: int, stop: int | None = None) -> npt.NDArray[np.float32]:
        """Stream samples `[start, stop)` (to the newest without `stop`), which must still be held:
        the latest chunk's and everything after it."""
        buffer = self._buffer()
        stop = self._total if stop is None else min(stop, self._total)
        if start < self._audio_start or start > stop:
            raise ValueError(f"samples {start}..{stop} are not held (from {self._audio_start})")
        return buffer[start - self._audio_start : stop - self._audio_start]

    def _buffer(self) -> npt.NDArray[np.float32]:
        if len(self._audio) > 1:
            self._audio = [np.concatenate(self._audio)]
        return self._audio[0]

    def _forget_audio(self) -> None:
        """Keep the audio from the latest chunk's first sample (its energies, a cut inside it) and
        from the history sample of the oldest frame not yet framed."""
        latest = (self._encoded_mel - self.spec.chunk_frames) * HOP
        keep = min(max(latest, 0), self._framed * HOP - (HALF_WINDOW + HISTORY))
        if keep > self._audio_start:
            buffer = self._buffer()
            self._audio = [buffer[keep - self._audio_start :].copy()]
            self._audio_start = keep
