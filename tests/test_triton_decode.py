"""Decoding through a real Triton (the session's, from the pytriton wheel): the decode model that runs
the token loop inside Triton, and the per-call, span and batched paths, all give the embedded
backend's per-call tokens on every test recording and model set."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest
import trio

from amira import Recognizer, open_recognizer
from amira.core.decode_model import RECORDING_OUTPUTS, recording_request
from amira.core.decoding import GreedyDecoder
from amira.core.errors import BackendError
from amira.settings import DecodeMode, TritonDecodeModel
from amira.testing.decode_paths import INPUTS, assert_same, per_call_transcripts, transcribe_all_at_once
from amira.testing.recordings import RECORDINGS, read_recording
from amira.testing.servers import embedded_settings
from tests.conftest import TritonFixture

MODEL_SETS = ("default", "tdt", "rnnt")


@pytest.mark.parametrize("model", MODEL_SETS)
async def test_the_decode_model_gives_the_per_call_tokens(asr_triton: TritonFixture, model: str) -> None:
    """Whole recordings, one call each of the recording model (which runs the preprocessor and
    encoder by BLS): the per-call transcripts, word times included; the same all at once. Then the
    recordings' encoder frames as spans of the decode model, all at once (Triton's dynamic batcher
    puts several spans in one `execute`, which steps them together)."""
    expected = await per_call_transcripts(model)
    async with open_recognizer(asr_triton.settings()) as recognizer:
        engine = recognizer.engine
        decoder_joint = engine.model_set(model).model_set.config.decoder_joint
        decode_model = f"{decoder_joint}_decode"
        assert engine.decode_models[model] == decode_model
        assert engine.recording_models[model] == f"{decoder_joint}_recording"
        probes = engine.calls.copy()  # the frame rate, measured at start-up
        got = {name: await recognizer.transcribe(samples, model) for name, samples in INPUTS.items()}
        assert_same(got, expected, at_least=30)
        assert got == expected  # lengths, words and their times, probabilities
        calls = engine.calls - probes
        assert calls["recording"] == len(INPUTS)
        assert calls["preprocessor"] == calls["encoder"] == calls["decode"] == 0
        tokens = sum(len(t.tokens) for t in expected.values())
        assert tokens <= engine.calls["decoder_joint"] <= tokens + len(INPUTS)  # counted inside Triton
        assert_same(await transcribe_all_at_once(recognizer, model), expected, at_least=30)
        before = await statistics(asr_triton, decode_model)
        got_tokens = await decode_in_one_burst(recognizer, model)
        after = await statistics(asr_triton, decode_model)
    assert got_tokens == {name: (t.tokens, t.token_frames) for name, t in expected.items()}
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == len(INPUTS) and executions < requests  # batched: several spans per execute


async def test_with_spans_only_a_recording_is_three_calls(asr_triton: TritonFixture) -> None:
    """`TRITON_DECODE_MODEL=spans`: AMIRA runs the preprocessor and encoder itself and sends the
    decode model the recording's encoder frames; the same transcripts."""
    expected = await per_call_transcripts("tdt")
    async with open_recognizer(
        asr_triton.settings(triton_decode_model=TritonDecodeModel.SPANS)
    ) as recognizer:
        engine = recognizer.engine
        assert "tdt" in engine.decode_models and not engine.recording_models
        probes = engine.calls.copy()
        got = {name: await recognizer.transcribe(samples, "tdt") for name, samples in INPUTS.items()}
        assert got == expected
        calls = engine.calls - probes
        assert calls["preprocessor"] == calls["encoder"] == calls["decode"] == len(INPUTS)
        assert calls["recording"] == 0


async def test_without_a_recording_model_a_recording_is_three_calls(
    asr_triton: TritonFixture,
) -> None:
    """A repository built before recording models (a decode model only): AMIRA uses it for spans, a
    recording in three calls, the same transcripts."""
    expected = await per_call_transcripts("default")  # the `spans_only` set has the same weights
    async with open_recognizer(asr_triton.fault_settings("spans_only")) as recognizer:
        engine = recognizer.engine
        assert engine.decode_models["spans_only"] == "decoder_joint_spans_only_decode"
        assert not engine.recording_models
        probes = engine.calls.copy()
        got = {name: await recognizer.transcribe(samples, "spans_only") for name, samples in INPUTS.items()}
        calls = engine.calls - probes
    assert got == expected
    assert calls["encoder"] == calls["decode"] == len(INPUTS) and calls["recording"] == 0


