"""`WS /v2/decode/stream/{model}`: the Quart shell, one trio nursery per stream.

The wire rules are `amira.protocols.native_stream`'s and the recognition is the stream session's
(`amira.stream_session`); this module only moves messages between the socket and them. Three
tasks per stream, joined by bounded channels so that a slow model or a slow reader pushes back on
the client instead of growing memory:

* **receive** (`_receive`): reads frames, turns them into protocol events, resamples audio and
  hands it to the session; it waits while the session's input is full, and then Hypercorn stops
  reading the socket (its queues hold at most 10 messages);
* **infer**: the stream session's own task: windows, backend calls, decoding;
* **send** (`_send`): turns results into messages; it waits on the socket, so a client that
  never reads stops the inference for its stream, not the server.

Whatever ends the stream, the capacity slot and the decoder states are released when the handler
leaves its nursery, which happens at once when the client drops the connection.
"""

from __future__ import annotations

import logging

import attrs
import trio
from quart import Quart, websocket

from amira.core.audio import StreamResampler
from amira.core.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, AmiraError, BackendError, BackendFailure
from amira.core.segments import SegmentOptions
from amira.protocols.native_stream import Audio, EndOfStream, Finalize, KeepAlive, NativeStream
from amira.server.state import ServerState, new_id
from amira.settings import Settings
from amira.stream_session import Stream

log = logging.getLogger("amira.stream")

HYPERCORN_FRAME_FACTOR = 2  # Hypercorn closes (1009, no message) only past twice our own limit


@attrs.define
class StreamEnding:
    """Why the receive task stopped: normally, with a client's error, or for the server's shutdown."""

    error: AmiraError | None = None
    shutdown: bool = False


@attrs.define
class FrameRate:
    """Frames per second allowed to a stream: past the rate, reading pauses (the client is slowed
    down by backpressure, not refused), so a flood of tiny frames cannot monopolise the loop."""

    per_second: int
    _window_start: float = 0.0
    _count: int = 0

    def pause_before_next(self, now: float) -> float:
        if now - self._window_start >= 1.0:
            self._window_start, self._count = now, 0
        self._count += 1
        return self._window_start + 1.0 - now if self._count > self.per_second else 0.0


def backend_failure(group: BaseExceptionGroup) -> BackendFailure | None:
    """The backend failure inside a nursery's exception group, if that is what ended the stream."""
    matched, _ = group.split(BackendFailure)
    if matched is None:
        return None
    failure: BaseException = matched
    while isinstance(failure, BaseExceptionGroup):
        failure = failure.exceptions[0]
    return failure if isinstance(failure, BackendFailure) else None


async def _receive(
    stream: Stream,
    protocol: NativeStream,
    resampler: StreamResampler,
    state: ServerState,
    ending: StreamEnding,
) -> None:
    """Frames in until the stream ends: by the client, by inactivity, or at the end of the
    shutdown drain. Then the rest of the audio is flushed, so the final covers every sample."""
    async with trio.open_nursery() as watch:
        watch.start_soon(_stop_when_drained, state, ending, watch.cancel_scope)
        try:
            await _read_frames(stream, protocol, resampler, state.settings)
        except AmiraError as exc:
            ending.error = exc
        watch.cancel_scope.cancel()
    if ending.error is not None:
        raise ending.error
    protocol.end_input()
    await stream.send_audio(resampler.flush())
    await stream.end()


async def _stop_when_drained(state: ServerState, ending: StreamEnding, reading: trio.CancelScope) -> None:
    await state.drain_expired.wait()
    ending.shutdown = True
    reading.cancel()


async def _read_frames(
    stream: Stream, protocol: NativeStream, resampler: StreamResampler, settings: Settings
) -> None:
    rate = FrameRate(settings.max_frames_per_sec)
    while True:
        await trio.sleep(rate.pause_before_next(trio.current_time()))
        with trio.move_on_after(settings.stream_timeout_secs) as idle:
            message = await websocket.receive()
        if idle.cancelled_caught:
            log.info("stream inactive for %.0f s: finalising", settings.stream_timeout_secs)
            return
        event = (
            protocol.receive_text(message) if isinstance(message, str) else protocol.receive_bytes(message)
        )
        match event:
            case Audio(pcm):
                await stream.send_audio(resampler.push(pcm))
            case Finalize():
                await stream.finalize()
            case EndOfStream():
                return
            case KeepAlive():
                pass


