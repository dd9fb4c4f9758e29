"""Several Triton endpoints: two real Tritons (the nvidia-pytriton wheel) behind one AMIRA server.

Calls spread over both (counted by each Triton's own statistics), one Triton killed under running
streams and batch requests loses nothing, a restarted Triton takes calls again within seconds, both
down gives the documented refusals and the server recovers by itself, and the queue bound sheds
new work at once. The settings that name the endpoints are checked first (no Triton needed).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from amira import open_recognizer
from amira.backends.embedded import EmbeddedBackend
from amira.backends.triton_pool import EndpointState, TritonPool
from amira.client import open_stream_client
from amira.core.joint import JOINT_OUTPUTS
from amira.models import model_file, shipped_repository
from amira.settings import Settings, SettingsError, TritonDecodeModel
from amira.testing.recordings import CARDS, LIBRIVOX, pcm16, read_recording
from amira.testing.servers import embedded_settings, start_server, write_model_sets
from amira.testing.ws_protocol import StreamRecord, expect_complete, read_until_closed
from amira.tooling.triton_launcher import TritonProcess
from tests.test_cache_aware import SETS as CACHE_AWARE_SETS
from tests.test_cache_aware import reference_tokens
from tests.test_triton_cache_aware import interrupted_stream
from tests.test_triton_streams import stream, ws

SLOW_DELAY = 0.3  # seconds per call of `encoder_slow`, so that calls are surely in flight at a kill
SETS = {
    "default": ("preprocessor", "encoder", "decoder_joint"),
    "slow": ("preprocessor", "encoder_slow", "decoder_joint"),  # the same weights, slower
}
# a random-weight cache-aware set: Triton keeps its encoder caches per sequence (tests/test_cache_aware.py)
CACHE_AWARE_SET = ("preprocessor_streaming", "encoder_cache_aware", "decoder_joint_rnnt", "vocab_test.txt")
STREAM_AUDIO = [read_recording(path) for path in LIBRIVOX]  # 3 to 7 s each
BATCH_AUDIO = [read_recording(path) for path in [*CARDS[:4], LIBRIVOX[1]]]


# -- settings ------------------------------------------------------------------------------------------


def test_triton_endpoint_takes_a_checked_list() -> None:
    settings = Settings.from_env({"TRITON_ENDPOINT": " http://a:8000/ , https://b.example:443"})
    assert settings.triton_endpoints == ("http://a:8000", "https://b.example:443")
    assert Settings.from_env({"TRITON_ENDPOINTS": "http://a:8000,http://b:8000"}).triton_endpoints == (
        "http://a:8000",
        "http://b:8000",
    )
    same = {"TRITON_ENDPOINT": "http://a:8000", "TRITON_ENDPOINTS": "http://a:8000"}
    assert Settings.from_env(same).triton_endpoints == ("http://a:8000",)
    assert Settings.from_env({"TRITON_ENDPOINT": "", "TRITON_ENDPOINTS": "http://a:1"}).triton_endpoints
    assert Settings.from_env({"TRITON_ENDPOINT": " "}).triton_endpoints == ()
    bad = {
        "http://a:8000,": "empty entry",
        "http://a:8000,,http://b:8000": "empty entry",
        "http://a": "no port",
        "a:8000": "http://host:port",
        "http://a:8000,http://a:8000/": "same endpoint",
        "http://a:99999": "invalid port",
    }
    for text, message in bad.items():
        with pytest.raises(SettingsError, match=rf"TRITON_ENDPOINT=.*{message}"):
            Settings.from_env({"TRITON_ENDPOINT": text})
    with pytest.raises(SettingsError, match=r"TRITON_ENDPOINTS=.*no port"):
        Settings.from_env({"TRITON_ENDPOINTS": "http://a"})
    with pytest.raises(SettingsError, match="both set and differ"):
        Settings.from_env({"TRITON_ENDPOINT": "http://a:1", "TRITON_ENDPOINTS": "http://b:1"})
    with pytest.raises(SettingsError, match=r"TRITON_ENDPOINT=.*no port"):  # flags and code are checked too
        Settings(triton_endpoint="http://a")
    limits = Settings.from_env({"MAX_QUEUED_CALLS": "0", "MAX_CALLS_PER_ENDPOINT": "4"})
    assert (limits.max_queued_calls, limits.max_calls_per_endpoint) == (0, 4)
    for variable, value in (("MAX_QUEUED_CALLS", "-1"), ("MAX_CALLS_PER_ENDPOINT", "0")):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: value})


# -- two real Tritons ----------------------------------------------------------------------------------


@attrs.frozen
class References:
    """What the demo model gives without any failure (embedded backend, in process)."""

    batch: list[str]
    streams: list[list[int]]


@pytest.fixture(scope="module")
def references() -> References:
    async def compute() -> References:
        async with open_recognizer(embedded_settings(model_sets_file=None)) as recognizer:
            batch = [(await recognizer.transcribe(samples)).text for samples in BATCH_AUDIO]
            streams = []
            for samples in STREAM_AUDIO:
                async with recognizer.open_stream() as session:
                    await session.send_audio(samples)
                    await session.end()
                    streams.append(list([result async for result in session][-1].tokens))
        return References(batch, streams)

    return trio.run(compute)


@pytest.fixture(scope="module")
def two_tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonProcess]]:
    """Two Tritons on one CPU repository (the demo model, and its encoder slowed down), each on its
    own port; tests that kill one start it again."""
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton missing")
    from amira.tooling.triton_repository import build_repository, write_model

    root = tmp_path_factory.mktemp("two_tritons")
    models = (*SETS["default"], *CACHE_AWARE_SET[:3])
    repository = build_repository(shipped_repository(), root / "repository", "cpu", models=models)
    write_model(
        model_file(shipped_repository(), "encoder"),
        repository,
        "encoder_slow",
        "cpu",
        instance_count=2,
        parameters={"delay_seconds": str(SLOW_DELAY)},
    )
    write_model(
        model_file(shipped_repository(), "decoder_joint"),
        repository,
        "decoder_joint_slow",
        "cpu",
        instance_count=1,
        parameters={"delay_seconds": str(SLOW_DELAY)},
        decode_model=False,
    )
    tritons = [
        TritonProcess(repository, log_path=root / f"triton-{i}.log", startup_timeout=180) for i in range(2)
    ]
    try:
        for triton in tritons:
            triton.start()
        yield tritons
    finally:
        for triton in tritons:
            triton.stop()


@pytest.fixture
async def tritons(two_tritons: list[TritonProcess]) -> list[TritonProcess]:
    """Both Tritons, running (a test before may have left one down)."""
    for triton in two_tritons:
        if not triton.is_running():
            await triton.astart()
    return two_tritons


def pool_settings(tritons: list[TritonProcess], tmp_path: Path, **overrides: object) -> Settings:
    return embedded_settings(
        triton_endpoint=",".join(t.url for t in tritons),
        model_sets_file=write_model_sets(tmp_path / "sets.toml", SETS),
        inference_timeout_secs=10.0,  # a loaded 2-core machine: no call may time out here
        **overrides,
    )


async def inference_count(http: httpx.AsyncClient, triton: TritonProcess, model: str) -> int:
    """Requests `model` has executed on `triton`, from Triton's own statistics."""
    document = (await http.get(f"{triton.url}/v2/models/{model}/stats")).json()
    return sum(int(stats["inference_count"]) for stats in document["model_stats"])


