"""Graceful shutdown of a real `amira serve` process: SIGTERM with streams open."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.client import open_stream_client, to_pcm16
from amira.models import shipped_repository
from amira.testing.recordings import LIBRIVOX, read_recording

DRAIN_SECS = 1.5


@pytest.fixture
async def served() -> AsyncIterator[tuple[trio.Process, str]]:
    env = os.environ | {
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": "0",
        "SHUTDOWN_DRAIN_SECS": str(DRAIN_SECS),
        "MODEL_SETS_FILE": str(shipped_repository() / "model_sets.toml"),
    }
    env.pop("TRITON_ENDPOINT", None)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "amira.cli", "serve"], env=env, stderr=subprocess.PIPE
    )
    try:
        log = b""
        with trio.fail_after(60):
            while not (match := re.search(rb"Running on (http://\S+)", log)):
                chunk = await process.stderr.receive_some()
                assert chunk, f"the server exited before it bound: {log.decode()}"
                log += chunk
        yield process, match.group(1).decode().replace("http://", "ws://")
    finally:
        if process.poll() is None:
            process.kill()
        with trio.fail_after(10):
            await process.wait()


async def test_sigterm_finalises_every_stream_with_1001_and_exits_within_the_drain(served: tuple) -> None:
    process, url = served
    audio = np.concatenate([read_recording(p) for p in LIBRIVOX])
    sent_before_signal: dict[int, float] = {}
    finals: dict[int, dict] = {}
    codes: dict[int, int] = {}
    all_streaming = trio.Event()

    async def one_stream(index: int) -> None:
        async with open_stream_client(f"{url}/v2/decode/stream/tdt") as client:

            async def send() -> None:
                pcm = to_pcm16(audio)
                started = trio.current_time()
                for frame, offset in enumerate(range(0, len(pcm), 3200)):  # 100 ms frames in real time
                    await trio.sleep_until(started + frame * 0.1)
                    if frame == 20:
                        sent_before_signal[index] = 2.0
                        if len(sent_before_signal) == 3:
                            all_streaming.set()
                    try:
                        await client.send_pcm(pcm[offset : offset + 3200])
                    except ConnectionClosed:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                async for result in client.results():
                    if result["status"] == "COMPLETE":
                        finals[index] = result
                with trio.fail_after(5):
                    codes[index] = await client.wait_closed()
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(one_stream, index)
        with trio.fail_after(30):
            await all_streaming.wait()
        signalled = trio.current_time()
        process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await process.wait() == 0
    assert trio.current_time() - signalled < DRAIN_SECS + 5
    assert codes == {0: 1001, 1: 1001, 2: 1001}
    for index, final in finals.items():
        assert final["is_final"] and final["metadata"]["tokens"]
        # everything sent before the signal, plus what arrived during the drain, is in the final
        assert final["metadata"]["audio_seconds"] >= sent_before_signal[index] + DRAIN_SECS - 0.5
    assert len(finals) == 3


async def test_sigterm_ends_the_dialects_live_streams_with_their_last_messages(served: tuple) -> None:
    """Deepgram: the last final `Results` and `Metadata`; Realtime: the open item's `completed`;
    both after the drain, then close 1001."""
    process, url = served
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
        process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await process.wait() == 0
    assert codes == {"deepgram": 1001, "openai": 1001}
    deepgram = received["deepgram"]
    assert deepgram[-1]["type"] == "Metadata" and deepgram[-1]["duration"] >= 1.0 + DRAIN_SECS - 0.5
    assert deepgram[-2]["type"] == "Results" and deepgram[-2]["is_final"]
    realtime = received["openai"]
    assert realtime[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert realtime[-1]["transcript"]
