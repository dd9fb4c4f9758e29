"""Graceful shutdown of a real `amira serve` process, stopped with SIGTERM: it ends as soon as the
work in flight is done, never waiting for idle connections.

* With only an idle keep-alive client connected (a load balancer, a scraper), it exits within 1 s.
* With streams running: `/ready` answers 503 at once and new work is refused (`shutting_down`);
  idle connections close at once; a batch request whose upload was under way completes; the
  streams go on for `SHUTDOWN_DRAIN_SECS`, then each gets its final result and close code 1001;
  the process exits within the drain + 1 s.
* The live dialects' streams (Deepgram, OpenAI Realtime) end the same way, with their own last
  messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.client import open_stream_client, to_pcm16
from amira.models import shipped_repository
from amira.testing.process import ServerProcess, running_server
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.ws_protocol import expect_complete, expect_error, read_until_closed

DRAIN_SECS = 1.5
CARD_PCM = to_pcm16(read_recording(CARDS[0]))


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    sets = str(shipped_repository() / "model_sets.toml")
    with running_server({"SHUTDOWN_DRAIN_SECS": str(DRAIN_SECS), "MODEL_SETS_FILE": sets}) as server:
        yield server
    assert "Traceback" not in server.log, server.log[-3000:]


async def exit_code(server: ServerProcess, within: float) -> int:
    with trio.fail_after(within):
        while (code := server.process.poll()) is None:
            await trio.sleep(0.01)
    return code


async def open_connection(server: ServerProcess) -> trio.SocketStream:
    host, port = server.url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def read_response(stream: trio.SocketStream) -> bytes:
    """One whole response (head and `Content-Length` body), which may come in several pieces."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
    while len(body) < length:
        body += await stream.receive_some(4096)
    return head + b"\r\n\r\n" + body


async def test_sigterm_with_an_idle_keep_alive_client_exits_within_a_second(server: ServerProcess) -> None:
    idle = await open_connection(server)
    async with idle:
        await idle.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(idle)).startswith(b"HTTP/1.1 200")
        server.signal(signal.SIGTERM)
        assert await exit_code(server, within=1.0) == 0


async def test_sigterm_finalises_streams_and_batches_in_flight_then_exits_at_once(
    server: ServerProcess,
) -> None:
    audio = to_pcm16(np.concatenate([read_recording(p) for p in LIBRIVOX]))
    finals: dict[int, dict] = {}
    codes: dict[int, int] = {}
    streaming = trio.Event()

    async def one_stream(index: int) -> None:
        async with open_stream_client(f"{server.ws_url}/v2/decode/stream/tdt") as client:

            async def send() -> None:
                started = trio.current_time()
                with contextlib.suppress(ConnectionClosed):
                    for frame, offset in enumerate(range(0, len(audio), 3200)):  # 100 ms, real time
                        await trio.sleep_until(started + frame * 0.1)
                        if frame == 20:
                            streaming.set()
                        await client.send_pcm(audio[offset : offset + 3200])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                record = await read_until_closed(client.connection, seconds=30)
                finals[index] = expect_complete(record, close_code=1001)
                codes[index] = record.close_code
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(one_stream, index)
        with trio.fail_after(30):
            await streaming.wait()
        await trio.sleep(0.2)
        idle = await open_connection(server)
        await idle.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(idle)).startswith(b"HTTP/1.1 200")
        uploading = await open_connection(server)  # a batch request whose body is half sent
        head = "POST /v2/decode/batch/default HTTP/1.1\r\nHost: x\r\nContent-Type: audio/pcm\r\n"
        await uploading.send_all(f"{head}Content-Length: {len(CARD_PCM)}\r\n\r\n".encode())
        await uploading.send_all(CARD_PCM[:1000])
        await trio.sleep(0.1)

        server.signal(signal.SIGTERM)
        signalled = trio.current_time()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            ready = await http.get("/ready")
            refused = await http.post(
                "/v2/decode/batch/default", content=CARD_PCM, headers={"Content-Type": "audio/pcm"}
            )
        assert ready.status_code == 503 and "shutting down" in ready.json()["message"]
        assert refused.status_code == 503 and refused.json()["error_type"] == "shutting_down"
        assert refused.headers["Retry-After"] == "1"
        async with open_websocket_url(f"{server.ws_url}/v2/decode/stream/default") as ws:
            refused_stream = await read_until_closed(ws)
        expect_error(refused_stream, "shutting_down")
        assert refused_stream.close_code == 1001
        with trio.fail_after(1):
            assert await idle.receive_some(4096) == b""  # closed at once
        await idle.aclose()
        await uploading.send_all(CARD_PCM[1000:])
        answer = b""
        with trio.fail_after(10):
            while chunk := await uploading.receive_some(65536):
                answer += chunk
        await uploading.aclose()
        assert answer.startswith(b"HTTP/1.1 200") and b"ten of clubs" in answer
    assert await exit_code(server, within=signalled + DRAIN_SECS + 1 - trio.current_time()) == 0
    assert codes == {0: 1001, 1: 1001, 2: 1001}
    for final in finals.values():
        assert final["is_final"] and final["metadata"]["tokens"]
        # everything sent before the signal, plus what arrived during the drain, is in the final
        assert final["metadata"]["audio_seconds"] >= 2.0 + DRAIN_SECS - 0.5
    assert len(finals) == 3


async def test_sigterm_ends_the_dialects_live_streams_with_their_last_messages(
    server: ServerProcess,
) -> None:
    """Deepgram: the last final `Results` and `Metadata`; Realtime: the open item's `completed`;
    both after the drain, then close 1001; the process exits within the drain + 1 s."""
    url = server.ws_url
    pcm = to_pcm16(np.concatenate([read_recording(p) for p in LIBRIVOX[:2]]))
    received: dict[str, list[dict]] = {"deepgram": [], "openai": []}
    codes: dict[str, int] = {}
    streaming = trio.Semaphore(0)

    async def stream(dialect: str, path: str, frame: Callable[[bytes], str | bytes]) -> None:
        async with open_websocket_url(f"{url}{path}") as ws:

            async def send() -> None:
                for number, offset in enumerate(range(0, len(pcm), 3200)):
                    await trio.sleep(0.1)
                    if number == 10:
                        streaming.release()
                    try:
                        await ws.send_message(frame(pcm[offset : offset + 3200]))
                    except ConnectionClosed:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                try:
                    while True:
                        received[dialect].append(json.loads(await ws.get_message()))
                except ConnectionClosed as closed:
                    codes[dialect] = closed.reason.code
                nursery.cancel_scope.cancel()

    def append(pcm: bytes) -> str:  # 16 kHz sent as Realtime's 24 kHz: the words do not matter here
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            stream, "deepgram", "/v1/listen?model=tdt&encoding=linear16&sample_rate=16000", bytes
        )
        nursery.start_soon(stream, "openai", "/v1/realtime?intent=transcription", append)
        with trio.fail_after(30):
            await streaming.acquire()
            await streaming.acquire()
        server.signal(signal.SIGTERM)
        signalled = trio.current_time()
    assert await exit_code(server, within=signalled + DRAIN_SECS + 1 - trio.current_time()) == 0
    assert codes == {"deepgram": 1001, "openai": 1001}
    deepgram = received["deepgram"]
    assert deepgram[-1]["type"] == "Metadata" and deepgram[-1]["duration"] >= 1.0 + DRAIN_SECS - 0.5
    assert deepgram[-2]["type"] == "Results" and deepgram[-2]["is_final"]
    realtime = received["openai"]
    assert realtime[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert realtime[-1]["transcript"]