async def metric(http: httpx.AsyncClient, base: str, name: str, **labels: str) -> float:
    """One sample of the server's `/metrics`; a counter not counted yet is 0."""
    text = (await http.get(f"{base}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    if name.endswith("_total"):
        return 0.0
    raise AssertionError(f"no sample {name}{labels} in /metrics")


async def endpoint_states(http: httpx.AsyncClient, base: str) -> dict[str, str]:
    return {e["url"]: e["state"] for e in (await http.get(f"{base}/ready")).json()["endpoints"]}


async def wait_until(condition: object, within: float, step: float = 0.05) -> float:
    """Await `condition()` until it is true; returns how long that took."""
    began = time.monotonic()
    with trio.fail_after(within):
        while not await condition():  # type: ignore[operator]
            await trio.sleep(step)
    return time.monotonic() - began


async def refusal(url: str) -> StreamRecord:
    """A stream that the server refuses right after the upgrade: its one ERROR and close code."""
    async with open_websocket_url(url) as connection:
        record = await read_until_closed(connection)
    assert record.statuses == ["ERROR"], record.statuses
    return record


async def batch(
    http: httpx.AsyncClient, base: str, samples: np.ndarray, model: str = "default"
) -> httpx.Response:
    return await http.post(
        f"{base}/v2/decode/batch/{model}", content=pcm16(samples), headers={"Content-Type": "audio/pcm"}
    )


# the models of the `default` set, and AMIRA's call counters (roles)
MODELS = ("preprocessor", "encoder", "decoder_joint", "decoder_joint_decode", "decoder_joint_recording")
ROLES = ("preprocessor", "encoder", "decoder_joint", "decode", "recording")


@pytest.mark.parametrize("decode", list(TritonDecodeModel))
async def test_calls_spread_over_both_tritons(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References, decode: TritonDecodeModel,
) -> None:  # fmt: skip
    """Ten batch requests, one at a time then all at once: each Triton's own statistics count every
    call AMIRA made, and each Triton answered a fair share of the calls AMIRA routed. With the decode
    model, the `decoder_joint` calls happen inside Triton (the CPU flavour's decode model runs its
    own copy of the joint), and with `auto` a request is one call of the recording model, which
    makes the preprocessor and encoder calls inside Triton."""
    base = await start_server(nursery, pool_settings(tritons, tmp_path, triton_decode_model=decode))
    ready = await http.get(f"{base}/ready")
    assert ready.status_code == 200
    assert [(e["url"], e["state"], e["in_flight"]) for e in ready.json()["endpoints"]] == [
        (t.url, "healthy", 0) for t in tritons
    ]
    served_before = {(i, m): await inference_count(http, t, m) for i, t in enumerate(tritons) for m in MODELS}
    made_before = {r: await metric(http, base, "amira_backend_calls_total", role=r) for r in ROLES}

    async def one(samples: np.ndarray, expected: str) -> None:
        response = await batch(http, base, samples)
        assert response.status_code == 200 and response.json()["transcription"] == expected

    for samples, expected in zip(BATCH_AUDIO, references.batch, strict=True):  # one at a time
        await one(samples, expected)
    async with trio.open_nursery() as requests:  # and all at once
        for samples, expected in zip(BATCH_AUDIO, references.batch, strict=True):
            requests.start_soon(one, samples, expected)

    served = {
        m: [await inference_count(http, t, m) - served_before[i, m] for i, t in enumerate(tritons)]
        for m in MODELS
    }
    made = {r: await metric(http, base, "amira_backend_calls_total", role=r) - made_before[r] for r in ROLES}
    requests_made = 2 * len(BATCH_AUDIO)
    if decode is TritonDecodeModel.AUTO:
        assert made["recording"] == requests_made and made["preprocessor"] == made["encoder"] == 0
        expected = {m: requests_made for m in ("preprocessor", "encoder", "decoder_joint_recording")}
        expected["decoder_joint_decode"] = 0
        routed = ("decoder_joint_recording",)
    else:
        assert made["recording"] == 0
        expected = {"preprocessor": made["preprocessor"], "encoder": made["encoder"]}
        expected["decoder_joint_decode"] = made["decode"]
        expected["decoder_joint_recording"] = 0
        routed = (
            "preprocessor",
            "encoder",
            "decoder_joint" if decode is TritonDecodeModel.OFF else "decoder_joint_decode",
        )
    if decode is TritonDecodeModel.OFF:  # AMIRA counts rows; its scheduler's batched calls carry several
        assert 0 < sum(served["decoder_joint"]) <= made["decoder_joint"], served
    else:
        expected["decoder_joint"] = 0
    assert {m: sum(served[m]) for m in expected} == expected, served
    assert all(sum(served[m]) > 0 for m in routed), served
    shares = [
        sum(served[m][i] for m in routed) for i in range(len(tritons))
    ]  # the routed calls each answered
    # Both took a fair share of the calls. Not of each model's: requests one at a time alternate
    # between endpoints call by call, so a model's calls may keep landing on one of them when the
    # requests make an even number of calls each.
    assert min(shares) >= 0.3 * sum(shares), shares
    for triton in tritons:
        assert await metric(http, base, "amira_backend_endpoint_up", endpoint=triton.url) == 1
        assert await metric(http, base, "amira_backend_endpoint_call_seconds_count", endpoint=triton.url) > 0
    assert await metric(http, base, "amira_backend_queued_calls") == 0
    assert await metric(http, base, "amira_backend_failovers_total") == 0


@pytest.mark.parametrize("decode", [TritonDecodeModel.AUTO, TritonDecodeModel.OFF])
async def test_a_triton_killed_under_load_loses_nothing_and_comes_back(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References, decode: TritonDecodeModel,
) -> None:  # fmt: skip
    """5 streams in real time and 5 batch requests, on the slowed encoder; the Triton with calls in
    flight is killed: each stream and request completes with the transcript it has without the
    failure. Started again, that Triton takes calls within seconds. Both ways of decoding on Triton:
    a span per call of the decode model (from trio), and `decoder_joint` calls batched by the
    scheduler's worker thread (`infer_blocking`)."""
    base = await start_server(nursery, pool_settings(tritons, tmp_path, triton_decode_model=decode))
    finals: dict[int, dict] = {}
    answers: dict[int, httpx.Response] = {}

    async def one_stream(i: int) -> None:
        finals[i] = expect_complete(await stream(ws(base, "slow"), STREAM_AUDIO[i], 0.1, pace=0.1))

    async def one_batch(i: int) -> None:
        answers[i] = await batch(http, base, BATCH_AUDIO[i], "slow")

    victim: list[TritonProcess] = []

    async def calls_in_flight() -> bool:
        for triton in tritons:
            if await metric(http, base, "amira_backend_endpoint_in_flight", endpoint=triton.url) > 0:
                victim.append(triton)
                return True
        return False

    async with trio.open_nursery() as work:
        for i in range(5):
            work.start_soon(one_stream, i)
        await trio.sleep(1.0)
        for i in range(5):
            work.start_soon(one_batch, i)
        await trio.sleep(0.1)
        await wait_until(calls_in_flight, within=10, step=0.01)
        await victim[0].akill()  # its stubs and shared memory go with it
        killed_at = time.monotonic()
    assert time.monotonic() - killed_at > 1.0  # the streams went on well after the kill
    for i in range(5):
        assert finals[i]["status"] == "COMPLETE", finals[i]
        assert finals[i]["metadata"]["tokens"] == references.streams[i], i
        assert answers[i].status_code == 200, answers[i].text
        assert answers[i].json()["transcription"] == references.batch[i], i
    decode_calls = await metric(http, base, "amira_backend_calls_total", role="decode")
    recording_calls = await metric(http, base, "amira_backend_calls_total", role="recording")
    assert (decode_calls > 0) == (recording_calls > 0) == (decode is TritonDecodeModel.AUTO), decode_calls
    assert await metric(http, base, "amira_backend_failovers_total") >= 1  # calls in flight were retried
    assert await metric(http, base, "amira_backend_endpoint_outages_total", endpoint=victim[0].url) == 1
    states = await endpoint_states(http, base)
    assert states[victim[0].url] == "down" and list(states.values()).count("healthy") == 1
    assert (await http.get(f"{base}/ready")).status_code == 200  # one healthy endpoint is enough

    await victim[0].astart()

    async def both_healthy() -> bool:
        return set((await endpoint_states(http, base)).values()) == {"healthy"}

    took = await wait_until(both_healthy, within=10)
    print(f"\nrestarted Triton healthy again {took:.2f} s after it was ready")
    assert took < 3.0  # probed back with a backoff of at most 2 s
    before = await inference_count(http, victim[0], "encoder")
    for samples, expected in zip(BATCH_AUDIO, references.batch, strict=True):
        response = await batch(http, base, samples)
        assert response.status_code == 200 and response.json()["transcription"] == expected
    assert await inference_count(http, victim[0], "encoder") - before >= 2


async def test_both_tritons_down_refuses_new_work_then_recovers(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References,
) -> None:  # fmt: skip
    """No healthy endpoint: `/ready` 503 naming each endpoint's state and why, a batch request
    `503 backend_unavailable` with `Retry-After` at once, a new stream `backend_unavailable` and close
    1013; both Tritons back, the same server serves again."""
    base = await start_server(nursery, pool_settings(tritons, tmp_path))
    for triton in tritons:
        await triton.akill()  # its stubs and shared memory go with it

    async def both_down() -> bool:
        return set((await endpoint_states(http, base)).values()) == {"down"}

    await wait_until(both_down, within=5)
    ready = await http.get(f"{base}/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "backend_unavailable"
    for endpoint in ready.json()["endpoints"]:
        assert endpoint["state"] == "down" and "unreachable" in endpoint["reason"], endpoint
    began = time.monotonic()
    response = await batch(http, base, BATCH_AUDIO[0])
    assert time.monotonic() - began < 0.5  # refused at once
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error_type"] == "backend_unavailable"
    assert "no Triton endpoint is healthy" in response.json()["error"]
    refused = await refusal(ws(base, "default"))
    assert refused.error is not None and refused.error["error_type"] == "backend_unavailable"
    assert refused.close_code == 1013
    assert await metric(http, base, "amira_rejected_total", kind="batch") == 1
    assert await metric(http, base, "amira_rejected_total", kind="stream") == 1

    for triton in tritons:
        await triton.astart()

    async def ready_again() -> bool:
        return (await http.get(f"{base}/ready")).status_code == 200

    await wait_until(ready_again, within=5)
    response = await batch(http, base, BATCH_AUDIO[0])
    assert response.status_code == 200 and response.json()["transcription"] == references.batch[0]
    final = expect_complete(await stream(ws(base, "default"), STREAM_AUDIO[1], 0.5))
    assert final["metadata"]["tokens"] == references.streams[1]


async def test_a_long_call_queue_sheds_new_work_at_once(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References,
) -> None:  # fmt: skip
    """`MAX_CALLS_PER_ENDPOINT=1`, `MAX_QUEUED_CALLS=1`: four requests on the slowed encoder, each
    admitted before the next is sent, make calls queue in AMIRA (two run, two wait); while more than
    one waits, a new request gets `503 capacity_exceeded` with `Retry-After` and a new stream close
    1013, at once. The queued work completes, and then new work is taken again.

    Four, not more: a request is admitted while at most one call waits, and with two endpoints busy
    the first three requests can keep at most one waiting, so the fourth is surely admitted; a fifth
    could already meet two waiting calls and be refused, which is the behaviour under test but would
    make the setup a race."""
    settings = pool_settings(tritons, tmp_path, max_calls_per_endpoint=1, max_queued_calls=1)
    base = await start_server(nursery, settings)
    answers: list[httpx.Response] = []
    admitted = BATCH_AUDIO[:4]

    async def queued() -> bool:
        return await metric(http, base, "amira_backend_queued_calls") >= 2

    async def one(samples: np.ndarray) -> None:
        answers.append(await batch(http, base, samples, "slow"))

    async with trio.open_nursery() as work:
        for count, samples in enumerate(admitted, start=1):
            work.start_soon(one, samples)

            async def active(count: int = count) -> bool:
                return await metric(http, base, "amira_active_batches") >= count or len(answers) > 0

            await wait_until(active, within=5, step=0.005)
        await wait_until(queued, within=5, step=0.01)
        began = time.monotonic()
        refused = await batch(http, base, BATCH_AUDIO[0])
        assert time.monotonic() - began < SLOW_DELAY  # not queued: refused at once
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error_type"] == "capacity_exceeded", refused.text
        closed = await refusal(ws(base, "default"))
        assert closed.error is not None and closed.error["error_type"] == "capacity_exceeded"
        assert closed.close_code == 1013
    expected = references.batch[: len(admitted)]
    assert sorted(a.json().get("transcription", a.text) for a in answers) == sorted(expected)
    assert await metric(http, base, "amira_backend_queued_calls") == 0
    response = await batch(http, base, BATCH_AUDIO[0])
    assert response.status_code == 200 and response.json()["transcription"] == references.batch[0]


async def test_an_endpoint_without_every_model_or_with_other_models_gets_no_calls(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References,
) -> None:  # fmt: skip
    """On the second endpoint's port, a Triton that lacks a model of a model set, then one whose
    `encoder` is another model (other tensors): each stays out, `/ready` says why, and every call
    goes to the first endpoint."""
    from amira.tooling.triton_repository import build_repository, write_model

    base = await start_server(nursery, pool_settings(tritons, tmp_path))
    second = tritons[1]
    await second.akill()  # its stubs and shared memory go with it
    lacking = build_repository(
        shipped_repository(), tmp_path / "lacking", "cpu", models=SETS["default"], instance_count=1
    )
    other = build_repository(
        shipped_repository(), tmp_path / "other", "cpu", models=SETS["default"], instance_count=1
    )
    for name in ("encoder", "encoder_slow"):  # the random-weight TDT encoder: 128 channels, not 256
        write_model(model_file(shipped_repository(), "encoder_tdt"), other, name, "cpu", instance_count=1)
    for repository, why in ((lacking, "models not ready: encoder_slow"), (other, "other tensors")):
        impostor = TritonProcess(repository, http_port=second.http_port, log_path=tmp_path / "impostor.log")
        await impostor.astart()
        try:

            async def explained(why: str = why) -> bool:
                endpoint = (await http.get(f"{base}/ready")).json()["endpoints"][1]
                return endpoint["state"] == "down" and why in endpoint["reason"]

            await wait_until(explained, within=5)
            for samples, expected in zip(BATCH_AUDIO, references.batch, strict=True):
                response = await batch(http, base, samples)
                assert response.status_code == 200 and response.json()["transcription"] == expected
            assert await inference_count(http, impostor, "preprocessor") == 0
        finally:
            with trio.CancelScope(shield=True):
                await impostor.astop()


async def test_a_hung_triton_fails_its_probe_and_is_taken_out(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path,
    references: References,
) -> None:  # fmt: skip
    """A Triton that stops answering (SIGSTOP: its sockets stay open) fails its readiness probe and
    gets no calls; when it answers again, it is taken back."""
    base = await start_server(nursery, pool_settings(tritons, tmp_path))
    hung = tritons[0]
    assert hung.pid is not None
    os.kill(hung.pid, signal.SIGSTOP)
    try:

        async def taken_out() -> bool:
            endpoint = (await http.get(f"{base}/ready")).json()["endpoints"][0]
            return endpoint["state"] == "down" and "no answer to the readiness probe" in endpoint["reason"]

        took = await wait_until(taken_out, within=10)
        assert took < 4.0  # a probe every second, each given 2 s
        for samples, expected in zip(BATCH_AUDIO, references.batch, strict=True):
            response = await batch(http, base, samples)
            assert response.status_code == 200 and response.json()["transcription"] == expected
    finally:
        os.kill(hung.pid, signal.SIGCONT)

    async def back() -> bool:
        return (await endpoint_states(http, base))[hung.url] == "healthy"

    await wait_until(back, within=5)


async def test_calls_from_a_worker_thread_fail_over_too(tritons: list[TritonProcess]) -> None:
    """The pool on its own: a worker thread making calls one after another (as a span's thread or a
    batching scheduler's does, `infer_blocking`) goes on when the Triton its call is on is killed;
    every answer is the embedded backend's."""
    pool = TritonPool([t.url for t in tritons], ["decoder_joint_slow"], inference_timeout=10.0)
    rng = np.random.default_rng(0)
    inputs = {
        "encoder_outputs": rng.standard_normal((1, 256, 4)).astype(np.float32),
        "targets": np.array([[3]], np.int32),
        "target_length": np.array([1], np.int32),
        "input_states_1": rng.standard_normal((1, 1, 128)).astype(np.float32),
        "input_states_2": rng.standard_normal((1, 1, 128)).astype(np.float32),
    }
    embedded = EmbeddedBackend(shipped_repository())
    expected = await embedded.infer("decoder_joint", inputs, JOINT_OUTPUTS, trio.CapacityLimiter(1))
    answers: list[dict[str, np.ndarray]] = []

    def work() -> None:
        for _ in range(8):
            answers.append(pool.infer_blocking("decoder_joint_slow", inputs, JOINT_OUTPUTS))

    async def one_in_flight() -> bool:
        return any(endpoint.in_flight for endpoint in pool.endpoints)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with trio.open_nursery() as calls:
                calls.start_soon(pool.run_blocking, work, trio.CapacityLimiter(1))
                await wait_until(one_in_flight, within=10, step=0.01)
                [victim] = [i for i, endpoint in enumerate(pool.endpoints) if endpoint.in_flight]
                await tritons[victim].akill()  # its stubs and shared memory go with it
            nursery.cancel_scope.cancel()
    finally:
        await pool.aclose()
    assert len(answers) == 8
    for answer in answers:
        for name in JOINT_OUTPUTS:
            np.testing.assert_allclose(answer[name], expected[name], rtol=1e-5, atol=1e-6)
    assert pool.failovers == 1
    assert pool.endpoints[victim].state is EndpointState.DOWN
    assert sum(endpoint.calls for endpoint in pool.endpoints) == 8  # answered: the failed one was retried


async def test_a_cache_aware_stream_is_pinned_to_the_triton_that_keeps_its_caches(
    nursery: trio.Nursery, http: httpx.AsyncClient, tritons: list[TritonProcess], tmp_path: Path
) -> None:  # fmt: skip
    """A stream of a set whose encoder caches Triton keeps sends every encoder call of its sequence
    to one endpoint (its other calls are pure and go anywhere), and gives the reference tokens. When
    that endpoint dies mid-stream, the stream ends with `backend_unavailable` (its caches are gone;
    no replay, and never a transcript from emptied caches), while a new stream goes to the survivor
    and is exact."""
    settings = embedded_settings(
        triton_endpoint=",".join(t.url for t in tritons),
        model_sets_file=write_model_sets(tmp_path / "sets.toml", {"ca": CACHE_AWARE_SET}),
        inference_timeout_secs=10.0,
    )
    base = await start_server(nursery, settings)
    url = base.replace("http://", "ws://") + "/v2/decode/stream/ca?endpointing=false"
    clip = STREAM_AUDIO[0]
    expected = reference_tokens(*CACHE_AWARE_SETS["cache_aware"], clip)

    async def encoder_calls() -> list[int]:
        return [await inference_count(http, t, "encoder_cache_aware") for t in tritons]

    async def tokens(frame_seconds: float) -> list[int]:
        async with open_stream_client(url) as client, trio.open_nursery() as sending:
            sending.start_soon(client.send_samples, clip, frame_seconds, False)
            results = [result async for result in client.results()]
        return list(results[-1]["metadata"]["tokens"])

    for _ in range(4):  # several streams: the start calls are routed like any call
        before = await encoder_calls()
        assert await tokens(0.1) == expected
        grown = [after - was for after, was in zip(await encoder_calls(), before, strict=True)]
        assert sorted(grown)[0] == 0 and sorted(grown)[1] > 1, grown  # all on one endpoint

    before = await encoder_calls()

    async def kill_the_pinned_one() -> None:
        grown = [after - was for after, was in zip(await encoder_calls(), before, strict=True)]
        assert min(grown) == 0, grown
        await tritons[grown.index(max(grown))].akill()

    failed = await interrupted_stream(url, clip, kill_the_pinned_one)
    assert failed.error_type == "backend_unavailable" and failed.code == 1011
    assert await tokens(0.5) == expected
