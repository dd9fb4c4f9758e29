"""`WS /v2/decode/stream/{model}`: one trio nursery per stream.

Three tasks per stream, joined by bounded channels so that a slow model or a slow reader pushes
back on the client instead of growing memory:

* **receive** (`_receive`): reads frames, applies control bytes and messages, validates,
  resamples, and hands audio to the stream session; it waits while the session's input is full,
  and then Hypercorn stops reading the socket (its queues hold at most 10 messages);
* **infer**: the stream session's own task (`amira.stream_session`): windows, backend calls,
  decoding with the stream's pooled decoder state;
* **send** (`_send`): turns results into JSON frames; it waits on the socket, so a client that
  never reads stops the inference for its stream, not the server.

Whatever ends the stream, the capacity slot and the decoder states are released when the handler
leaves its nursery, which happens at once when the client drops the connection.
"""

from __future__ import annotations

import json
import logging

import attrs
import trio
from quart import Quart, websocket

from amira.backends.base import BackendError, BackendFailure
from amira.core.audio import StreamResampler
from amira.core.errors import BadRequest, CapacityExceeded, RequestError, TooLarge, UnknownModel
from amira.server.batch_body import parse_sample_rate
from amira.server.state import ServerState, new_id
from amira.settings import Settings
from amira.stream_session import Stream, StreamResult

log = logging.getLogger("amira.stream")

END_OF_STREAM = b"\x00"
KEEPALIVE = b"\x01"
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = (
    1000,
    1001,
    1008,
    1009,
    1011,
    1013,
)
CLOSE_CODES = {
    "bad_request": CLOSE_PROTOCOL,
    "bad_audio": CLOSE_PROTOCOL,
    "unknown_model": CLOSE_PROTOCOL,
    "too_large": CLOSE_TOO_BIG,
    "capacity_exceeded": CLOSE_TRY_LATER,
    "backend_unavailable": CLOSE_ERROR,
    "backend_error": CLOSE_ERROR,
    "timeout": CLOSE_ERROR,
}
HYPERCORN_FRAME_FACTOR = 2  # Hypercorn closes (1009, no message) only past twice our own limit


@attrs.define
class StreamEnding:
    """Why the receive task stopped: normally, with a client's error, or for the server's shutdown."""

    error: RequestError | None = None
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


def result_json(result: StreamResult) -> str:
    document: dict[str, object] = {
        "transcription": result.transcription,
        "status": "COMPLETE" if result.end_of_stream else "ACTIVE",
        "is_final": result.is_final,
        "committed": result.committed,
        "metadata": {
            "audio_seconds": round(result.audio_seconds, 3),
            "processing_time_ms": round(result.processing_time_ms, 1),
        },
    }
    if result.is_final:
        document["metadata"] |= {
            "tokens": list(result.tokens),
            "words": [w.to_json() for w in result.words],
        }
    return json.dumps(document)


def error_json(error_type: str, message: str, transcription: str, stream_id: str) -> str:
    return json.dumps(
        {
            "transcription": transcription,
            "status": "ERROR",
            "error_type": error_type,
            "message": f"{message} (stream {stream_id})",
        }
    )


def backend_failure(group: BaseExceptionGroup) -> BackendFailure | None:
    """The backend failure inside a nursery's exception group, if that is what ended the stream."""
    matched, _ = group.split(BackendFailure)
    if matched is None:
        return None
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched


async def _receive(
    stream: Stream, resampler: StreamResampler, state: ServerState, ending: StreamEnding
) -> None:
    """Frames in until the stream ends: by the client, by inactivity, or at the end of the
    shutdown drain. Then the rest of the audio is flushed, so the final covers every sample."""
    async with trio.open_nursery() as watch:
        watch.start_soon(_stop_when_drained, state, ending, watch.cancel_scope)
        try:
            await _read_frames(stream, resampler, state.settings)
        except RequestError as exc:
            ending.error = exc
        watch.cancel_scope.cancel()
    if ending.error is not None:
        raise ending.error
    await stream.send_audio(resampler.flush())
    await stream.end()


async def _stop_when_drained(state: ServerState, ending: StreamEnding, reading: trio.CancelScope) -> None:
    await state.drain_expired.wait()
    ending.shutdown = True
    reading.cancel()


