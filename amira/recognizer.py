"""The recogniser: batch recognition, and the handle a trio program holds.

    async with amira.open_recognizer(Settings.from_env()) as rec:
        transcript = await rec.transcribe(samples)  # 16 kHz mono float32
        async with rec.open_stream("default") as stream: ...

It runs the sans-IO decoder over one whole recording on the `Engine`, which owns the model sets,
the state pools and the backend calls; streams are `amira.stream_session`'s, on the same engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from amira.core.audio import MODEL_SAMPLE_RATE, require_audio
from amira.core.decoding import GreedyDecoder
from amira.core.segments import SegmentOptions
from amira.core.transcript import (
    ResultStatus,
    StreamResult,
    Transcript,
    build_transcript,
    transcript_from_segments,
)
from amira.engine import CallPolicy, Encoded, Engine, LoadedModelSet, create_backend
from amira.settings import Settings
from amira.stream_session import INPUT_CAPACITY, OUTPUT_CAPACITY, Stream, open_stream


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """An error out of a nursery, unwrapped from trio's exception groups: the first one raised, so
    that callers get the `AmiraError` itself (a request's answer, never a 500)."""
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None


Progress = Callable[[float, float], None]  # (audio seconds decoded so far, total): a progress bar


class Recognizer:
    """Batch recognition on an engine, and streams on it (`open_stream`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    async def transcribe(
        self,
        samples: npt.NDArray[Any],
        model: str = "default",
        policy: CallPolicy | None = None,
        progress: Progress | None = None,
    ) -> Transcript:
        """Decode one recording (16 kHz mono float32) of any length.

        A recording up to `BATCH_WHOLE_SECS` (30 s) is one preprocessor and encoder call over all
        of it, one segment: the most accurate decode, which every batch request was before. A longer
        one goes through the streaming session with batch windows (`BATCH_CHUNK_SECS` etc.) and the
        streams' endpointing: segments cut at pauses, each decoded
        from a fresh decoder state carried across its windows, so that its segments, words and
        confidences are made exactly as a stream's. `progress` is called with the seconds of audio
        handed to the decoder so far and the total, after each window's worth.

        A cache-aware set has no whole-recording encoder call: a recording up to
        `BATCH_WHOLE_SECS` is one streaming-preprocessor call and the stream's chunk loop of
        encoder calls, one segment; a longer one goes through the streaming session like any set.
        """
        engine = self.engine
        loaded = engine.model_set(model)
        samples = require_audio(np.ascontiguousarray(samples, dtype=np.float32))
        policy = policy or engine.batch_calls
        if samples.size <= self.settings.batch_whole_secs * MODEL_SAMPLE_RATE:
            transcript = await self._transcribe_whole(loaded, samples, policy)
        else:
            transcript = await self._transcribe_long(loaded, samples, policy, progress)
        if progress is not None:
            progress(samples.size / MODEL_SAMPLE_RATE, samples.size / MODEL_SAMPLE_RATE)
        return transcript

    async def _transcribe_whole(
        self, loaded: LoadedModelSet, samples: npt.NDArray[np.float32], policy: CallPolicy
    ) -> Transcript:
        """One recording in one span: with a Triton recording model, all of it in one call
        (`Engine.decode_recording`); else one encoder call (a cache-aware set: its chunks), then
        the decode."""
        model_set, engine = loaded.model_set, self.engine
        if model_set.name in engine.recording_models:
            with loaded.states.state() as state:
                decoder = GreedyDecoder(model_set.decoding, state, 0)
                features_length, encoded_length = await engine.decode_recording(
                    model_set, samples, decoder, policy
                )
        else:
            if model_set.cache_aware is not None:
                encoded = await self._encode_chunked(loaded, samples, policy)
            else:
                encoded = await engine.encode(model_set, samples, policy)
            with loaded.states.state() as state:
                decoder = GreedyDecoder(model_set.decoding, state, encoded.length)
                await engine.decode(model_set, decoder, encoded, 0, policy)
            features_length, encoded_length = encoded.features_length, encoded.length
        return build_transcript(
            model_set.vocabulary,
            decoder.emissions,
            frame_seconds=model_set.frame_seconds,
            audio_samples=samples.size,
            sample_rate=MODEL_SAMPLE_RATE,
            features_length=features_length,
            encoded_length=encoded_length,
        )

    async def _transcribe_long(
        self,
        loaded: LoadedModelSet,
        samples: npt.NDArray[np.float32],
        policy: CallPolicy,
        progress: Progress | None,
    ) -> Transcript:
        """The stream session in process: the samples go in one chunk at a time (the input channel
        holds one, so memory is the samples plus one window's tensors), no partials come out."""
        windows = loaded.batch_windows
        options = attrs.evolve(self.settings.segment_options(), interim_results=False, interim_secs=None)
        piece = windows.chunk_frames * windows.frame_samples
        total = samples.size / MODEL_SAMPLE_RATE
        complete: StreamResult | None = None
        with unwrapped_errors():
            async with (
                open_stream(
                    self.engine,
                    loaded.name,
                    options=options,
                    input_capacity=0,
                    output_capacity=1,
                    windows=windows,
                    calls=policy,
                ) as stream,
                trio.open_nursery() as nursery,
            ):

                async def feed() -> None:
                    for start in range(0, samples.size, piece):
                        await stream.send_audio(samples[start : start + piece])
                        if progress is not None:
                            progress(min(start + piece, samples.size) / MODEL_SAMPLE_RATE, total)
                    await stream.end()

                nursery.start_soon(feed)
                async for result in stream:
                    if result.status is ResultStatus.COMPLETE:
                        complete = result
        assert complete is not None  # every stream that ends gets its COMPLETE
        model_set = loaded.model_set
        return transcript_from_segments(
            complete.segments,
            audio_samples=samples.size,
            sample_rate=MODEL_SAMPLE_RATE,
            features_length=samples.size // model_set.hop_samples + 1,
            encoded_length=samples.size // model_set.frame_samples + 1,
        )

    async def _encode_chunked(
        self, loaded: LoadedModelSet, samples: npt.NDArray[np.float32], policy: CallPolicy
    ) -> Encoded:
        """A cache-aware set's encoder frames of a whole recording: the chunks a stream would make."""
        async with self.engine.cache_aware_encoding(loaded.model_set, loaded.caches, policy) as encoding:
            encoding.chunker.feed(samples)
            encoding.chunker.finish()
            chunks = await self.engine.encode_chunks(loaded.model_set, encoding, policy)
        frames = [chunk.encoded.frames for chunk in chunks]
        return Encoded(
            np.concatenate(frames, axis=1),
            sum(chunk.encoded.length for chunk in chunks),
            sum(chunk.encoded.features_length for chunk in chunks),
        )

    def open_stream(
        self,
        model: str = "default",
        *,
        options: SegmentOptions | None = None,
        input_capacity: int = INPUT_CAPACITY,
        output_capacity: int = OUTPUT_CAPACITY,
    ) -> AbstractAsyncContextManager[Stream]:
        """A streaming session on model set `model`: see `amira.stream_session`. Its results are
        the segments' partials and finals, then `COMPLETE`; `options` (endpointing, maximum segment
        length, partials) default to the settings' (`Settings.segment_options`)."""
        return open_stream(
            self.engine,
            model,
            options=options,
            input_capacity=input_capacity,
            output_capacity=output_capacity,
        )


@asynccontextmanager
async def open_recognizer(settings: Settings | None = None) -> AsyncIterator[Recognizer]:
    """A loaded recogniser on the backend the settings choose; the backend is closed on exit."""
    settings = settings or Settings.from_env()
    backend = create_backend(settings)
    try:
        engine = Engine(backend, settings)
        async with engine.serving():
            await engine.load()
            yield Recognizer(engine)
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
