"""The whole server on a real Triton: real Hypercorn, a real HTTP client, Triton from the pytriton wheel.

The session's Triton (`asr_triton` in `conftest.py`) serves the shipped model sets and the
fault-injection models; the tests that stop Triton start their own.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
import trio

from amira import open_recognizer
from amira.models import shipped_repository
from amira.testing.recordings import CARDS, LIBRIVOX, MODEL_SETS, RECORDINGS, pcm16, read_recording
from amira.testing.reference import reference_decoder
from amira.testing.servers import embedded_settings, start_server, write_model_sets
from amira.tooling.triton_launcher import TritonProcess
from amira.tooling.triton_repository import build_repository
from tests.conftest import (
    BROKEN_MAX_FEATURES,
    SLOW_DELAY,
    SLOW_JOINT_DELAY,
    TritonFixture,
    triton_inferences,
    wait_for_inferences,
)
from tests.test_http_batch import ERROR_CASES, bodies, post, wav_bytes

pytestmark = pytest.mark.triton  # every test here runs a real Triton


def batch_url(base: str, model: str) -> str:
    return f"{base}/v2/decode/batch/{model}"


async def test_health_ready_and_models(http: httpx.AsyncClient, triton_server: str) -> None:
    health = (await http.get(f"{triton_server}/health")).json()
    assert health["status"] == "healthy" and health["backend"] == "triton"
    ready = await http.get(f"{triton_server}/ready")
    sets = ["cache_aware", "cache_aware_batch_first", "default", "default-streaming", "rnnt", "tdt"]
    document = ready.json()
    endpoints = document.pop("endpoints")
    assert ready.status_code == 200 and document == {"status": "ready", "models": sets}
    [endpoint] = endpoints
    assert endpoint["state"] == "healthy" and endpoint["in_flight"] == 0 and "reason" not in endpoint
    models = {m["name"]: m for m in (await http.get(f"{triton_server}/v2/models")).json()["models"]}
    assert sorted(models) == sets
    assert models["tdt"]["type"] == "tdt" and models["rnnt"]["type"] == "rnnt"
    assert models["rnnt"]["models"] == {
        "preprocessor": "preprocessor",
        "encoder": "encoder_rnnt",
        "decoder_joint": "decoder_joint_rnnt",
    }


@pytest.mark.parametrize("model", MODEL_SETS)
async def test_transcripts_equal_embedded_and_onnx_asr(
    http: httpx.AsyncClient, triton_server: str, tmp_path: Path, model: str
) -> None:
    """Every recording (raw PCM), and every body form on two of them: Triton's tokens and text are
    the embedded backend's, which are onnx-asr's."""
    reference = reference_decoder(shipped_repository(), model, tmp_path)
    async with open_recognizer(embedded_settings()) as embedded:
        for path in RECORDINGS:
            samples = read_recording(path)
            expected = await embedded.transcribe(samples, model)
            assert list(expected.tokens) == reference(samples)[0], path.name
            forms = (
                bodies(samples)
                if path in (LIBRIVOX[1], CARDS[0])
                else {"raw-pcm": bodies(samples)["raw-pcm"]}
            )
            for form, (content_type, body) in forms.items():
                response = await post(http, batch_url(triton_server, model), content_type, body)
                assert response.status_code == 200, (path.name, form, response.text)
                document = response.json()
                assert document["metadata"]["tokens"] == list(expected.tokens), (path.name, form)
                assert document["transcription"] == expected.text, (path.name, form)
                assert document["metadata"]["audio_length_samples"] == samples.size


@pytest.mark.parametrize("rate", [8000, 44100])
async def test_resampled_wav_equals_the_embedded_server(
    nursery: trio.Nursery, http: httpx.AsyncClient, triton_server: str, rate: int
) -> None:
    embedded_url = await start_server(nursery, embedded_settings())
    wav = wav_bytes(soxr.resample(read_recording(LIBRIVOX[1]), 16_000, rate).astype(np.float32), rate)
    triton_answer = await post(http, batch_url(triton_server, "default"), "audio/wav", wav)
    embedded_answer = await post(http, batch_url(embedded_url, "default"), "audio/wav", wav)
    assert triton_answer.status_code == embedded_answer.status_code == 200, triton_answer.text
    ours, theirs = triton_answer.json(), embedded_answer.json()
    assert ours["metadata"]["tokens"] == theirs["metadata"]["tokens"] and ours["metadata"]["tokens"]
    assert ours["transcription"] == theirs["transcription"]
    assert ours["metadata"]["audio_length_samples"] == theirs["metadata"]["audio_length_samples"]


async def test_request_errors_on_the_triton_server(http: httpx.AsyncClient, triton_server: str) -> None:
    """Every row of the error table that the request alone decides (`ERROR_CASES` of the embedded
    tests), and `unknown_model`."""
    for name, content_type, body, query, status, error_type in ERROR_CASES:
        response = await post(http, batch_url(triton_server, "default"), content_type, body, **query)
        assert response.status_code == status, (name, response.text)
        assert response.json()["error_type"] == error_type and response.json()["error"], name
    # answered before the body is read: the connection is closed rather than left hanging (keep-alive)
    for _ in range(3):
        response = await post(http, batch_url(triton_server, "nope"), "audio/pcm", bytes(16 * 65536 - 2))
        assert response.status_code == 404 and response.json()["error_type"] == "unknown_model"
    assert (await http.get(f"{triton_server}/ready")).status_code == 200


async def test_backend_error_and_timeout(
    nursery: trio.Nursery, http: httpx.AsyncClient, asr_triton: TritonFixture
) -> None:
    """Triton answering with an error is `502 backend_error`; a call slower than
    `INFERENCE_TIMEOUT_SECS` is `504 timeout`, after about that long."""
    timeout = 0.5
    url = await start_server(
        nursery, asr_triton.fault_settings("broken", "slow_joint", inference_timeout_secs=timeout)
    )
    short = pcm16(read_recording(CARDS[0]))
    assert (await post(http, batch_url(url, "broken"), "audio/pcm", short)).status_code == 200
    long = np.concatenate([read_recording(p) for p in LIBRIVOX[:2]])  # 10.09 s: over 1000 feature frames
    assert long.size > BROKEN_MAX_FEATURES * 160
    response = await post(http, batch_url(url, "broken"), "audio/pcm", pcm16(long))
    assert response.status_code == 502, response.text
    assert response.json()["error_type"] == "backend_error" and "encoder_broken" in response.json()["error"]

    finished = await triton_inferences(asr_triton.url, "decoder_joint_slow")
    began = time.monotonic()
    response = await post(http, batch_url(url, "slow_joint"), "audio/pcm", short)
    elapsed = time.monotonic() - began
    assert response.status_code == 504, response.text
    assert response.json()["error_type"] == "timeout"
    assert timeout <= elapsed < SLOW_JOINT_DELAY, elapsed  # the answer did not wait for the slow model
    # the server is fine afterwards
    assert (await post(http, batch_url(url, "broken"), "audio/pcm", short)).status_code == 200
    # the slow instance finishes the call the server gave up on before the next test uses it
    await wait_for_inferences(asr_triton.url, "decoder_joint_slow", finished + 1)


async def test_concurrent_batches_are_capped(
    nursery: trio.Nursery, http: httpx.AsyncClient, asr_triton: TritonFixture
) -> None:
    """`MAX_CONCURRENT_BATCHES=2`, six requests at once on the slow set (1 s per encoder call, two
    Triton instances): two are served, four are refused at once with `503 capacity_exceeded` and
    `Retry-After`, and never reach Triton; once the two are done, the next two are served."""
    url = await start_server(nursery, asr_triton.fault_settings("slow", max_concurrent_batches=2))
    body = pcm16(read_recording(CARDS[0]))
    results: list[tuple[float, httpx.Response]] = []

    async def stats_count() -> int:
        return await triton_inferences(asr_triton.url, "encoder_slow")

    async def one(began: float) -> None:
        response = await post(http, batch_url(url, "slow"), "audio/pcm", body)
        results.append((time.monotonic() - began, response))

    before = await stats_count()
    began = time.monotonic()
    async with trio.open_nursery() as wave:
        for _ in range(6):
            wave.start_soon(one, began)
    served = [(t, r) for t, r in results if r.status_code == 200]
    refused = [(t, r) for t, r in results if r.status_code != 200]
    assert len(served) == 2 and len(refused) == 4, [r.text for _, r in results]
    for elapsed, response in refused:
        assert response.status_code == 503 and response.json()["error_type"] == "capacity_exceeded"
        assert response.headers["Retry-After"] == "1"
        assert elapsed < SLOW_DELAY, elapsed  # refused at once, not queued
    assert all(elapsed >= SLOW_DELAY for elapsed, _ in served)
    first, second = sorted(elapsed for elapsed, _ in served)
    assert second - first < SLOW_DELAY / 2  # side by side: one after the other, they would end 1 s apart
    assert await stats_count() - before == 2  # only the served requests reached Triton

    results.clear()
    async with trio.open_nursery() as wave:
        for _ in range(2):
            wave.start_soon(one, time.monotonic())
    assert [r.status_code for _, r in results] == [200, 200]
    metrics = (await http.get(f"{url}/metrics")).text
    assert 'amira_errors_total{error_type="capacity_exceeded",protocol="native"} 4.0' in metrics


async def wait_for_status(http: httpx.AsyncClient, url: str, status: int, within: float) -> float:
    """Poll `url` until it answers `status`; returns how long that took."""
    began = time.monotonic()
    with trio.fail_after(within):
        while (await http.get(url)).status_code != status:
            await trio.sleep(0.1)
    return time.monotonic() - began


async def test_triton_down_at_start_and_while_running(
    nursery: trio.Nursery, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A Triton of its own: AMIRA starts while it is down and becomes ready by itself once it is up;
    Triton killed while AMIRA runs makes `/ready` 503 and batches `503 backend_unavailable` within
    `INFERENCE_TIMEOUT_SECS`; Triton back on the same port, both recover with the same server."""
    repository = build_repository(
        shipped_repository(),
        tmp_path / "repository",
        "cpu",
        models=["preprocessor", "encoder", "decoder_joint"],
        instance_count=1,
    )
    sets_file = write_model_sets(
        tmp_path / "sets.toml", {"default": ("preprocessor", "encoder", "decoder_joint")}
    )
    triton = TritonProcess(repository, log_path=tmp_path / "triton.log", startup_timeout=120)
    timeout = 1.0
    settings = embedded_settings(
        triton_endpoint=triton.url, model_sets_file=sets_file, inference_timeout_secs=timeout
    )
    body = pcm16(read_recording(LIBRIVOX[1]))
    try:
        url = await start_server(nursery, settings)  # Triton is not running yet
        assert (await http.get(f"{url}/health")).json()["backend"] == "triton"
        not_ready = await http.get(f"{url}/ready")
        assert not_ready.status_code == 503 and not_ready.json()["error_type"] == "backend_unavailable"
        response = await post(http, batch_url(url, "default"), "audio/pcm", body)
        assert response.status_code == 503 and response.json()["error_type"] == "backend_unavailable"

        await triton.astart()
        took = await wait_for_status(http, f"{url}/ready", 200, within=10)
        print(f"\nready {took:.2f} s after Triton came up")
        first = await post(http, batch_url(url, "default"), "audio/pcm", body)
        assert first.status_code == 200, first.text

        await triton.akill()
        began = time.monotonic()
        response = await post(http, batch_url(url, "default"), "audio/pcm", body)
        assert time.monotonic() - began < timeout
        assert response.status_code == 503 and response.json()["error_type"] == "backend_unavailable"
        await wait_for_status(http, f"{url}/ready", 503, within=timeout + 2)

        await triton.astart()  # the same port
        took = await wait_for_status(http, f"{url}/ready", 200, within=10)
        print(f"ready {took:.2f} s after Triton restarted")
        again = await post(http, batch_url(url, "default"), "audio/pcm", body)
        assert again.status_code == 200, again.text
        assert again.json()["metadata"]["tokens"] == first.json()["metadata"]["tokens"]
    finally:
        with trio.CancelScope(shield=True):
            await triton.astop()
