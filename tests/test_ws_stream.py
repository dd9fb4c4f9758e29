"""WS /v2/decode/stream: real Hypercorn, real WebSocket clients (trio-websocket)."""

from __future__ import annotations

import json
import sys

import httpx
import numpy as np
import pytest
import soundfile
import soxr
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.backends.embedded import EmbeddedBackend
from amira.client import StreamError, open_stream_client, to_pcm16
from amira.engine import Engine
from amira.protocols.native_batch import word_document
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.testing.conversation import check_segment_rules, without_timing
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.servers import embedded_settings

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
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, realtime)
        results = [result async for result in client.results()]
        with trio.fail_after(5):
            code = await client.wait_closed()
    return results, code


def check_results(results: list[dict]) -> None:
    """api.md's rules: one `COMPLETE` at the end, made of the segment finals; within a segment,
    committed only grows and transcription always starts with it."""
    assert [r["status"] for r in results].count("COMPLETE") == 1
    check_segment_rules(results)


@pytest.mark.parametrize("model", ["tdt", "rnnt"])
async def test_frame_size_invariance(server: tuple[str, Recognizer], model: str) -> None:
    finals = {}
    for frame_seconds in (0.01, 0.1, 1.0, CLIP.size / 16_000):
        results, code = await stream(ws_url(server, model), CLIP, frame_seconds)
        assert code == 1000
        check_results(results)
        finals[frame_seconds] = [without_timing(r) for r in results if r["is_final"]]
    assert len({json.dumps(f) for f in finals.values()}) == 1
    assert finals[0.1][-1]["metadata"]["tokens"]


@pytest.mark.parametrize("model", ["tdt", "rnnt"])
async def test_a_stream_shorter_than_a_window_equals_the_batch_result(
    server: tuple[str, Recognizer], model: str
) -> None:
    batch = await server[1].transcribe(SHORT, model)
    results, _ = await stream(ws_url(server, model), SHORT, 0.1)
    assert results[-1]["metadata"]["tokens"] == list(batch.tokens)
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
        results, partials_before_end = [], 0
        async for result in client.results():
            results.append(result)
            if not done_sending.is_set() and result["status"] == "ACTIVE":
                partials_before_end += 1
    check_results(results)
    assert partials_before_end >= 2
    assert all(r["is_final"] is False for r in results[:-2])  # one segment: its final, then COMPLETE


