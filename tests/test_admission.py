"""Stream admission that can fail: every way a stream ends gives its slot back, checked at capacity.

Each case fills the server to `MAX_CONCURRENT_STREAMS` first (the gauge says so, and one more
client is refused with `capacity_exceeded` and 1013), then ends the last stream its own way: a
normal end, a TCP connection dropped without a close frame, a protocol error, inactivity, or a
client that never reads. The slot must come back (the `amira_active_streams` gauge drops), and a
well-behaved client must then be served: a refusal fails the test. At the end the gauge is back to
its value before the test and every decoder state is back in its pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from amira.backends.embedded import EmbeddedBackend
from amira.client import to_pcm16
from amira.engine import Engine
from amira.protocols.native_stream import END_OF_STREAM, FINALIZE_MESSAGE, KEEPALIVE
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.testing.raw_ws import RawStream, open_raw_stream
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.servers import embedded_settings, metric, wait_for_metric
from amira.testing.ws_protocol import StreamRecord, expect_complete, expect_error, read_until_closed

CAPACITY = 3
TIMEOUT = 1.5  # STREAM_TIMEOUT_SECS: inactivity, and how long a send may wait on a client not reading
KEEPALIVE_EVERY = TIMEOUT / 5
RELEASE_WITHIN = 30.0  # the slowest release, a never-reading client, takes about 8 s on 2 idle cores
PCM = to_pcm16(read_recording(CARDS[0]))
MINUTE_PCM = to_pcm16(np.concatenate([read_recording(p) for p in LIBRIVOX] * 2)[: 16_000 * 60])
FRAME = 32_000  # 1 s of audio
# A final of the minute holds all its tokens and words: about 11 KB. This many of them (about 9 MB)
# overflow the server's socket send buffer (Linux grows it to net.ipv4.tcp_wmem's 4 MB maximum) and
# the never-reading client's 4 KB receive buffer, so the server's sends stall.
UNREAD_FINALS = 800


class Server:
    def __init__(self, base: str, recognizer: Recognizer) -> None:
        self.base, self.recognizer = base, recognizer
        self.url = base.replace("http://", "ws://") + "/v2/decode/stream/tdt"

    async def active_streams(self) -> float:
        return await metric(self.base, "amira_active_streams")

    async def wait_for_active(self, value: float) -> None:
        await wait_for_metric(self.base, "amira_active_streams", lambda v: v == value, RELEASE_WITHIN)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    settings = embedded_settings(
        stream_timeout_secs=TIMEOUT, max_concurrent_streams=CAPACITY, max_frame_bytes=2 * FRAME
    )
    recognizer = Recognizer(Engine(EmbeddedBackend(settings.model_repository), settings))
    binds = await nursery.start(serve, settings, recognizer)
    return Server(binds[0], recognizer)


async def keep_alive(send: Callable[[bytes], Awaitable[None]], stop: trio.Event) -> None:
    """Keepalives until `stop`, or until the server has gone."""
    while not stop.is_set():
        with trio.move_on_after(KEEPALIVE_EVERY):
            await stop.wait()
        if stop.is_set():
            return
        try:
            await send(KEEPALIVE)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def filler(url: str, records: list[StreamRecord], *, task_status: trio.TaskStatus[trio.Event]) -> None:
    """A stream that holds its slot with keepalives until told to end; then it ends normally."""
    stop = trio.Event()
    async with open_websocket_url(url) as ws:
        await ws.send_message(PCM[:8000])
        task_status.started(stop)
        await keep_alive(ws.send_message, stop)
        await ws.send_message(END_OF_STREAM)
        records.append(await read_until_closed(ws))


async def refused(url: str) -> None:
    async with open_websocket_url(url) as ws:
        expect_error(await read_until_closed(ws), "capacity_exceeded")


async def served(url: str) -> None:
    """A well-behaved client: its audio, the end, the one COMPLETE. A refusal fails the test."""
    async with open_websocket_url(url) as ws:
        await ws.send_message(PCM)
        await ws.send_message(END_OF_STREAM)
        assert expect_complete(await read_until_closed(ws))["metadata"]["tokens"]


async def normal_end(ws: WebSocketConnection, stop: trio.Event) -> None:
    stop.set()
    await ws.send_message(END_OF_STREAM)
    expect_complete(await read_until_closed(ws))


async def protocol_error(ws: WebSocketConnection, stop: trio.Event) -> None:
    stop.set()
    await ws.send_message(b"\x02")
    expect_error(await read_until_closed(ws), "bad_request")


async def inactivity(ws: WebSocketConnection, stop: trio.Event) -> None:
    stop.set()  # no more frames of any kind: the server finalises after TIMEOUT
    expect_complete(await read_until_closed(ws, seconds=RELEASE_WITHIN))


WEBSOCKET_ENDINGS = {"normal end": normal_end, "protocol error": protocol_error, "inactivity": inactivity}


async def tcp_drop(raw: RawStream, stop: trio.Event) -> None:
    stop.set()
    await raw.drop()


async def never_reads(raw: RawStream, stop: trio.Event) -> None:
    """A minute of audio, then finals of it asked for again and again and never read: the server's
    sends stall while the client keeps sending keepalives, so only the send timeout
    (`STREAM_TIMEOUT_SECS` without progress) can free the slot."""
    for offset in range(0, len(MINUTE_PCM), FRAME):
        await raw.send_binary(MINUTE_PCM[offset : offset + FRAME])
    for _ in range(UNREAD_FINALS):
        await raw.send_text(FINALIZE_MESSAGE)


RAW_ENDINGS = {"tcp drop": tcp_drop, "never reads": never_reads}


OpenVictim = Callable[[trio.Nursery, AsyncExitStack], Awaitable[Callable[[], Awaitable[None]]]]


async def fill_and_release(server: Server, open_victim: OpenVictim) -> None:
    """Fill to capacity (the last stream is the victim), check it is full, release the victim, check
    that its slot comes back and serves a well-behaved client; then every slot comes back."""
    before = await server.active_streams()
    records: list[StreamRecord] = []
    async with trio.open_nursery() as nursery, AsyncExitStack() as cleanup:
        stops = [await nursery.start(filler, server.url, records) for _ in range(CAPACITY - 1)]
        release = await open_victim(nursery, cleanup)
        await server.wait_for_active(CAPACITY)
        await refused(server.url)
        await release()
        await server.wait_for_active(CAPACITY - 1)
        await served(server.url)
        for stop in stops:
            stop.set()
    assert len(records) == CAPACITY - 1
    for record in records:
        expect_complete(record)
    await server.wait_for_active(before)
    pool = server.recognizer.engine.model_set("tdt").states
    with trio.fail_after(RELEASE_WITHIN):
        while pool.available != pool.size:
            await trio.sleep(0.05)


@pytest.mark.parametrize("ending", list(WEBSOCKET_ENDINGS))
async def test_a_stream_that_ends_gives_its_slot_back(server: Server, ending: str) -> None:
    async def open_victim(nursery: trio.Nursery, _: AsyncExitStack) -> Callable[[], Awaitable[None]]:
        ws = await nursery.start(hold_open, server.url)
        stop = trio.Event()
        nursery.start_soon(keep_alive, ws.send_message, stop)
        return lambda: WEBSOCKET_ENDINGS[ending](ws, stop)

    await fill_and_release(server, open_victim)


async def hold_open(url: str, *, task_status: trio.TaskStatus[WebSocketConnection]) -> None:
    """A trio-websocket connection that stays open until the server closes it."""
    async with open_websocket_url(url) as ws:
        await ws.send_message(PCM[:8000])
        task_status.started(ws)
        with trio.move_on_after(RELEASE_WITHIN * 2):
            while not ws.closed:
                await trio.sleep(0.05)


@pytest.mark.parametrize("ending", list(RAW_ENDINGS))
async def test_a_client_that_drops_or_never_reads_gives_its_slot_back(server: Server, ending: str) -> None:
    async def open_victim(nursery: trio.Nursery, cleanup: AsyncExitStack) -> Callable[[], Awaitable[None]]:
        raw = await open_raw_stream(server.url, receive_buffer=4096)
        cleanup.push_async_callback(raw.drop)  # a failing test must not leave the server stuck on it
        await raw.send_binary(PCM[:8000])
        stop = trio.Event()
        nursery.start_soon(keep_alive, raw.send_binary, stop)
        return lambda: RAW_ENDINGS[ending](raw, stop)

    await fill_and_release(server, open_victim)
