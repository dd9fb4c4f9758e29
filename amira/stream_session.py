"""Streaming recognition for trio programs: the trio shell that runs `amira.core.windowing` on the engine.

    async with recognizer.open_stream("default") as stream, trio.open_nursery() as nursery:
        nursery.start_soon(read_results, stream)  # async for result in stream: ...
        await stream.send_audio(samples)  # 16 kHz mono float32, any number per call
        await stream.finalize()  # a result with is_final, and the stream goes on
        await stream.end()  # the last final result, then the results end

A stream runs one infer task, in a nursery that the `async with` owns: it takes audio from a
bounded input channel, encodes each window the chunker cuts, decodes its chunk with the stream's
decoder state (committed) and its look-ahead with a copy of the state (tentative), and puts results
into a bounded output channel. Both channels push back: `send_audio` waits while the infer task is
behind, and the infer task waits while nobody reads results; so send and read in separate tasks.

A cache-aware model set (`amira.core.cache_aware`) streams without windows: each chunk of audio
is encoded once, with the stream's encoder caches (`Engine.cache_aware_encoding`), and its frames
are decoded and committed at once (there is no look-ahead to decode tentatively). A flush
(Finalize) encodes the rest as the encoder's last chunk, and later audio starts a fresh encoder.

Leaving the `async with`, by any route, cancels the infer task and returns both decoder states
(and a cache-aware stream's caches) to the pool, and ends a backend sequence that was started;
call `end()` and read the results to the last one first to get the final result. An
inference error ends the stream: it propagates out of the `async with` (in an ExceptionGroup, as
trio's nurseries do) and cancels the body.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from amira.core.audio import MODEL_SAMPLE_RATE
from amira.core.decoding import DecoderState, Emission, GreedyDecoder
from amira.core.errors import BackendError, BadAudio
from amira.core.transcript import ResultStatus, StreamResult, Word, words_from_emissions
from amira.core.windowing import Chunker, Snapshot, TokenWeaver, Window
from amira.engine import CacheAwareEncoding, EncodedChunk, Engine, LoadedModelSet

INPUT_CAPACITY = 16  # audio messages in flight: seconds of audio at typical WebSocket frame sizes
OUTPUT_CAPACITY = 8  # results a slow reader may fall behind by before decoding waits for it


class _Finalize:
    """The Finalize marker on the input channel."""


FINALIZE: Final = _Finalize()


class Stream:
    """One stream's channels and its infer task; made by `open_stream`."""

    def __init__(
        self,
        engine: Engine,
        loaded: LoadedModelSet,
        state: DecoderState,
        scratch: DecoderState,
        input_capacity: int,
        output_capacity: int,
        encoding: CacheAwareEncoding | None = None,
    ) -> None:
        self._engine = engine
        self._encoding = encoding
        self._received = 0
        self._model_set = loaded.model_set
        self._state, self._scratch = state, scratch
        self._chunker = Chunker(loaded.streaming)
        self._weaver = TokenWeaver(loaded.model_set.vocabulary)
        self._audio_send, self._audio_receive = trio.open_memory_channel[npt.NDArray[np.float32] | _Finalize](
            input_capacity
        )
        self._results_send, self._results_receive = trio.open_memory_channel[StreamResult](output_capacity)
        self.transcription = ""  # of the latest result: what an error message shows as "so far"
        self._decoded_frames = 0  # where the latest committed decoding stopped: the end of the last word

    async def send_audio(self, samples: npt.NDArray[Any]) -> None:
        """Queue 16 kHz mono samples (copied); waits while the infer task is behind."""
        samples = np.array(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise BadAudio(f"stream audio must have shape [samples], got {samples.shape}")
        if samples.size:
            await self._audio_send.send(samples)

    async def finalize(self) -> None:
        """Commit everything sent so far and get a final result; the stream stays open."""
        await self._audio_send.send(FINALIZE)

    async def end(self) -> None:
        """No more audio: the rest is committed, the last final result follows, then results end."""
        await self._audio_send.aclose()

    def results(self) -> trio.MemoryReceiveChannel[StreamResult]:
        """Results in order; iteration ends after the end-of-stream result."""
        return self._results_receive

    def __aiter__(self) -> trio.MemoryReceiveChannel[StreamResult]:
        return self._results_receive

    async def run(self) -> None:
        """The infer task: audio in, windows decoded, results out, until the input ends."""
        with self._audio_receive, self._results_send:  # closing without a checkpoint: errors stay raised
            async for item in self._audio_receive:
                if isinstance(item, _Finalize):
                    await self._flush(ResultStatus.FINAL)
                    continue
                self._received += item.size
                if self._encoding is not None:
                    started = time.perf_counter()
                    await self._decode_chunks(self._encoding, item)
                    self._weaver.propose(())
                    snapshot = self._weaver.snapshot()
                    if snapshot.changed:
                        await self._send(snapshot, started, ResultStatus.PARTIAL)
                    continue
                self._chunker.feed(item)
                while (window := self._chunker.next_window()) is not None:
                    started = time.perf_counter()
                    await self._decode(window)
                    snapshot = self._weaver.snapshot()
                    if snapshot.changed:
                        await self._send(snapshot, started, ResultStatus.PARTIAL)
            await self._flush(ResultStatus.COMPLETE)

    async def _flush(self, status: ResultStatus) -> None:
        started = time.perf_counter()
        if self._encoding is not None:
            await self._flush_cache_aware(self._encoding, started, status)
            return
        window = self._chunker.flush()
        if window is not None:
            await self._decode(window)
        self._weaver.propose(())
        await self._send(self._weaver.snapshot(), started, status)

    async def _decode_chunks(
        self, encoding: CacheAwareEncoding, samples: npt.NDArray[np.float32] | None = None
    ) -> None:
        """Encode the chunks the new audio completes (all of it after `finish`) and commit their tokens."""
        engine, model_set = self._engine, self._model_set
        policy = engine.stream_calls
        if samples is not None:
            encoding.chunker.feed(samples)
        chunk: EncodedChunk
        for chunk in await engine.encode_chunks(model_set, encoding, policy):
            decoder = GreedyDecoder(model_set.decoding, self._state, chunk.stop_frame)
            await engine.decode(model_set, decoder, chunk.encoded, chunk.first_frame, policy)
            self._weaver.commit(decoder.emissions)

    async def _flush_cache_aware(
        self, encoding: CacheAwareEncoding, started: float, status: ResultStatus
    ) -> None:
        """The rest of the audio as the encoder's last chunk; later audio starts a fresh encoder, from
        the first frame after everything decoded so far."""
        encoding.chunker.finish()
        await self._decode_chunks(encoding)
        self._weaver.propose(())
        await self._send(self._weaver.snapshot(), started, status)
        if status is ResultStatus.FINAL:
            await self._engine.end_sequence(self._model_set, encoding, self._engine.stream_calls)
            frame_samples = self._model_set.frame_samples
            encoding.restart(max(self._state.frame, -(-self._received // frame_samples)))

    async def _decode(self, window: Window) -> None:
        """Encode the window; commit its chunk's tokens, and decode its look-ahead as the tentative tail."""
        engine, model_set = self._engine, self._model_set
        policy = engine.stream_calls
        encoded = await engine.encode(model_set, self._chunker.samples(window), policy)
        try:
            stop = window.decode_stop(encoded.length)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        committed = GreedyDecoder(model_set.decoding, self._state, stop)
        await engine.decode(model_set, committed, encoded, window.first_frame, policy)
        self._decoded_frames = stop
        self._weaver.commit(committed.emissions)
        tentative: list[Emission] = []
        if window.tentative_stop > self._state.frame:
            self._state.copy_into(self._scratch)
            lookahead = GreedyDecoder(model_set.decoding, self._scratch, window.tentative_stop)
            await engine.decode(model_set, lookahead, encoded, window.first_frame, policy)
            tentative = lookahead.emissions
        self._weaver.propose(tentative)

    async def _send(self, snapshot: Snapshot, started: float, status: ResultStatus) -> None:
        emissions = snapshot.emissions
        words: tuple[Word, ...] = ()
        if status is not ResultStatus.PARTIAL:
            words = words_from_emissions(
                self._model_set.vocabulary, emissions, self._model_set.frame_seconds, self._decoded_frames
            )
        self.transcription = snapshot.transcription
        await self._results_send.send(
            StreamResult(
                status=status,
                transcription=snapshot.transcription,
                committed=snapshot.committed,
                tokens=tuple(e.token for e in emissions),
                token_frames=tuple(e.frame for e in emissions),
                words=words,
                audio_seconds=self._received / MODEL_SAMPLE_RATE,
                processing_time_ms=(time.perf_counter() - started) * 1000,
            )
        )


@asynccontextmanager
async def open_stream(
    engine: Engine,
    model: str = "default",
    *,
    input_capacity: int = INPUT_CAPACITY,
    output_capacity: int = OUTPUT_CAPACITY,
) -> AsyncIterator[Stream]:
    """A stream on model set `model`; raises `UnknownModel` or `BackendUnavailable` up front."""
    loaded = engine.model_set(model)
    async with AsyncExitStack() as stack:
        state = stack.enter_context(loaded.states.state())
        scratch = stack.enter_context(loaded.states.state())
        encoding = None
        if loaded.model_set.cache_aware is not None:
            encoding = await stack.enter_async_context(
                engine.cache_aware_encoding(loaded.model_set, loaded.caches, engine.stream_calls)
            )
        async with trio.open_nursery() as nursery:
            stream = Stream(engine, loaded, state, scratch, input_capacity, output_capacity, encoding)
            nursery.start_soon(stream.run)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()