async def _read_frames(stream: Stream, resampler: StreamResampler, settings: Settings) -> None:
    rate = FrameRate(settings.max_frames_per_sec)
    max_samples = settings.max_stream_audio_secs * resampler.rate
    received_samples = 0
    while True:
        await trio.sleep(rate.pause_before_next(trio.current_time()))
        with trio.move_on_after(settings.stream_timeout_secs) as idle:
            message = await websocket.receive()
        if idle.cancelled_caught:
            log.info("stream inactive for %.0f s: finalising", settings.stream_timeout_secs)
            return
        if isinstance(message, str):
            if await _control_message(stream, message):
                return
            continue
        if not message:
            raise BadRequest("empty binary frame")
        if len(message) > settings.max_frame_bytes:
            raise TooLarge(f"frame of {len(message)} bytes; the limit is {settings.max_frame_bytes}")
        if message == END_OF_STREAM:
            return
        if message == KEEPALIVE:
            continue
        if len(message) % 2:
            raise BadRequest(
                f"a frame of {len(message)} bytes is neither audio (even length) nor a control byte"
            )
        received_samples += len(message) // 2
        if received_samples > max_samples:
            raise TooLarge(f"the stream is longer than {settings.max_stream_audio_secs:g} s of audio")
        await stream.send_audio(resampler.push(message))


async def _control_message(stream: Stream, text: str) -> bool:
    """Apply a JSON control message; True when it ends the stream."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        message = None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "KeepAlive":
        return False
    if kind == "Finalize":
        await stream.finalize()
        return False
    if kind == "CloseStream":
        return True
    raise BadRequest("text frames must be a JSON control message: KeepAlive, Finalize or CloseStream")


class ClientNotReading(Exception):
    """A send stayed blocked for `STREAM_TIMEOUT_SECS`: the client stopped reading its results."""


async def _send_within(text: str, seconds: float) -> None:
    """Send one message, but give up on a client that has not read anything for `seconds`, so that it
    cannot hold a capacity slot forever."""
    with trio.move_on_after(seconds) as stuck:
        await websocket.send(text)
    if stuck.cancelled_caught:
        raise ClientNotReading(f"the client read nothing for {seconds:g} s")


async def _send(stream: Stream, state: ServerState, model: str) -> None:
    async for result in stream:
        await _send_within(result_json(result), state.settings.stream_timeout_secs)
        if result.end_of_stream:
            state.metrics.audio_seconds.labels(model, "stream").inc(result.audio_seconds)
            return


def add_stream_route(app: Quart, state: ServerState) -> None:
    recognizer, settings, metrics = state.recognizer, state.settings, state.metrics
    admission = state.stream_admission

    async def close_with_error(
        exc: RequestError | BackendFailure, stream_id: str, transcription: str = ""
    ) -> None:
        metrics.errors.labels(exc.error_type).inc()
        with trio.move_on_after(settings.stream_timeout_secs):  # a client that reads nothing gets no more
            await websocket.send(error_json(exc.error_type, str(exc), transcription, stream_id))
            await websocket.close(CLOSE_CODES[exc.error_type], exc.error_type)

    @app.websocket("/v2/decode/stream/<model>")
    async def stream_endpoint(model: str) -> None:
        stream_id = new_id()
        await websocket.accept()
        try:
            if model not in recognizer.configs:
                raise UnknownModel(
                    f"unknown model {model!r}; configured: {', '.join(sorted(recognizer.configs))}"
                )
            resampler = StreamResampler(parse_sample_rate(websocket.args.get("sample_rate", "16000")))
            try:
                admission.acquire_nowait()
            except trio.WouldBlock:
                metrics.rejected.labels("stream").inc()
                raise CapacityExceeded(
                    f"more than {settings.max_concurrent_streams} streams at once; retry shortly"
                ) from None
        except (RequestError, BackendFailure) as exc:
            await close_with_error(exc, stream_id)
            return
        metrics.active_streams.inc()
        log.info("stream stream_id=%s model=%s opened", stream_id, model)
        try:
            await _run_stream(model, stream_id, resampler)
        except Exception:
            log.exception("stream %s failed", stream_id)
            await close_with_error(BackendError("internal error; see the server log"), stream_id)
        finally:
            metrics.active_streams.dec()
            admission.release()
            log.info("stream stream_id=%s model=%s ended", stream_id, model)

    async def _run_stream(model: str, stream_id: str, resampler: StreamResampler) -> None:
        ending = StreamEnding()
        stream: Stream | None = None
        try:
            async with recognizer.open_stream(model) as stream, trio.open_nursery() as nursery:
                nursery.start_soon(_receive, stream, resampler, state, ending)
                await _send(stream, state, model)
                nursery.cancel_scope.cancel()
        except (RequestError, BackendFailure) as exc:
            await close_with_error(exc, stream_id)
            return
        except BaseExceptionGroup as group:
            if group.subgroup(ClientNotReading) is not None:
                log.warning("stream %s: the client stopped reading; dropping the connection", stream_id)
                return
            failure = backend_failure(group) or ending.error
            if failure is None:
                raise
            await close_with_error(failure, stream_id, stream.transcription if stream else "")
            return
        with trio.move_on_after(settings.stream_timeout_secs):
            await websocket.close(CLOSE_GOING_AWAY if ending.shutdown else CLOSE_NORMAL)
