"""WS /v2/decode/stream: real Hypercorn, real WebSocket clients (trio-websocket)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import soxr
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from amira.backends.embedded import EmbeddedBackend
from amira.client import open_stream_client, to_pcm16
from amira.engine import Engine
from amira.models import shipped_repository
from amira.protocols.native_batch import word_document
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.server.stream_handler import THREAD_RESAMPLE_BYTES
from amira.testing.conversation import without_timing
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.reference import reference_decoder
from amira.testing.servers import embedded_settings, start_server
from amira.testing.ws_protocol import (
    WireChecker,
    WirePhase,
    expect_complete,
    expect_error,
    read_until_closed,
)

CLIP = read_recording(LIBRIVOX[0])  # 7.1 s: several windows
SHORT = read_recording(CARDS[0])  # 1.1 s: shorter than one window (chunk + right context = 2.8 s)
MAX_FRAME = 262_144  # the whole clip fits in one frame


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, Recognizer]:
    """A real server on the embedded backend, with its recogniser at hand to look at the state pools."""
    settings = embedded_settings(stream_timeout_secs=1.5, max_frame_bytes=MAX_FRAME)
    recognizer = Recognizer(Engine(EmbeddedBackend(settings.model_repository), settings))
    binds = await nursery.start(serve, settings, recognizer)
    return binds[0].replace("http://", "ws://"), recognizer


def ws_url(server: tuple[str, Recognizer], model: str = "tdt", query: str = "") -> str:
    return f"{server[0]}/v2/decode/stream/{model}{query}"


async def stream(
    url: str, samples: np.ndarray, frame_seconds: float, realtime: bool = False
) -> tuple[list[dict], int]:
    """Send `samples` and read to the close; the wire rules (one COMPLETE, nothing after it, close
    1000) are checked by `read_until_closed` and `expect_complete`."""
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, realtime)
        record = await read_until_closed(client.connection)
    expect_complete(record)
    return record.results, record.close_code


@pytest.mark.parametrize("model", ["tdt", "rnnt"])
async def test_frame_size_invariance(server: tuple[str, Recognizer], model: str) -> None:
    finals = {}
    for frame_seconds in (0.01, 0.1, 1.0, CLIP.size / 16_000):
        results, _ = await stream(ws_url(server, model), CLIP, frame_seconds)
        finals[frame_seconds] = [without_timing(r) for r in results if r["is_final"]]
    assert len({json.dumps(f) for f in finals.values()}) == 1
    assert finals[0.1][-1]["metadata"]["tokens"]


@pytest.mark.parametrize("model", ["tdt", "rnnt"])
async def test_a_stream_shorter_than_a_window_equals_the_batch_result(
    server: tuple[str, Recognizer], model: str, tmp_path: Path
) -> None:
    """... and onnx-asr's decode of the same audio, a reference that is not the project's own."""
    batch = await server[1].transcribe(SHORT, model)
    results, _ = await stream(ws_url(server, model), SHORT, 0.1)
    assert results[-1]["metadata"]["tokens"] == list(batch.tokens)
    assert list(batch.tokens) == reference_decoder(shipped_repository(), model, tmp_path)(SHORT)[0]
    assert results[-1]["transcription"] == batch.text
    assert results[-1]["metadata"]["words"] == [word_document(w) for w in batch.words]  # times, confidences


async def test_partials_arrive_while_audio_is_still_sent(server: tuple[str, Recognizer]) -> None:
    audio = CLIP[: 16_000 * 5]
    async with open_stream_client(ws_url(server)) as client, trio.open_nursery() as nursery:
        done_sending = trio.Event()

        async def send() -> None:
            await client.send_samples(audio, 0.1, realtime=True)
            done_sending.set()

        nursery.start_soon(send)
        partials_before_end = 0

        def count(result: dict) -> None:
            nonlocal partials_before_end
            partials_before_end += not done_sending.is_set() and result["status"] == "ACTIVE"

        record = await read_until_closed(client.connection, on_message=count)
    expect_complete(record)
    results = record.results
    assert partials_before_end >= 2
    assert all(r["is_final"] is False for r in results[:-2])  # one segment: its final, then COMPLETE


async def test_control_messages(server: tuple[str, Recognizer]) -> None:
    pcm = to_pcm16(CLIP[: 16_000 * 3])
    async with open_websocket_url(ws_url(server)) as ws:
        await ws.send_message(pcm[:32_000])
        await ws.send_message(b"\x01")
        await ws.send_message(json.dumps({"type": "KeepAlive"}))
        await ws.send_message(json.dumps({"type": "Finalize"}))
        checker = WireChecker()
        finalized = checker.feed(await ws.get_message())
        while not finalized["is_final"]:
            finalized = checker.feed(await ws.get_message())
        assert finalized["status"] == "ACTIVE" and finalized["metadata"]["audio_seconds"] == 1.0
        await ws.send_message(pcm[32_000:])
        await ws.send_message(json.dumps({"type": "CloseStream"}))
        last = expect_complete(await read_until_closed(ws, checker=checker))
        assert last["committed"].startswith(finalized["committed"])
        assert last["metadata"]["audio_seconds"] == 3.0


@pytest.mark.parametrize(
    ("query", "frames", "error_type", "code"),
    [
        ("", [b"\x02"], "bad_request", 1008),
        ("", [b"\x00\x00\x00"], "bad_request", 1008),
        ("", [b""], "bad_request", 1008),
        ("", ["hello"], "bad_request", 1008),
        ("", [json.dumps({"type": "Dance"})], "bad_request", 1008),
        ("", [bytes(MAX_FRAME + 2)], "too_large", 1009),
        ("?sample_rate=100", [], "bad_audio", 1008),
        ("?sample_rate=abc", [], "bad_request", 1008),
    ],
)
async def test_malformed_frames_get_their_error_and_close_code(
    server: tuple[str, Recognizer], query: str, frames: list, error_type: str, code: int
) -> None:
    async with trio.open_nursery() as nursery:
        neighbour = trio.Event()
        neighbour_results: list = []

        async def well_behaved() -> None:
            neighbour_results.extend((await stream(ws_url(server), SHORT, 0.05, realtime=True))[0])
            neighbour.set()

        nursery.start_soon(well_behaved)
        async with open_websocket_url(ws_url(server, query=query)) as ws:
            await ws.send_message(to_pcm16(SHORT[:1600]))
            for frame in frames:
                await ws.send_message(frame)
            record = await read_until_closed(ws)
        assert "stream " in expect_error(record, error_type)["message"]
        assert record.close_code == code
        with trio.fail_after(10):
            await neighbour.wait()
    batch = await server[1].transcribe(SHORT, "tdt")
    assert neighbour_results[-1]["metadata"]["tokens"] == list(batch.tokens)


async def test_unknown_model(server: tuple[str, Recognizer]) -> None:
    async with open_websocket_url(ws_url(server, "nope")) as ws:
        record = await read_until_closed(ws)
    expect_error(record, "unknown_model")
    assert record.close_code == 1008 and record.statuses == ["ERROR"]


async def test_inactivity_finalises_and_keepalives_prevent_it(server: tuple[str, Recognizer]) -> None:
    """The final comes no sooner than the 1.5 s timeout after the last keepalive (a lower bound,
    which load cannot break), and a stream finalised earlier would refuse the keepalives."""
    arrived: list[float] = []
    async with open_stream_client(ws_url(server)) as client:
        await client.send_pcm(to_pcm16(SHORT))
        for _ in range(4):  # 2 s of keepalives every 0.5 s: past the 1.5 s timeout
            await trio.sleep(0.5)
            await client.keepalive()
        last_keepalive = trio.current_time()
        record = await read_until_closed(
            client.connection, seconds=10, on_message=lambda _: arrived.append(trio.current_time())
        )
    final = expect_complete(record)
    assert final["metadata"]["audio_seconds"] == round(SHORT.size / 16_000, 3)
    assert arrived[-1] - last_keepalive >= 1.5 - 0.05


async def test_a_fast_sender_gets_all_its_audio_transcribed(server: tuple[str, Recognizer]) -> None:
    long_audio = np.concatenate([read_recording(p) for p in LIBRIVOX] * 3)[: 16_000 * 60]
    results, _ = await stream(ws_url(server), long_audio, 0.5)
    assert results[-1]["metadata"]["audio_seconds"] == 60.0
    assert len(results[-1]["metadata"]["tokens"]) > 100


async def test_amira_stream_command(server: tuple[str, Recognizer], tmp_path) -> None:
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, soxr.resample(CLIP, 16_000, 44_100), 44_100)
    command = [
        sys.executable,
        "-m",
        "amira.cli",
        "stream",
        str(wav),
        "--url",
        ws_url(server),
        "--fast",
        "--json",
    ]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    checker = WireChecker()
    documents = [checker.feed(line) for line in result.stdout.decode().splitlines()]
    assert checker.phase is WirePhase.COMPLETE
    assert documents[-1]["metadata"]["audio_seconds"] == pytest.approx(CLIP.size / 16_000, abs=0.01)
    assert documents[-1]["metadata"]["tokens"]
    refused = await trio.run_process(
        [sys.executable, "-m", "amira.cli", "stream", str(wav), "--url", ws_url(server, "nope")],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and b"unknown_model" in refused.stderr


async def test_stream_metrics_move(server: tuple[str, Recognizer]) -> None:
    base = server[0].replace("ws://", "http://")

    async def samples() -> dict:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{base}/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = await samples()
    await stream(ws_url(server), SHORT, 0.1)
    async with open_websocket_url(ws_url(server)) as ws:
        await ws.send_message(b"\x02")
        expect_error(await read_until_closed(ws), "bad_request")
    after = await samples()
    audio = ("amira_audio_seconds_total", (("mode", "stream"), ("model", "tdt"), ("protocol", "native")))
    assert after[audio] - before.get(audio, 0) == pytest.approx(SHORT.size / 16_000, abs=0.01)
    errors = ("amira_errors_total", (("error_type", "bad_request"), ("protocol", "native")))
    assert after[errors] - before.get(errors, 0) == 1
    calls = ("amira_backend_call_seconds_count", (("model", "tdt"), ("role", "decoder_joint")))
    assert after[calls] > before.get(calls, 0)
    assert after[("amira_active_streams", ())] == 0


async def test_a_live_source_with_pauses_is_kept_alive(server: tuple[str, Recognizer]) -> None:
    """The server ends silent streams after 1.5 s here; a live source pausing 2 s is kept alive."""
    send, source = trio.open_memory_channel[np.ndarray](1)
    async with open_stream_client(ws_url(server)) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_live, source, 0.4)
        async with send:
            for piece in np.array_split(CLIP[: 16_000 * 3], 3):
                await send.send(piece)
                await trio.sleep(2.0)
        record = await read_until_closed(client.connection)
    assert expect_complete(record)["metadata"]["audio_seconds"] == 3.0


async def test_frames_past_the_rate_limit_are_read_more_slowly_not_refused(nursery: trio.Nursery) -> None:
    """`MAX_FRAMES_PER_SEC` = 50: 201 frames of 10 ms sent at once take the server at least 3 s to
    read (4 windows of one second; a lower bound, which load cannot break; unlimited, it takes a
    fraction of a second), and all their audio is transcribed."""
    base = await start_server(nursery, embedded_settings(max_frames_per_sec=50))
    frame = to_pcm16(SHORT[:160])
    async with open_websocket_url(f"{base.replace('http://', 'ws://')}/v2/decode/stream/tdt") as ws:
        started = trio.current_time()
        for _ in range(200):
            await ws.send_message(frame)
        await ws.send_message(b"\x00")
        record = await read_until_closed(ws)
    elapsed = trio.current_time() - started
    assert expect_complete(record)["metadata"]["audio_seconds"] == 2.0
    assert elapsed >= 3.0 - 0.05, elapsed


async def test_resampled_streams_do_not_depend_on_the_frame_size(server: tuple[str, Recognizer]) -> None:
    """At 48 kHz a frame of 1 s (96 KB) is resampled in a worker thread, one of 0.1 s on the event
    loop (`THREAD_RESAMPLE_BYTES`): the same samples reach the session either way."""
    clip = soxr.resample(CLIP, 16_000, 48_000).astype(np.float32)
    finals = []
    for frame_seconds in (0.1, 1.0):
        url = ws_url(server, "tdt")
        async with open_stream_client(url, sample_rate=48_000) as client, trio.open_nursery() as nursery:
            nursery.start_soon(client.send_samples, clip, frame_seconds)
            finals.append(expect_complete(await read_until_closed(client.connection)))
    assert 2 * 48_000 * 1.0 > THREAD_RESAMPLE_BYTES > 2 * 48_000 * 0.1
    assert (
        finals[0]["metadata"]["tokens"] and finals[0]["metadata"]["tokens"] == finals[1]["metadata"]["tokens"]
    )
    assert finals[0]["metadata"]["audio_seconds"] == finals[1]["metadata"]["audio_seconds"]
