"""The recogniser: batch recognition, and the handle a trio program holds.

    async with amira.open_recognizer(Settings.from_env()) as rec:
        transcript = await rec.transcribe(samples)  # 16 kHz mono float32
        async with rec.open_stream("default") as stream: ...

It runs the sans-IO decoder over one whole recording on the `Engine`, which owns the model sets,
the state pools and the backend calls; streams are `amira.stream_session`'s, on the same engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from amira.core.audio import MODEL_SAMPLE_RATE, require_audio
from amira.core.decoding import GreedyDecoder
from amira.core.segments import SegmentOptions
from amira.core.transcript import Transcript, build_transcript
from amira.engine import CallPolicy, Encoded, Engine, LoadedModelSet, create_backend
from amira.settings import Settings
from amira.stream_session import INPUT_CAPACITY, OUTPUT_CAPACITY, Stream, open_stream


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
    ) -> Transcript:
        """Decode one whole recording (16 kHz mono float32), as one preprocessor and encoder call (a
        cache-aware set: one preprocessor call and the stream's chunk loop of encoder calls)."""
        engine = self.engine
        loaded = engine.model_set(model)
        model_set = loaded.model_set
        samples = require_audio(np.ascontiguousarray(samples, dtype=np.float32))
        policy = policy or engine.batch_calls
        if model_set.cache_aware is not None:
            encoded = await self._encode_chunked(loaded, samples, policy)
        else:
            encoded = await engine.encode(model_set, samples, policy)
        with loaded.states.state() as state:
            decoder = GreedyDecoder(model_set.decoding, state, encoded.length)
            await engine.decode(model_set, decoder, encoded, 0, policy)
        return build_transcript(
            model_set.vocabulary,
            decoder.emissions,
            frame_seconds=model_set.frame_seconds,
            audio_samples=samples.size,
            sample_rate=MODEL_SAMPLE_RATE,
            features_length=encoded.features_length,
            encoded_length=encoded.length,
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
        await engine.load()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            try:
                yield Recognizer(engine)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
