"""Streaming on a real Triton: equal to the embedded backend, capacity, and Triton faults mid-stream."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.client import to_pcm16
from amira.models import shipped_repository
from amira.protocols.native_stream import END_OF_STREAM
from amira.testing.recordings import LIBRIVOX, read_recording
from amira.testing.servers import embedded_settings, start_server, wait_for_metric, write_model_sets
from amira.testing.ws_protocol import (
    StreamRecord,
    WireChecker,
    WirePhase,
    expect_complete,
    expect_error,
    read_until_closed,
)
from amira.tooling.triton_launcher import TritonProcess
from amira.tooling.triton_repository import build_repository
from tests.conftest import TritonFixture, started_triton

pytestmark = pytest.mark.triton  # every test here runs a real Triton

CLIP = read_recording(LIBRIVOX[0])
OWN_SET = ("preprocessor", "encoder_tdt", "decoder_joint_tdt", "vocab_test.txt")  # a set rich in tokens


def ws(base: str, model: str = "tdt") -> str:
    return base.replace("http://", "ws://") + f"/v2/decode/stream/{model}"


async def stream(url: str, samples: np.ndarray, frame_seconds: float, pace: float = 0.0) -> StreamRecord:
    """Stream `samples` (`pace` seconds between frames; 0: as fast as possible) and read to the close;
    the record passed the wire checker, whatever the stream's outcome."""
    async with open_websocket_url(url) as ws, trio.open_nursery() as nursery:

        async def send() -> None:
            step = round(frame_seconds * 16_000)
            try:
                for offset in range(0, samples.size, step):
                    await ws.send_message(to_pcm16(samples[offset : offset + step]))
                    await trio.sleep(pace)
                await ws.send_message(END_OF_STREAM)
            except ConnectionClosed:  # the server ended the stream early: the record says why
                pass

        nursery.start_soon(send)
        record = await read_until_closed(ws)
        nursery.cancel_scope.cancel()
    return record


@pytest.fixture
async def embedded_finals(nursery: trio.Nursery) -> dict[str, list[int]]:
    url = await start_server(nursery, embedded_settings())
    return {
        model: expect_complete(await stream(ws(url, model), CLIP, 0.1))["metadata"]["tokens"]
        for model in ("tdt", "rnnt")
    }


async def test_streams_on_triton_equal_the_embedded_backend(
    nursery: trio.Nursery, asr_triton: TritonFixture, embedded_finals: dict[str, list[int]]
) -> None:
    url = await start_server(nursery, asr_triton.settings())
    for model in ("tdt", "rnnt"):
        for frame_seconds in (0.1, 1.0):
            final = expect_complete(await stream(ws(url, model), CLIP, frame_seconds))
            assert final["metadata"]["tokens"] == embedded_finals[model], (model, frame_seconds)


async def test_ten_streams_on_triton_complete_and_the_eleventh_is_refused(
    nursery: trio.Nursery, asr_triton: TritonFixture
) -> None:
    base = await start_server(nursery, asr_triton.settings(max_concurrent_streams=10))
    url = ws(base)
    finals: list[dict] = []
    audio = CLIP[: 16_000 * 3]
    async with trio.open_nursery() as streams:
        for _ in range(10):
            streams.start_soon(lambda: collect(url, audio, finals))
        await wait_for_metric(base, "amira_active_streams", lambda active: active == 10, 30)
        async with open_websocket_url(url) as eleventh:
            expect_error(await read_until_closed(eleventh), "capacity_exceeded")
    assert len(finals) == 10
    assert len({tuple(f["metadata"]["tokens"]) for f in finals}) == 1


async def collect(url: str, audio: np.ndarray, finals: list[dict]) -> None:
    finals.append(expect_complete(await stream(url, audio, 0.1, pace=0.05)))


@pytest.fixture
async def own_triton(tmp_path: Path) -> TritonProcess:
    """A Triton of the test's own, to kill and restart."""
    repository = build_repository(
        shipped_repository(), tmp_path / "repository", "cpu",
        models=list(OWN_SET[:3]), instance_count=1,
    )  # fmt: skip
    async with started_triton(repository, tmp_path / "triton.log") as triton:
        yield triton
    assert triton.leftovers() == ([], [])  # killed and restarted: no stub, no shared memory left


def own_settings(triton: TritonProcess, tmp_path: Path, **overrides: object):
    sets = write_model_sets(tmp_path / "sets.toml", {"tdt": OWN_SET})
    return embedded_settings(triton_endpoint=triton.url, model_sets_file=sets, **overrides)