class ClientNotReading(Exception):
    """A send stayed blocked for `STREAM_TIMEOUT_SECS`: the client stopped reading its results."""


async def _send_within(text: str, seconds: float) -> None:
    """Send one message, but give up on a client that has not read anything for `seconds`, so that it
    cannot hold a capacity slot forever."""
    with trio.move_on_after(seconds) as stuck:
        await websocket.send(text)
    if stuck.cancelled_caught:
        raise ClientNotReading(f"the client read nothing for {seconds:g} s")


async def _send(stream: Stream, protocol: NativeStream, state: ServerState, model: str) -> None:
    async for result in stream:
        if result.end_of_stream:  # the whole stream's words: an hour's is about 0.5 MB of JSON
            message = await trio.to_thread.run_sync(protocol.result_message, result)
        else:
            message = protocol.result_message(result)
        await _send_within(message, state.settings.stream_timeout_secs)
        if result.end_of_stream:
            state.metrics.audio_seconds.labels(model, "stream").inc(result.audio_seconds)
            return


def add_stream_route(app: Quart, state: ServerState) -> None:
    recognizer, engine, settings, metrics = state.recognizer, state.engine, state.settings, state.metrics

    async def close_with_error(
        protocol: NativeStream, exc: AmiraError, stream_id: str, transcription: str = ""
    ) -> None:
        metrics.errors.labels(exc.error_type).inc()
        with trio.move_on_after(settings.stream_timeout_secs):  # a client that reads nothing gets no more
            await websocket.send(protocol.error_message(exc, transcription, stream_id))
            await websocket.close(exc.kind.close_code, exc.error_type)

    @app.websocket("/v2/decode/stream/<model>")
    async def stream_endpoint(model: str) -> None:
        stream_id = new_id()
        protocol = NativeStream(settings.max_frame_bytes, settings.max_stream_audio_secs)
        await websocket.accept()
        try:
            engine.check_known(model)
            options = protocol.configure(websocket.args, settings.segment_options())
            resampler = StreamResampler(options.sample_rate)
            with state.streams.admit():
                log.info("stream stream_id=%s model=%s opened", stream_id, model)
                try:
                    await _run_stream(model, stream_id, protocol, resampler, options.segments)
                except Exception:
                    log.exception("stream %s failed", stream_id)
                    await close_with_error(
                        protocol, BackendError("internal error; see the server log"), stream_id
                    )
                finally:
                    log.info("stream stream_id=%s model=%s ended", stream_id, model)
        except AmiraError as exc:
            await close_with_error(protocol, exc, stream_id)

    async def _run_stream(
        model: str,
        stream_id: str,
        protocol: NativeStream,
        resampler: StreamResampler,
        segments: SegmentOptions,
    ) -> None:
        ending = StreamEnding()
        stream: Stream | None = None
        try:
            async with (
                recognizer.open_stream(model, options=segments) as stream,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(_receive, stream, protocol, resampler, state, ending)
                await _send(stream, protocol, state, model)
                nursery.cancel_scope.cancel()
        except AmiraError as exc:
            await close_with_error(protocol, exc, stream_id)
            return
        except BaseExceptionGroup as group:
            if group.subgroup(ClientNotReading) is not None:
                log.warning("stream %s: the client stopped reading; dropping the connection", stream_id)
                return
            failure = backend_failure(group) or ending.error
            if failure is None:
                raise
            await close_with_error(protocol, failure, stream_id, stream.transcription if stream else "")
            return
        with trio.move_on_after(settings.stream_timeout_secs):
            await websocket.close(CLOSE_GOING_AWAY if ending.shutdown else CLOSE_NORMAL)
