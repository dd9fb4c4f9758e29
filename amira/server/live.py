"""The shell of the live dialects (`WS /v1/listen`, `WS /v1/realtime`): one trio nursery per stream.

The dialect's sans-IO protocol (`amira.protocols.live.LiveProtocol`) reads frames and writes
messages; this module moves them between the socket, the protocol and the stream session, with
the native stream's rules: one capacity slot per stream (per channel when the channels are
transcribed apart; and at most `MAX_STREAMS_PER_KEY` per API key), bounded channels everywhere (a
slow model or a slow reader pushes back on the client), the inactivity timeout and
`STREAM_MAX_IDLE_SECS`, the frame-rate cap, big frames resampled in a worker thread, and the
graceful shutdown (new streams refused, the drain, then the last results, then close 1001). Three tasks:

* **receive** (the nursery's body): frames to protocol events; the session is opened at the first
  audio, on the model set the protocol names then (a Realtime client chooses it by `session.update`);
* **session** (one per channel transcribed apart): the stream session's results to the dialect's
  messages, and between results, how far the session has settled (`progress_messages`);
* **send**: the one task that writes to the socket, so that replies to client events and results
  go out in order.
"""

from __future__ import annotations

import contextlib
import logging

import attrs
import trio
from quart import websocket

from amira.core.audio import MODEL_SAMPLE_RATE, StreamResampler
from amira.core.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, AmiraError, InternalError, ShuttingDown
from amira.protocols.live import ChannelAudio, Clear, LiveProtocol, Reply
from amira.protocols.native_stream import Audio, EndOfStream, Finalize, KeepAlive
from amira.server.security import matching_key, presented_key
from amira.server.state import ServerState
from amira.server.stream_handler import ClientNotReading, FrameRate, resampled, send_within, waiting_ends
from amira.stream_session import Stream

log = logging.getLogger("amira.live")

OUTGOING_CAPACITY = 16
PROGRESS_SECS = 0.05  # how often a session that sends no results is asked how far it has settled


def amira_error(group: BaseExceptionGroup) -> AmiraError | None:
    """The first AMIRA error inside a nursery's exception group."""
    matched, _ = group.split(AmiraError)
    error: BaseException | None = matched
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error if isinstance(error, AmiraError) else None