async def test_a_recording_without_its_models_is_a_backend_error(asr_triton: TritonFixture) -> None:
    """A recording request that names no preprocessor and encoder is answered with an error that
    says so (a `BackendError` in AMIRA, which leaves the endpoint in); the decode model goes on
    serving. (One naming a model Triton does not have is answered "not ready", which AMIRA takes
    for an endpoint that lost a model, `BackendUnavailable`.)"""
    name, samples = next(iter(INPUTS.items()))
    async with open_recognizer(asr_triton.settings()) as recognizer:
        engine = recognizer.engine
        loaded = engine.model_set("tdt")
        with loaded.states.state() as state:
            inputs = recording_request(samples, GreedyDecoder(loaded.model_set.decoding, state, 0))
        with pytest.raises(BackendError, match="request parameters preprocessor and encoder"):
            await engine.backend.infer(
                engine.recording_models["tdt"], inputs, RECORDING_OUTPUTS, engine.batch_calls.limiter
            )
        transcript = await recognizer.transcribe(samples, "tdt")
    assert transcript == (await per_call_transcripts("tdt"))[name]


async def decode_in_one_burst(
    recognizer: Recognizer, model: str
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Tokens and frames per recording, all of them encoded first and then decoded at once: the
    spans reach the decode model together and queue behind its two instances, so Triton's dynamic
    batcher steps several in one `execute` (whole requests all at once finish their encoders at
    different times, and the CPU flavour's decode model is fast enough to take them one by one)."""
    engine = recognizer.engine
    loaded = engine.model_set(model)
    assert loaded.model_set.cache_aware is None  # one encoder call per recording, as batch requests make
    policy = engine.batch_calls
    encoded = {
        name: await engine.encode(loaded.model_set, samples, policy) for name, samples in INPUTS.items()
    }
    with ExitStack() as states:
        decoders = {
            name: GreedyDecoder(
                loaded.model_set.decoding, states.enter_context(loaded.states.state()), e.length
            )
            for name, e in encoded.items()
        }
        async with trio.open_nursery() as nursery:
            for name, decoder in decoders.items():
                nursery.start_soon(engine.decode, loaded.model_set, decoder, encoded[name], 0, policy)
    return {
        name: (tuple(e.token for e in d.emissions), tuple(e.frame for e in d.emissions))
        for name, d in decoders.items()
    }


async def statistics(triton: TritonFixture, model: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{triton.url}/v2/models/{model}/stats")
    (stats,) = response.json()["model_stats"]
    return {key: int(stats[key]) for key in ("inference_count", "execution_count")}


@pytest.mark.parametrize("mode", list(DecodeMode))
async def test_without_the_decode_model_every_path_gives_the_per_call_tokens(
    asr_triton: TritonFixture, mode: DecodeMode
) -> None:
    expected = await per_call_transcripts("tdt")
    settings = asr_triton.settings(
        triton_decode_model=TritonDecodeModel.OFF, decode_mode=mode, decoder_batch_window_ms=20
    )
    async with open_recognizer(settings) as recognizer:
        assert not recognizer.engine.decode_models
        assert_same(await transcribe_all_at_once(recognizer, "tdt"), expected, at_least=30)
        assert recognizer.engine.calls["decode"] == 0
        if mode is DecodeMode.BATCHED:
            assert max(recognizer.engine.schedulers["tdt"].batch_sizes) >= 2


async def test_streams_through_the_decode_model_equal_embedded_streams(asr_triton: TritonFixture) -> None:
    clip = read_recording(RECORDINGS[0])

    async def stream(recognizer: Recognizer) -> tuple[int, ...]:
        final: tuple[int, ...] = ()
        async with recognizer.open_stream("rnnt") as handle:
            for start in range(0, clip.size, 3200):
                await handle.send_audio(clip[start : start + 3200])
            await handle.end()
            async for result in handle:
                final = result.tokens
        return final

    async with open_recognizer(embedded_settings(decode_mode=DecodeMode.PER_CALL)) as recognizer:
        expected = await stream(recognizer)
    async with open_recognizer(asr_triton.settings()) as recognizer:
        assert await stream(recognizer) == expected
        assert recognizer.engine.calls["decode"] > 0
    assert len(expected) > 10