async def test_control_messages(server: tuple[str, Recognizer]) -> None:
    pcm = to_pcm16(CLIP[: 16_000 * 3])
    async with open_websocket_url(ws_url(server)) as ws:
        await ws.send_message(pcm[:32_000])
        await ws.send_message(b"\x01")
        await ws.send_message(json.dumps({"type": "KeepAlive"}))
        await ws.send_message(json.dumps({"type": "Finalize"}))
        finalized = json.loads(await ws.get_message())
        while not finalized["is_final"]:
            finalized = json.loads(await ws.get_message())
        assert finalized["status"] == "ACTIVE" and finalized["metadata"]["audio_seconds"] == 1.0
        await ws.send_message(pcm[32_000:])
        await ws.send_message(json.dumps({"type": "CloseStream"}))
        last = json.loads(await ws.get_message())
        while last["status"] != "COMPLETE":
            last = json.loads(await ws.get_message())
        assert last["is_final"] and last["committed"].startswith(finalized["committed"])
        assert last["metadata"]["audio_seconds"] == 3.0
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1000


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
            message = json.loads(await ws.get_message())
            while message["status"] != "ERROR":
                message = json.loads(await ws.get_message())
            assert message["error_type"] == error_type and "stream " in message["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == code
        with trio.fail_after(10):
            await neighbour.wait()
    batch = await server[1].transcribe(SHORT, "tdt")
    assert neighbour_results[-1]["metadata"]["tokens"] == list(batch.tokens)


async def test_unknown_model(server: tuple[str, Recognizer]) -> None:
    async with open_stream_client(ws_url(server, "nope")) as client:
        with pytest.raises(StreamError) as error:
            async for _ in client.results():
                pass
    assert error.value.error_type == "unknown_model" and error.value.code == 1008


async def test_capacity_and_release(server: tuple[str, Recognizer]) -> None:
    url, recognizer = ws_url(server), server[1]
    pool = recognizer.engine.model_set("tdt").states
    async with trio.open_nursery() as nursery:
        clients, finals = [], []
        for _ in range(10):
            client = await nursery.start(hold_stream, url, finals)
            clients.append(client)
        assert pool.available == pool.size - 30  # a state, a scratch state and a checkpoint per stream
        async with open_stream_client(url) as eleventh:
            with pytest.raises(StreamError) as refused:
                async for _ in eleventh.results():
                    pass
        assert refused.value.error_type == "capacity_exceeded" and refused.value.code == 1013
        await clients[0].end()  # a normal end frees a slot ...
        with trio.fail_after(1):
            while len(finals) < 1:
                await trio.sleep(0.01)
        await accepted_within_a_second(url)
        await clients[1].connection._stream.aclose()  # ... and so does a client that drops its TCP connection
        await accepted_within_a_second(url)
        for client in clients[2:]:
            await client.end()
    assert len(finals) == 9
    with trio.fail_after(2):
        while pool.available != pool.size:
            await trio.sleep(0.01)


async def hold_stream(url: str, finals: list, task_status: trio.TaskStatus) -> None:
    async with open_stream_client(url) as client:
        await client.send_pcm(to_pcm16(SHORT[:8000]))
        task_status.started(client)
        try:
            async for result in client.results():
                if result["status"] == "COMPLETE":
                    finals.append(result)
        except (StreamError, ConnectionClosed):
            pass


async def accepted_within_a_second(url: str) -> None:
    with trio.fail_after(1):
        while True:
            async with open_stream_client(url) as client:
                await client.end()
                try:
                    async for result in client.results():
                        if result["status"] == "COMPLETE":
                            return
                except StreamError as error:
                    assert error.error_type == "capacity_exceeded"
            await trio.sleep(0.05)


async def test_inactivity_finalises_and_keepalives_prevent_it(server: tuple[str, Recognizer]) -> None:
    async with open_stream_client(ws_url(server)) as client:
        await client.send_pcm(to_pcm16(SHORT))
        for _ in range(4):  # 2 s of keepalives every 0.5 s: past the 1.5 s timeout
            await trio.sleep(0.5)
            await client.keepalive()
        with trio.fail_after(5):
            results = [result async for result in client.results()]
            started = trio.current_time()
            assert await client.wait_closed() == 1000
        assert results[-1]["status"] == "COMPLETE"
        assert results[-1]["metadata"]["audio_seconds"] == round(SHORT.size / 16_000, 3)
        assert trio.current_time() - started < 1.0


async def test_a_fast_sender_gets_all_its_audio_transcribed(server: tuple[str, Recognizer]) -> None:
    long_audio = np.concatenate([read_recording(p) for p in LIBRIVOX] * 3)[: 16_000 * 60]
    results, code = await stream(ws_url(server), long_audio, 0.5)
    assert code == 1000
    check_results(results)
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
    documents = [json.loads(line) for line in result.stdout.decode().splitlines()]
    check_results(documents)
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
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.get_message()
    after = await samples()
    audio = ("amira_audio_seconds_total", (("mode", "stream"), ("model", "tdt")))
    assert after[audio] - before.get(audio, 0) == pytest.approx(SHORT.size / 16_000, abs=0.01)
    errors = ("amira_errors_total", (("error_type", "bad_request"),))
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
        results = [r async for r in client.results()]
    assert [r["status"] for r in results].count("COMPLETE") == 1
    assert results[-1]["metadata"]["audio_seconds"] == 3.0