async def test_a_stream_rides_through_a_triton_restart(
    nursery: trio.Nursery, own_triton: TritonProcess, tmp_path: Path, embedded_finals: dict[str, list[int]]
) -> None:
    base = await start_server(nursery, own_settings(own_triton, tmp_path, inference_timeout_secs=1.0))
    url = ws(base)
    records: list[StreamRecord] = []
    async with trio.open_nursery() as inner:

        async def run() -> None:
            records.append(await stream(url, CLIP, 0.1, pace=0.05))

        inner.start_soon(run)
        # the stream is under way (its first window encoded) when Triton dies, and stays down 1 s
        await wait_for_metric(base, "amira_backend_calls_total", lambda calls: calls >= 1, 30, role="encoder")
        await own_triton.akill()
        await trio.sleep(1.0)
        await own_triton.astart()
    final = expect_complete(records[0])
    assert final["metadata"]["tokens"] == embedded_finals["tdt"]
    assert final["metadata"]["audio_seconds"] == round(CLIP.size / 16_000, 3)


async def test_a_stream_gets_backend_unavailable_when_triton_stays_down(
    nursery: trio.Nursery, own_triton: TritonProcess, tmp_path: Path
) -> None:
    settings = own_settings(own_triton, tmp_path, inference_timeout_secs=1.0, stream_outage_secs=1.0)
    base = await start_server(nursery, settings)
    async with open_websocket_url(ws(base)) as connection:
        await connection.send_message(to_pcm16(CLIP[: 16_000 * 3]))
        checker = WireChecker()
        partial = checker.feed(await connection.get_message())
        assert partial["status"] == "ACTIVE" and partial["committed"]
        await own_triton.akill()
        await connection.send_message(to_pcm16(CLIP[16_000 * 3 :]))
        with trio.fail_after(15):
            while checker.phase is WirePhase.STREAMING:
                checker.feed(await connection.get_message())
        with pytest.raises(ConnectionClosed) as closed:
            await connection.get_message()
        record = checker.close(closed.value.reason.code)
    assert expect_error(record, "backend_unavailable")["transcription"].startswith(partial["committed"])
    assert record.close_code == 1011
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/health")).status_code == 200


async def test_a_slow_model_times_out_one_stream_and_not_its_neighbour(
    nursery: trio.Nursery, asr_triton: TritonFixture, tmp_path: Path
) -> None:
    sets = write_model_sets(
        tmp_path / "sets.toml",
        {
            "tdt": OWN_SET,
            "slow": ("preprocessor", "encoder", "decoder_joint_slow"),
        },
    )
    base = await start_server(nursery, asr_triton.settings(sets, inference_timeout_secs=0.5))
    neighbour: list[dict] = []
    async with trio.open_nursery() as streams:
        streams.start_soon(lambda: collect(ws(base), CLIP[: 16_000 * 3], neighbour))
        slow = await stream(ws(base, "slow"), CLIP[: 16_000 * 3], 0.1)
    expect_error(slow, "timeout")
    assert slow.close_code == 1011
    assert neighbour[-1]["metadata"]["tokens"]


async def test_a_batch_in_flight_when_triton_dies_gets_backend_unavailable(tmp_path: Path) -> None:
    repository = build_repository(
        shipped_repository(), tmp_path / "repository", "cpu",
        models=list(OWN_SET[:3]), instance_count=1,
        parameters={"encoder_tdt": {"delay_seconds": "1.5"}},
    )  # fmt: skip
    triton = TritonProcess(repository, log_path=tmp_path / "triton.log", startup_timeout=120)
    await triton.astart()
    try:
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, own_settings(triton, tmp_path, inference_timeout_secs=3.0))
            async with httpx.AsyncClient(timeout=30) as http:
                responses = []

                async def post() -> None:
                    body = (CLIP[: 16_000 * 2] * 32767).astype("<i2").tobytes()
                    headers = {"Content-Type": "audio/pcm"}
                    responses.append(
                        await http.post(f"{base}/v2/decode/batch/tdt", content=body, headers=headers)
                    )

                async with trio.open_nursery() as requests:
                    requests.start_soon(post)
                    # the request is admitted, on its way to the slow encoder (1.5 s)
                    await wait_for_metric(base, "amira_active_batches", lambda active: active == 1, 30)
                    started = trio.current_time()
                    await triton.akill()
                assert trio.current_time() - started < 3.0
                assert responses[0].status_code == 503
                assert responses[0].json()["error_type"] == "backend_unavailable"
                assert (await http.get(f"{base}/health")).status_code == 200
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await triton.astop()
