"""The ways the engine drives `decoder_joint` (`DECODE_MODE`), on the embedded backend: each gives the
tokens of the per-call path on every test recording and model set, batched spans included, and the
batching scheduler keeps the limits, cancellation and state pool of unbatched decoding."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from amira import Recognizer, open_recognizer
from amira.engine import Engine, create_backend
from amira.settings import DecodeMode, Settings, SettingsError
from amira.testing.decode_paths import INPUTS, assert_same, per_call_transcripts, transcribe_all_at_once
from amira.testing.long_audio import joined
from amira.testing.recordings import LIBRIVOX, MODEL_SETS, RECORDINGS, read_recording
from amira.testing.servers import embedded_settings


@pytest.mark.parametrize("model", ["default", *MODEL_SETS])
@pytest.mark.parametrize("frames_per_call", [None, 3])
async def test_every_path_gives_the_per_call_tokens(model: str, frames_per_call: int | None) -> None:
    """Span threads one at a time, then every recording at once through the batching scheduler,
    held for 50 ms so that they share steps (rows of different K, padded, when frames are capped)."""
    expected = await per_call_transcripts(model, frames_per_call=frames_per_call)
    span = embedded_settings(decode_mode=DecodeMode.SPAN, frames_per_call=frames_per_call)
    async with open_recognizer(span) as recognizer:
        got = {name: await recognizer.transcribe(samples, model) for name, samples in INPUTS.items()}
    assert_same(got, expected)
    batched = embedded_settings(decoder_batch_window_ms=50, frames_per_call=frames_per_call)
    async with open_recognizer(batched) as recognizer:
        assert_same(await transcribe_all_at_once(recognizer, model), expected)
        sizes = recognizer.engine.schedulers[model].batch_sizes
        assert max(sizes) >= 4, sizes  # the recordings really shared calls
        calls = recognizer.engine.calls["decoder_joint"]
        assert calls == sum(size * steps for size, steps in sizes.items())  # every row counted


@pytest.mark.parametrize("model", MODEL_SETS)
async def test_streams_batched_together_give_the_tokens_of_streams_alone(model: str) -> None:
    clips = [read_recording(path) for path in RECORDINGS[:5]]

    async def stream_all(recognizer: Recognizer, together: bool) -> list[tuple[int, ...]]:
        finals: list[tuple[int, ...]] = [()] * len(clips)

        async def one(index: int) -> None:
            async with recognizer.open_stream(model) as stream:
                for start in range(0, clips[index].size, 4000):
                    await stream.send_audio(clips[index][start : start + 4000])
                await stream.end()
                async for result in stream:
                    finals[index] = result.tokens

        if together:
            async with trio.open_nursery() as nursery:
                for index in range(len(clips)):
                    nursery.start_soon(one, index)
        else:
            for index in range(len(clips)):
                await one(index)
        return finals

    async with open_recognizer(embedded_settings(decode_mode=DecodeMode.PER_CALL)) as recognizer:
        alone = await stream_all(recognizer, together=False)
    async with open_recognizer(embedded_settings(decoder_batch_window_ms=20)) as recognizer:
        assert await stream_all(recognizer, together=True) == alone
        assert max(recognizer.engine.schedulers[model].batch_sizes) >= 2
    assert sum(map(len, alone)) > 50


async def test_the_batch_limit_caps_the_spans_in_the_scheduler() -> None:
    settings = embedded_settings(max_concurrent_batches=2, decoder_batch_window_ms=20)
    async with open_recognizer(settings) as rec:
        await transcribe_all_at_once(rec, "tdt")
        assert max(rec.engine.schedulers["tdt"].batch_sizes) == 2


async def test_a_cancelled_span_stops_at_the_next_call_and_frees_its_state() -> None:
    """A minute of RNN-T decoded one frame per call (about a thousand calls), cancelled as soon as its
    first call ran: the scheduler drops it within a step, its state goes back to the pool, and
    decoding goes on as before."""
    long = joined(LIBRIVOX, repeats=2)
    async with open_recognizer(embedded_settings(frames_per_call=1)) as recognizer:
        engine = recognizer.engine
        pool = engine.model_set("rnnt").states
        full = await recognizer.transcribe(long, "rnnt")
        sizes = engine.schedulers["rnnt"].batch_sizes
        full_steps = sum(sizes.values())
        sizes.clear()
        available = pool.available
        with trio.move_on_after(30) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(recognizer.transcribe, long, "rnnt")
                while not sizes:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert 0 < sum(sizes.values()) < full_steps / 2, (sizes, full_steps)
        assert pool.available == available
        assert (await recognizer.transcribe(long, "rnnt")).tokens == full.tokens


async def test_an_engine_that_is_not_running_decodes_spans_in_threads_of_their_own() -> None:
    settings = embedded_settings()
    engine = Engine(create_backend(settings), settings)
    try:
        await engine.load()
        recognizer = Recognizer(engine)
        expected = await per_call_transcripts("rnnt")
        for name in ("goforward.raw", RECORDINGS[0].name):
            assert (await recognizer.transcribe(INPUTS[name], "rnnt")).tokens == expected[name].tokens
        assert not engine.schedulers
    finally:
        await engine.backend.aclose()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DECODE_MODE", "fast"), ("DECODER_BATCH_WINDOW_MS", "-1"), ("TRITON_DECODE_MODEL", "yes")],
)
def test_bad_decode_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_decode_settings_parse() -> None:
    settings = Settings.from_env({"DECODE_MODE": "Per-Call", "DECODER_BATCH_WINDOW_MS": "2.5"})
    assert settings.decode_mode is DecodeMode.PER_CALL
    assert settings.decoder_batch_window_ms == 2.5


async def test_the_embedded_backend_runs_at_most_inference_threads_calls_at_once() -> None:
    """`INFERENCE_THREADS=2`: of eight calls started together (under a stream cap of eight), two
    run at a time and the others wait their turn in trio, not in threads; every one completes."""
    assert Settings.from_env({"INFERENCE_THREADS": "2"}).inference_threads == 2
    with pytest.raises(SettingsError, match="INFERENCE_THREADS"):
        Settings.from_env({"INFERENCE_THREADS": "0"})
    backend = create_backend(embedded_settings(inference_threads=2))
    running, most, done = 0, 0, 0
    callers = trio.CapacityLimiter(8)  # the callers' own cap, as a stream policy's
    counting = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with counting:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with counting:
            running -= 1

    async def call() -> None:
        nonlocal done
        await backend.run_blocking(work, callers)
        done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(call)
    assert done == 8 and most == 2
    assert create_backend(embedded_settings()).max_running_calls >= 1  # default: the usable cores
