"""Graceful shutdown of a real `amira serve` process: SIGTERM with streams open."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed

from amira.client import open_stream_client, to_pcm16
from amira.models import shipped_repository
from amira.testing.recordings import LIBRIVOX, read_recording
from amira.testing.ws_protocol import expect_complete, read_until_closed

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
                record = await read_until_closed(client.connection, seconds=30)
                finals[index] = expect_complete(record, close_code=1001)
                codes[index] = record.close_code
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