@attrs.define
class ChannelSession:
    """The stream session of one channel (of the only one, unless the dialect transcribes channels
    apart), its resampler, and whether its task is done."""

    stream: Stream
    resampler: StreamResampler
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class LiveStream:
    """One live stream's shell state: the protocol, the sessions (once opened) and the channels."""

    protocol: LiveProtocol
    state: ServerState
    dialect: str
    stream_id: str
    outgoing: trio.MemorySendChannel[str]
    sessions: list[ChannelSession] = attrs.field(factory=list)
    shutdown: bool = False
    opened: float = attrs.field(factory=trio.current_time)
    audio_seconds: float = 0.0  # received so far (of the first channel)

    async def open_sessions(self, nursery: trio.Nursery) -> None:
        """One session per channel the protocol transcribes. The stream's capacity slot covers the
        first; every other channel takes a slot of its own (a stereo stream costs what two mono
        streams cost), or the stream is refused with `capacity_exceeded`."""
        for channel in range(self.protocol.channels):
            await nursery.start(self.run_session, channel)

    async def run_session(
        self, channel: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """A session task: results to messages until the stream's last result; between results
        (every `PROGRESS_SECS` without one), how far the session has settled."""
        with self.state.streams.admit() if channel else contextlib.nullcontext():
            await self._run_session(channel, task_status)

    async def _run_session(self, channel: int, task_status: trio.TaskStatus[None]) -> None:
        model, options, protocol = self.protocol.model, self.protocol.segment_options, self.protocol
        async with (
            self.state.recognizer.open_stream(model, options=options) as stream,
            self.outgoing.clone() as outgoing,
        ):
            session = ChannelSession(stream, StreamResampler(protocol.sample_rate))
            self.sessions.append(session)
            task_status.started()
            try:
                results = stream.results()
                while True:
                    with trio.move_on_after(PROGRESS_SECS) as waiting:
                        result = await results.receive()
                    if waiting.cancelled_caught:
                        settled = stream.settled_seconds
                        messages = [] if settled is None else protocol.progress_messages(channel, settled)
                    else:
                        messages = protocol.result_messages(result, channel)
                    for message in messages:
                        await outgoing.send(message)
                    if not waiting.cancelled_caught and result.end_of_stream:
                        metrics = self.state.metrics
                        metrics.audio_seconds.labels(self.dialect, model, "stream").inc(result.audio_seconds)
                        return
            except trio.EndOfChannel:
                return  # the session failed: its error leaves the `async with`
            finally:
                session.done.set()

    async def receive(self, nursery: trio.Nursery) -> None:
        """Frames in until the stream ends (the client, inactivity, the shutdown drain); then the last
        audio is flushed and the sessions' last results and the dialect's closing messages follow."""
        async with trio.open_nursery() as watch:
            watch.start_soon(self._stop_when_drained, watch.cancel_scope)
            await self._read_frames(nursery)
            watch.cancel_scope.cancel()
        self.protocol.end_input()
        for session in self.sessions:
            await session.stream.send_audio(session.resampler.flush())
            await session.stream.end()
        for session in self.sessions:
            await session.done.wait()
        async with self.outgoing:
            for message in self.protocol.closing_messages():
                await self.outgoing.send(message)

    async def _stop_when_drained(self, reading: trio.CancelScope) -> None:
        await self.state.drain_expired.wait()
        self.shutdown = True
        reading.cancel()

    async def _audio(self, nursery: trio.Nursery, channel: int, pcm: bytes) -> None:
        if not self.sessions:
            await self.open_sessions(nursery)
        session = self.sessions[channel]
        samples = await resampled(session.resampler, pcm, self.state.engine.stream_calls.limiter)
        if channel == 0:
            self.audio_seconds += samples.size / MODEL_SAMPLE_RATE
        await session.stream.send_audio(samples)

    async def _read_frames(self, nursery: trio.Nursery) -> None:
        settings = self.state.settings
        rate = FrameRate(settings.max_frames_per_sec)
        while True:
            await trio.sleep(rate.pause_before_next(trio.current_time()))
            until, idle_deadline = waiting_ends(self.audio_seconds, settings, self.opened)
            with trio.move_on_at(until) as waiting:
                message = await websocket.receive()
            if waiting.cancelled_caught:
                why = "idle (ahead of its audio)" if until == idle_deadline else "inactive"
                log.info("stream %s %s: finalising", self.stream_id, why)
                return
            protocol = self.protocol
            events = (
                protocol.receive_text(message)
                if isinstance(message, str)
                else protocol.receive_bytes(message)
            )
            for event in events:
                match event:
                    case Audio(pcm):
                        await self._audio(nursery, 0, pcm)
                    case ChannelAudio(channel, pcm):
                        await self._audio(nursery, channel, pcm)
                    case Finalize() | Clear():
                        for session in self.sessions:
                            await session.stream.finalize()
                    case Reply(text):
                        await self.outgoing.send(text)
                    case EndOfStream():
                        return
                    case KeepAlive():
                        pass


async def _sender(messages: trio.MemoryReceiveChannel[str], patience: float) -> None:
    async with messages:
        async for message in messages:
            await send_within(message, patience)


async def _close_with_error(state: ServerState, dialect: str, error: AmiraError, message: str | None) -> None:
    """The dialect's error message, if it has one, then the close code of the error's type."""
    state.metrics.errors.labels(dialect, error.error_type).inc()
    with trio.move_on_after(state.settings.stream_timeout_secs):  # a client that reads nothing gets no more
        if message is not None:
            await websocket.send(message)
        await websocket.close(error.kind.close_code, error.error_type)


async def refuse_live(
    state: ServerState, dialect: str, error: AmiraError, message: str | None, subprotocol: str | None = None
) -> None:
    """Refuse a stream whose request is wrong (query, model): accept the upgrade, so that the client
    can read why, then the error message and its close code."""
    await websocket.accept(subprotocol=subprotocol)
    await _close_with_error(state, dialect, error, message)


async def serve_live(
    protocol: LiveProtocol, state: ServerState, dialect: str, stream_id: str, subprotocol: str | None = None
) -> None:
    """Accept the upgrade and run one live stream to its end, whatever ends it."""
    settings = state.settings
    await websocket.accept(subprotocol=subprotocol)

    async def close_with_error(error: AmiraError) -> None:
        await _close_with_error(state, dialect, error, protocol.error_message(error, stream_id))

    outgoing, messages = trio.open_memory_channel[str](OUTGOING_CAPACITY)
    live = LiveStream(protocol, state, dialect, stream_id, outgoing)
    try:
        if state.shutting_down.is_set():
            raise ShuttingDown("the server is shutting down; retry shortly (another instance)")
        key = matching_key(presented_key(websocket.headers, websocket.args), settings.api_keys)
        with state.streams_per_key.admit(key), state.streams.admit():
            log.info("stream stream_id=%s dialect=%s opened", stream_id, dialect)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sender, messages, settings.stream_timeout_secs)
                for message in protocol.opening_messages():
                    await outgoing.send(message)
                await live.receive(nursery)
    except AmiraError as exc:
        await close_with_error(exc)
        return
    except BaseExceptionGroup as group:
        if group.subgroup(ClientNotReading) is not None:
            log.warning("stream %s: the client stopped reading; dropping the connection", stream_id)
            return
        error = amira_error(group)
        if error is None:
            if group.subgroup(Exception) is None:  # cancelled: the client went away
                raise
            log.exception("stream %s failed", stream_id)
            error = InternalError("internal error; see the server log")
        await close_with_error(error)
        return
    finally:
        log.info("stream stream_id=%s dialect=%s ended", stream_id, dialect)
    with trio.move_on_after(settings.stream_timeout_secs):
        await websocket.close(CLOSE_GOING_AWAY if live.shutdown else CLOSE_NORMAL)
