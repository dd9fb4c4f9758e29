"""A streaming client on trio-websocket: send audio in real time or as fast as possible, read results.

    async with open_stream_client("ws://127.0.0.1:8057/v2/decode/stream/default") as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_samples, samples, 0.1, True)  # 100 ms frames, real time
            async for result in client.results():
                print(result["transcription"])

Results are the server's JSON documents (dicts). `results()` ends after the final `COMPLETE`
result; an `ERROR` result raises `StreamError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from amira.core.audio import MODEL_SAMPLE_RATE, PCM16_SCALE
from amira.protocols.native_stream import END_OF_STREAM, FINALIZE_MESSAGE, KEEPALIVE

DEFAULT_KEEPALIVE_SECS = 5.0
CLOSE_WAIT_SECS = 5.0


class StreamError(Exception):
    """The server ended the stream with an `ERROR` result or closed it without a final result."""

    def __init__(self, message: str, error_type: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.error_type, self.code = error_type, code


def to_pcm16(samples: npt.NDArray[np.floating[Any]]) -> bytes:
    return (np.clip(samples, -1.0, (PCM16_SCALE - 1) / PCM16_SCALE) * PCM16_SCALE).astype("<i2").tobytes()


class StreamClient:
    def __init__(self, connection: WebSocketConnection, sample_rate: int) -> None:
        self.connection = connection
        self.sample_rate = sample_rate
        self.close_code: int | None = None

    async def send_pcm(self, pcm: bytes) -> None:
        await self.connection.send_message(pcm)

    async def keepalive(self) -> None:
        await self.connection.send_message(KEEPALIVE)

    async def finalize(self) -> None:
        await self.connection.send_message(FINALIZE_MESSAGE)

    async def end(self) -> None:
        await self.connection.send_message(END_OF_STREAM)

    async def send_samples_frame(self, samples: npt.NDArray[np.floating[Any]]) -> None:
        await self.send_pcm(to_pcm16(samples))

    async def send_samples(
        self, samples: npt.NDArray[np.floating[Any]], frame_seconds: float = 0.1, realtime: bool = False
    ) -> None:
        """Send float samples at the stream's rate in frames of `frame_seconds`, then end the stream.

        In real time, frames leave at the pace of the audio (against an absolute clock, so delays
        do not add up).
        """
        pcm = to_pcm16(samples)
        frame_bytes = 2 * max(1, round(frame_seconds * self.sample_rate))
        started = trio.current_time()
        for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
            if realtime:
                await trio.sleep_until(started + index * frame_seconds)
            await self.send_pcm(pcm[offset : offset + frame_bytes])
        await self.end()

    async def send_live(
        self,
        source: trio.MemoryReceiveChannel[npt.NDArray[np.floating[Any]]],
        keepalive_secs: float = DEFAULT_KEEPALIVE_SECS,
    ) -> None:
        """Send what a live source produces, as it comes, then end the stream when the source closes.

        While the source pauses for longer than `keepalive_secs`, keepalives go out, so that the
        server's inactivity timer does not end the stream.
        """
        async with source:
            while True:
                with trio.move_on_after(keepalive_secs) as pause:
                    try:
                        samples = await source.receive()
                    except trio.EndOfChannel:
                        break
                if pause.cancelled_caught:
                    await self.keepalive()
                else:
                    await self.send_samples_frame(samples)
        await self.end()

    async def wait_closed(self) -> int | None:
        """The close code the server sends; messages before it are dropped. Bound it with a cancel scope."""
        try:
            while True:
                await self.connection.get_message()
        except ConnectionClosed as closed:
            self.close_code = None if closed.reason is None else closed.reason.code
        return self.close_code

    async def results(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                message = await self.connection.get_message()
            except ConnectionClosed as closed:
                self.close_code = None if closed.reason is None else closed.reason.code
                message = f"closed with {self.close_code} before the final result"
                raise StreamError(message, None, self.close_code) from None
            result: dict[str, Any] = json.loads(message)
            if result.get("status") == "ERROR":
                with trio.move_on_after(CLOSE_WAIT_SECS):
                    await self.wait_closed()
                code = self.close_code
                error_type = result.get("error_type")
                raise StreamError(f"{error_type}: {result.get('message', '')}", error_type, code)
            yield result
            if result.get("status") == "COMPLETE":
                return


RESULT_BUFFER = 64


@asynccontextmanager
async def open_stream_client(url: str, sample_rate: int = MODEL_SAMPLE_RATE) -> AsyncIterator[StreamClient]:
    if sample_rate != MODEL_SAMPLE_RATE:
        url = f"{url}{'&' if '?' in url else '?'}sample_rate={sample_rate}"
    # Results wait unread up to RESULT_BUFFER deep: with trio-websocket's default of one, a frame
    # sent after the server closed (1006 on our side) makes the library drop a result still waiting
    # to be handed over, such as the server's ERROR.
    async with open_websocket_url(
        url, max_message_size=16 * 1024 * 1024, message_queue_size=RESULT_BUFFER
    ) as connection:
        yield StreamClient(connection, sample_rate)


async def stream_file(
    url: str,
    samples: npt.NDArray[np.floating[Any]],
    sample_rate: int,
    frame_seconds: float,
    realtime: bool,
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Stream one recording, call `show` with every result, and return the final one."""
    async with open_stream_client(url, sample_rate) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, realtime)
        final: dict[str, Any] = {}
        async for result in client.results():
            show(result)
            final = result
        return final
