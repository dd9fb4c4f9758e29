"""Streaming recognition for trio programs: the trio shell that runs `amira.core.windowing` and
`amira.core.segments` on the engine.

    async with recognizer.open_stream("default") as stream, trio.open_nursery() as nursery:
        nursery.start_soon(read_results, stream)  # async for result in stream: ...
        await stream.send_audio(samples)  # 16 kHz mono float32, any number per call
        await stream.finalize()  # the open segment ends with a final result, and the stream goes on
        await stream.end()  # the last segment's final, the COMPLETE result, then the results end

A stream is a sequence of segments (`amira.core.segments`). Each segment has its own chunker, token
weaver and end rules, and starts from a reset decoder state, so that its windows never reach back
into the previous segment's audio. A stream runs one infer task, in a nursery that the `async with`
owns: it takes audio from a bounded input channel, encodes each window the open segment's chunker
cuts, decodes its chunk with the decoder state (committed) and its look-ahead with a copy of the
state (tentative), asks the end rules whether the segment ends inside the window, and puts results
into a bounded output channel. When a segment ends inside a window, the state goes back to its
checkpoint before the window, the chunk is decoded again up to the cut, and the audio after the cut
opens the next segment. Between windows, interim refreshes decode the newest audio from another copy
of the state, for a tail that keeps up with the speaker. Both channels push back: `send_audio` waits
while the infer task is behind, and the infer task waits while nobody reads results; so send and
read in separate tasks.

A cache-aware model set (`amira.core.cache_aware`) streams without windows: each segment's audio is
encoded chunk by chunk, once, from fresh encoder caches (`Engine.cache_aware_encoding`, restarted
per segment), and each chunk's frames are decoded and committed at once (there is no look-ahead to
decode tentatively, and no interim refreshes). The end rules look at each chunk's committed frames;
a segment that ends inside a chunk is decoded again up to the cut from the chunk's frames (the
encoder is causal: frames before the cut do not depend on the audio after it), its encoder sequence
is ended, and the audio after the cut is the next segment's to search.

Work per window, and the size of every result but `COMPLETE`, depend on the open segment only: text
is built per segment, and the whole stream's transcript once, for `COMPLETE`. What grows with the
stream is the list of finished segments that `COMPLETE` reports (a few kB per hour of speech).

Leaving the `async with`, by any route, cancels the infer task and returns the decoder states (and a
cache-aware stream's encoder caches) to the pool, and ends a backend sequence that was started;
call `end()` and read the results to the last one first to get the final result. An
inference error ends the stream: it propagates out of the `async with` (in an ExceptionGroup, as
trio's nurseries do) and cancels the body.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from amira.core.audio import MODEL_SAMPLE_RATE
from amira.core.cache_aware import CacheAwareChunker
from amira.core.decoding import DecoderState, Emission, GreedyDecoder
from amira.core.errors import BackendError, BadAudio
from amira.core.segments import (
    PREROLL_FRAMES,
    BoundaryKind,
    OpenSegment,
    SegmentConfig,
    SegmentOptions,
    SegmentPhase,
    SpeechOnset,
    frame_energies,
)
from amira.core.transcript import (
    ResultStatus,
    Segment,
    SegmentEnd,
    StreamResult,
    shift_words,
    words_from_emissions,
)
from amira.core.windowing import Chunker, StreamingConfig, Window
from amira.engine import CacheAwareEncoding, CallPolicy, Encoded, EncodedChunk, Engine, LoadedModelSet

INPUT_CAPACITY = 16  # audio messages in flight: seconds of audio at typical WebSocket frame sizes
OUTPUT_CAPACITY = 8  # results a slow reader may fall behind by before decoding waits for it


class _Finalize:
    """The Finalize marker on the input channel."""


FINALIZE: Final = _Finalize()


ENDS: Final = {BoundaryKind.ENDPOINT: SegmentEnd.ENDPOINT, BoundaryKind.MAX_LENGTH: SegmentEnd.MAX_LENGTH}


def join_texts(texts: Sequence[str]) -> str:
    return " ".join(text for text in texts if text)


class Stream:
    """One stream's channels and its infer task; made by `open_stream`.

    At any time the stream is either inside a segment (an `OpenSegment`) or, after an endpoint,
    between two segments (a `SpeechOnset` skipping non-speech until speech resumes).
    """

    def __init__(
        self,
        engine: Engine,
        loaded: LoadedModelSet,
        states: tuple[DecoderState, DecoderState, DecoderState],
        options: SegmentOptions,
        input_capacity: int,
        output_capacity: int,
        windows: StreamingConfig | None = None,
        calls: CallPolicy | None = None,
        encoding: CacheAwareEncoding | None = None,
    ) -> None:
        self._engine = engine
        self._encoding = encoding
        self._loaded = loaded
        self._model_set = model_set = loaded.model_set
        self._windows = windows or loaded.streaming
        self._calls = calls or engine.stream_calls
        self._state, self._scratch, self._checkpoint = states
        self._config = SegmentConfig.from_options(options, model_set.frame_samples, MODEL_SAMPLE_RATE)
        self._next_id = 0
        self._speech_level = 0.0  # the loudest frame of the latest segment with speech
        self._finished: list[Segment] = []
        self._received = 0
        self._open_text = ""  # of the open segment's latest result
        spec = model_set.cache_aware
        lead = spec.chunk_encoder_frames if spec else self._windows.chunk_frames + self._windows.right_frames
        self._current = self._after_segment(0, lead_frames=lead)
        self._audio_send, self._audio_receive = trio.open_memory_channel[npt.NDArray[np.float32] | _Finalize](
            input_capacity
        )
        self._results_send, self._results_receive = trio.open_memory_channel[StreamResult](output_capacity)

    @property
    def transcription(self) -> str:
        """The whole stream's text so far: what an error message shows as "so far"."""
        return join_texts([*(segment.text for segment in self._finished), self._open_text])

    @property
    def settled_seconds(self) -> float | None:
        """The stream position before which no result still to come can hold a word: the open
        segment's start or, between segments, where the search for speech stands (the next segment
        starts there or later). None while results wait to be read, which may hold such words.

        A dialect that times silences by words (Deepgram's `UtteranceEnd`) reads it between results:
        no result comes while the session skips a pause."""
        if self._results_receive.statistics().current_buffer_used:
            return None
        current = self._current
        sample = current.position if isinstance(current, SpeechOnset) else current.start_sample
        return sample / MODEL_SAMPLE_RATE

    async def send_audio(self, samples: npt.NDArray[Any]) -> None:
        """Queue 16 kHz mono samples (copied); waits while the infer task is behind."""
        samples = np.array(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise BadAudio(f"stream audio must have shape [samples], got {samples.shape}")
        if samples.size:
            await self._audio_send.send(samples)

    async def finalize(self) -> None:
        """End the open segment with everything sent so far, and get its final; the stream stays open."""
        await self._audio_send.send(FINALIZE)

    async def end(self) -> None:
        """No more audio: the last segment's final and the `COMPLETE` result follow, then results end."""
        await self._audio_send.aclose()

    def results(self) -> trio.MemoryReceiveChannel[StreamResult]:
        """Results in order; iteration ends after the `COMPLETE` result."""
        return self._results_receive

    def __aiter__(self) -> trio.MemoryReceiveChannel[StreamResult]:
        return self._results_receive

    async def run(self) -> None:
        """The infer task: audio in, windows decoded, results out, until the input ends."""
        with self._audio_receive, self._results_send:  # closing without a checkpoint: errors stay raised
            async for item in self._audio_receive:
                if isinstance(item, _Finalize):
                    await self._end_segment(SegmentEnd.FINALIZE)
                else:
                    self._received += item.size
                    await self._feed(item)
            started = time.perf_counter()
            await self._end_segment(SegmentEnd.END_OF_STREAM)
            await self._complete(started)

    def _open_segment(self, start_sample: int) -> OpenSegment:
        self._state.reset(self._model_set.decoding.blank)
        self._open_text = ""
        segment = OpenSegment.open(
            self._next_id,
            start_sample,
            self._windows,
            self._config,
            self._model_set.vocabulary,
            self._model_set.cache_aware,
        )
        if self._encoding is not None and isinstance(segment.chunker, CacheAwareChunker):
            self._encoding.restart(segment.chunker)
        return segment

    def _after_segment(self, position: int, lead_frames: int = 0) -> OpenSegment | SpeechOnset:
        """What follows a segment that stopped at stream sample `position` (or the start of the
        stream): with endpointing, a search for the next speech (decoding silence on its own only
        invents words); without, the next segment at once."""
        if self._config.endpointing_frames is None:
            return self._open_segment(position)
        frame_samples = self._model_set.frame_samples
        return SpeechOnset(position, self._speech_level, frame_samples, PREROLL_FRAMES, lead_frames)

    async def _feed(self, samples: npt.NDArray[np.float32]) -> None:
        pending = samples
        while pending.size:
            if isinstance(self._current, SpeechOnset):
                found = self._current.feed(pending)
                if found is None:
                    return
                start, pending = found
                self._current = self._open_segment(start)
            segment = self._current
            if self._encoding is not None:
                pending = await self._decode_chunks(segment, self._encoding, pending)
                continue
            chunker = self._window_chunker(segment)
            chunker.feed(pending)
            pending = pending[:0]
            while (window := chunker.next_window()) is not None:
                rest = await self._decode_window(segment, window, time.perf_counter())
                if rest is not None:
                    pending = rest
                    break
            else:
                if segment.refresh_due(self._config.interim_samples):
                    await self._refresh(segment)

    @staticmethod
    def _window_chunker(segment: OpenSegment) -> Chunker:
        """The segment's window chunker (a set that is not cache-aware)."""
        if not isinstance(segment.chunker, Chunker):
            raise TypeError("a cache-aware segment has no windows")
        return segment.chunker

    async def _decode_chunks(
        self, segment: OpenSegment, encoding: CacheAwareEncoding, samples: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Cache-aware: encode the chunks the new audio completes and commit each one's tokens; the
        audio after the segment's end if it ended inside one (else nothing)."""
        engine, policy = self._engine, self._calls
        encoding.chunker.feed(samples)
        await engine.featurize(self._model_set, encoding, policy)
        while (chunk := encoding.chunker.next_chunk()) is not None:
            started = time.perf_counter()
            encoded = await engine.encode_chunk(self._model_set, encoding, chunk, policy)
            rest = await self._decode_chunk(segment, encoding, encoded, started)
            if rest is not None:
                return rest
        return samples[:0]

    async def _decode_chunk(
        self, segment: OpenSegment, encoding: CacheAwareEncoding, chunk: EncodedChunk, started: float
    ) -> npt.NDArray[np.float32] | None:
        """Commit a chunk's tokens; unless the segment stops inside it: then go back to the
        checkpoint, decode the chunk again up to the cut, end the segment's encoder sequence, and
        return the audio after the cut, which is the next segment's to search."""
        frame_samples = self._model_set.frame_samples
        self._state.copy_into(self._checkpoint)
        committed = await self._run_decoder(self._state, chunk.encoded, chunk.first_frame, chunk.stop_frame)
        audio = encoding.chunker.audio(chunk.first_frame * frame_samples, chunk.stop_frame * frame_samples)
        boundary = segment.endpointer.observe(
            committed, frame_energies(audio, frame_samples), chunk.first_frame, chunk.stop_frame
        )
        if boundary is None:
            segment.decoded_frames = chunk.stop_frame
            segment.weaver.commit(committed)
            segment.weaver.propose(())
            segment.tail_end = chunk.chunk.stop_sample
            await self._send_partial(segment, started)
            return None
        self._checkpoint.copy_into(self._state)
        rest = encoding.chunker.audio(boundary.resume * frame_samples)
        await self._engine.end_sequence(self._model_set, encoding, self._calls)
        if boundary.kind is not BoundaryKind.NO_SPEECH:
            segment.weaver.commit(
                await self._run_decoder(self._state, chunk.encoded, chunk.first_frame, boundary.cut)
            )
            segment.weaver.propose(())
            segment.decoded_frames = boundary.cut
            await self._finish_segment(segment, ENDS[boundary.kind], started)
        self._current = self._after_segment(segment.start_sample + boundary.resume * frame_samples)
        return rest

    async def _commit_rest(self, segment: OpenSegment, encoding: CacheAwareEncoding) -> None:
        """Cache-aware: the segment's audio ends here; encode its last chunks and commit everything."""
        engine, policy = self._engine, self._calls
        encoding.chunker.finish()
        for chunk in await engine.encode_chunks(self._model_set, encoding, policy):
            segment.weaver.commit(
                await self._run_decoder(self._state, chunk.encoded, chunk.first_frame, chunk.stop_frame)
            )
            segment.decoded_frames = chunk.stop_frame
        segment.weaver.propose(())
        await engine.end_sequence(self._model_set, encoding, policy)

    async def _encode(self, samples: npt.NDArray[np.float32], window: Window) -> tuple[Encoded, int]:
        """The window's encoder output, and where committed decoding of it stops."""
        encoded = await self._engine.encode(self._model_set, samples, self._calls)
        try:
            return encoded, window.decode_stop(encoded.length)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

    async def _run_decoder(
        self, state: DecoderState, encoded: Encoded, first_frame: int, stop: int
    ) -> list[Emission]:
        decoder = GreedyDecoder(self._model_set.decoding, state, stop)
        await self._engine.decode(self._model_set, decoder, encoded, first_frame, self._calls)
        return decoder.emissions

    async def _decode_window(
        self, segment: OpenSegment, window: Window, started: float
    ) -> npt.NDArray[np.float32] | None:
        """Commit the window's chunk and decode its look-ahead as the tentative tail; unless the
        segment stops inside the window: then go back to the checkpoint, decode the chunk again up
        to the cut, and return the audio after it, which is the next segment's to search."""
        config, frame_samples = self._config, self._model_set.frame_samples
        samples = self._window_chunker(segment).samples(window)
        encoded, stop = await self._encode(samples, window)
        self._state.copy_into(self._checkpoint)
        committed = await self._run_decoder(self._state, encoded, window.first_frame, stop)
        tentative: list[Emission] = []
        if window.tentative_stop > self._state.frame and (config.partials or config.endpointing_frames):
            self._state.copy_into(self._scratch)
            tentative = await self._run_decoder(
                self._scratch, encoded, window.first_frame, window.tentative_stop
            )
        energies = frame_energies(
            samples[(window.commit_start - window.first_frame) * frame_samples :], frame_samples
        )
        boundary = segment.endpointer.observe(
            [*committed, *tentative], energies, window.commit_start, window.commit_stop
        )
        if boundary is None:
            segment.decoded_frames = stop
            segment.weaver.commit(committed)
            segment.weaver.propose(tentative)
            segment.tail_end = window.stop_sample
            await self._send_partial(segment, started)
            return None
        self._checkpoint.copy_into(self._state)
        final, rest = self._window_chunker(segment).cut(window, boundary.cut)
        if boundary.kind is not BoundaryKind.NO_SPEECH:
            await self._commit_final(segment, final)
            await self._finish_segment(segment, ENDS[boundary.kind], started)
        self._current = self._after_segment(segment.start_sample + boundary.resume * frame_samples)
        return rest[(boundary.resume - boundary.cut) * frame_samples :]

    async def _commit_final(self, segment: OpenSegment, window: Window | None) -> None:
        """Decode a segment's last window (a flush or a cut) to its end and commit everything."""
        if window is not None and window.commit_stop > self._state.frame:
            encoded, stop = await self._encode(self._window_chunker(segment).samples(window), window)
            segment.weaver.commit(await self._run_decoder(self._state, encoded, window.first_frame, stop))
            segment.decoded_frames = stop
        segment.weaver.propose(())

    async def _drain(self, segment: OpenSegment, started: float) -> OpenSegment | None:
        """The end of the stream: the audio not yet committed is decoded as last windows that still
        look for endpoints (a batch window's worth of audio can hold many utterances); returns the
        segment still open at the end, None when the audio after the last endpoint had no speech."""
        while (window := self._window_chunker(segment).flush()) is not None:
            rest = await self._decode_window(segment, window, started)
            if rest is None:
                break
            await self._feed(rest)
            if isinstance(self._current, SpeechOnset):
                return None
            segment = self._current
        segment.weaver.propose(())
        return segment

    async def _refresh(self, segment: OpenSegment) -> None:
        """Decode the open segment's audio up to the newest sample from a copy of the state: a new tail."""
        interim = self._window_chunker(segment).interim()
        if interim is None:
            return
        started = time.perf_counter()
        window, samples = interim
        encoded, stop = await self._encode(samples, window)
        self._state.copy_into(self._scratch)
        segment.weaver.propose(await self._run_decoder(self._scratch, encoded, window.first_frame, stop))
        segment.tail_end = window.stop_sample
        await self._send_partial(segment, started)

    async def _end_segment(self, reason: SegmentEnd) -> None:
        """Finalize or the end of the stream: the open segment ends with all its audio (at the start
        of a stream, the audio still within the lead is one). Finalize always gets a final (an empty
        one between segments); at the end of the stream, a segment without a token has none."""
        started = time.perf_counter()
        segment = self._current
        if isinstance(segment, SpeechOnset):
            early = segment.within_lead()
            if early is None and reason is not SegmentEnd.FINALIZE:
                return
            segment = self._open_segment(self._received if early is None else early[0])
            if early is not None:
                segment.chunker.feed(early[1])
        if self._encoding is not None:
            await self._commit_rest(segment, self._encoding)
            if reason is SegmentEnd.END_OF_STREAM and not segment.weaver.committed:
                return
        elif reason is SegmentEnd.END_OF_STREAM:
            last = await self._drain(segment, started)
            if last is None or not last.weaver.committed:
                return
            segment = last
        else:
            await self._commit_final(segment, self._window_chunker(segment).flush())
        await self._finish_segment(segment, reason, started)
        self._current = self._after_segment(self._received)

    async def _send_partial(self, segment: OpenSegment, started: float) -> None:
        if not self._config.partials:
            return
        snapshot = segment.weaver.snapshot()
        if not snapshot.changed:
            return
        self._open_text = snapshot.transcription
        model_set = self._model_set
        frame_samples = model_set.frame_samples
        words = words_from_emissions(  # the open segment's only: bounded by the segment's length
            model_set.vocabulary,
            snapshot.emissions,
            model_set.frame_seconds,
            -(-segment.tail_end // frame_samples),
        )
        await self._results_send.send(
            StreamResult(
                status=ResultStatus.PARTIAL,
                transcription=snapshot.transcription,
                committed=snapshot.committed,
                tokens=tuple(e.token for e in snapshot.emissions),
                token_frames=tuple(segment.frame_offset + e.frame for e in snapshot.emissions),
                words=shift_words(words, segment.start_sample / MODEL_SAMPLE_RATE),
                audio_seconds=self._received / MODEL_SAMPLE_RATE,
                processing_time_ms=(time.perf_counter() - started) * 1000,
                segment=segment.span(segment.tail_end, MODEL_SAMPLE_RATE),
            )
        )

    async def _finish_segment(self, segment: OpenSegment, reason: SegmentEnd, started: float) -> None:
        """The segment's final result; the segment joins the finished ones for `COMPLETE`."""
        model_set = self._model_set
        emissions = segment.weaver.committed
        words = words_from_emissions(
            model_set.vocabulary, emissions, model_set.frame_seconds, segment.decoded_frames
        )
        text = model_set.vocabulary.detokenize(e.token for e in emissions)
        finished = Segment(
            span=segment.span(segment.chunker.total_samples, MODEL_SAMPLE_RATE),
            text=text,
            tokens=tuple(e.token for e in emissions),
            token_frames=tuple(segment.frame_offset + e.frame for e in emissions),
            token_probabilities=tuple(e.probability for e in emissions),
            words=shift_words(words, segment.start_sample / MODEL_SAMPLE_RATE),
            ended_by=reason,
        )
        self._finished.append(finished)
        self._next_id += 1
        if segment.endpointer.phase is SegmentPhase.SPEECH:
            self._speech_level = segment.endpointer.speech_level
        self._open_text = ""
        await self._results_send.send(
            StreamResult(
                status=ResultStatus.FINAL,
                transcription=text,
                committed=text,
                tokens=finished.tokens,
                token_frames=finished.token_frames,
                words=finished.words,
                audio_seconds=self._received / MODEL_SAMPLE_RATE,
                processing_time_ms=(time.perf_counter() - started) * 1000,
                segment=finished.span,
                ended_by=reason,
            )
        )

    async def _complete(self, started: float) -> None:
        """The stream's one `COMPLETE` result: the whole transcript, built once."""
        segments = tuple(self._finished)
        text = join_texts([segment.text for segment in segments])
        await self._results_send.send(
            StreamResult(
                status=ResultStatus.COMPLETE,
                transcription=text,
                committed=text,
                tokens=tuple(t for segment in segments for t in segment.tokens),
                token_frames=tuple(f for segment in segments for f in segment.token_frames),
                words=tuple(w for segment in segments for w in segment.words),
                audio_seconds=self._received / MODEL_SAMPLE_RATE,
                processing_time_ms=(time.perf_counter() - started) * 1000,
                segments=segments,
            )
        )


@asynccontextmanager
async def open_stream(
    engine: Engine,
    model: str = "default",
    *,
    options: SegmentOptions | None = None,
    input_capacity: int = INPUT_CAPACITY,
    output_capacity: int = OUTPUT_CAPACITY,
    windows: StreamingConfig | None = None,
    calls: CallPolicy | None = None,
) -> AsyncIterator[Stream]:
    """A stream on model set `model`; raises `UnknownModel` or `BackendUnavailable` up front.

    `options` (segments, endpointing, partials) default to the engine's settings; `windows` and
    `calls` to the streaming windows and the streams' call policy (a long batch decode passes its
    own: `Recognizer.transcribe`).
    """
    loaded = engine.model_set(model)
    options = options or engine.settings.segment_options()
    calls = calls or engine.stream_calls
    async with AsyncExitStack() as stack:
        states = (
            stack.enter_context(loaded.states.state()),
            stack.enter_context(loaded.states.state()),
            stack.enter_context(loaded.states.state()),
        )
        encoding = None
        if loaded.model_set.cache_aware is not None:
            encoding = await stack.enter_async_context(
                engine.cache_aware_encoding(loaded.model_set, loaded.caches, calls)
            )
        async with trio.open_nursery() as nursery:
            stream = Stream(
                engine, loaded, states, options, input_capacity, output_capacity, windows, calls, encoding
            )
            nursery.start_soon(stream.run)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()
