"""Streaming sessions on the shipped test models (embedded backend), TDT and RNN-T."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import trio

import amira
from amira import Recognizer, Settings
from amira.core.errors import BackendError, UnknownModel
from amira.core.model_set import ModelSetError
from amira.core.transcript import StreamResult
from amira.models import shipped_repository
from amira.stream_session import Stream

CLIPS = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))  # 0: the longest, 7.1 s
CHUNK, LEFT, RIGHT = 0.8, 1.6, 0.4
RATE = 16_000

pytestmark = pytest.mark.parametrize("model", ["tdt", "rnnt"])


def read_clip(index: int = 0) -> np.ndarray:
    samples, rate = soundfile.read(CLIPS[index], dtype="float32")
    assert rate == RATE and samples.ndim == 1
    return samples


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_sets_file": shipped_repository() / "model_sets.toml",
        "stream_chunk_secs": CHUNK,
        "stream_left_context_secs": LEFT,
        "stream_right_context_secs": RIGHT,
        "max_concurrent_streams": 2,
        "max_concurrent_batches": 2,
    }
    return Settings(**(values | overrides))


@pytest.fixture
async def recognizer() -> AsyncIterator[Recognizer]:
    async with amira.open_recognizer(settings()) as recognizer:
        yield recognizer


async def stream_audio(
    recognizer: Recognizer, model: str, audio: np.ndarray, piece: int, finalize_at: int | None = None
) -> list[StreamResult]:
    """Send `audio` in pieces of `piece` samples (a Finalize after `finalize_at`), then end; all results."""
    results: list[StreamResult] = []

    async def send(stream: Stream) -> None:
        for start in range(0, audio.size, piece):
            await stream.send_audio(audio[start : start + piece])
            if finalize_at is not None and start < finalize_at <= start + piece:
                await stream.finalize()
        await stream.end()

    async with recognizer.open_stream(model) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(send, stream)
        async for result in stream:
            results.append(result)
    return results


def timeline(results: list[StreamResult]) -> list[tuple[str, str, bool, tuple[int, ...]]]:
    return [(r.committed, r.transcription, r.is_final, r.tokens) for r in results]


async def test_results_do_not_depend_on_how_audio_is_split(recognizer: Recognizer, model: str) -> None:
    audio = read_clip()
    expected = await stream_audio(recognizer, model, audio, audio.size)
    final = expected[-1]
    assert final.is_final and final.end_of_stream and final.tokens
    assert sum(r.is_final for r in expected) == 1
    assert len(expected) > 3  # several chunks, so commits really happened across windows
    for piece in (160, 1600, RATE):  # 10 ms, 100 ms, 1 s
        assert timeline(await stream_audio(recognizer, model, audio, piece)) == timeline(expected)


@pytest.mark.parametrize("seconds", [0.3, CHUNK + RIGHT])
async def test_a_stream_of_one_window_is_the_batch_result(
    recognizer: Recognizer, model: str, seconds: float
) -> None:
    audio = read_clip()[: round(seconds * RATE)]
    (result,) = await stream_audio(recognizer, model, audio, 1600)
    batch = await recognizer.transcribe(audio, model)
    assert batch.tokens
    assert (result.tokens, result.token_frames) == (batch.tokens, batch.token_frames)
    assert (result.transcription, result.committed, result.words) == (batch.text, batch.text, batch.words)
    assert result.audio_seconds == pytest.approx(seconds)


async def test_committed_text_only_grows(recognizer: Recognizer, model: str) -> None:
    audio = np.concatenate([read_clip(0), read_clip(2)])
    results = await stream_audio(recognizer, model, audio, 4000)
    committed_tokens: tuple[int, ...] = ()
    for previous, result in zip([None, *results], results, strict=False):
        assert result.transcription.startswith(result.committed)
        assert previous is None or result.committed.startswith(previous.committed)
        assert previous is None or timeline([previous]) != timeline([result])  # never repeated
        assert result.tokens[: len(committed_tokens)] == committed_tokens
        committed_tokens = result.tokens if result.is_final else committed_tokens
        assert result.processing_time_ms >= 0
    assert any(r.transcription != r.committed for r in results)  # look-ahead gives tentative tails
    assert results[-1].audio_seconds == pytest.approx(audio.size / RATE)
    assert results[-1].words and results[-1].words[-1].end <= audio.size / RATE + 0.08 + 1e-9


async def test_finalize_gives_a_final_and_the_stream_goes_on(recognizer: Recognizer, model: str) -> None:
    audio = read_clip()
    middle = 3 * RATE + 123
    results = await stream_audio(recognizer, model, audio, 1600, finalize_at=middle)
    finals = [i for i, r in enumerate(results) if r.is_final]
    assert len(finals) == 2 and finals[1] == len(results) - 1
    finalized, last = results[finals[0]], results[-1]
    assert not finalized.end_of_stream and last.end_of_stream
    assert finalized.transcription == finalized.committed and finalized.words
    assert finalized.audio_seconds == pytest.approx(1600 * (middle // 1600 + 1) / RATE)
    assert last.tokens[: len(finalized.tokens)] == finalized.tokens
    assert len(last.tokens) > len(finalized.tokens)
    assert [r.end_of_stream for r in results].count(True) == 1


async def test_a_stream_without_audio_still_ends_with_one_final(recognizer: Recognizer, model: str) -> None:
    results = await stream_audio(recognizer, model, np.zeros(0, np.float32), 1600)
    assert [(r.transcription, r.is_final, r.end_of_stream, r.tokens) for r in results] == [
        ("", True, True, ())
    ]


async def test_decoder_states_go_back_to_the_pool(recognizer: Recognizer, model: str) -> None:
    pool = recognizer.engine.model_set(model).states
    await stream_audio(recognizer, model, read_clip(), 1600)
    assert pool.available == pool.size

    async with recognizer.open_stream(model) as stream:
        assert pool.available == pool.size - 2
        await stream.send_audio(read_clip())
    assert pool.available == pool.size  # leaving without end() cancels the infer task mid-work

    audio = np.tile(read_clip(), 10)
    with trio.move_on_after(0.3) as scope:
        async with recognizer.open_stream(model, input_capacity=1, output_capacity=1) as stream:
            for start in range(0, audio.size, 1600):  # nobody reads: the infer task stalls, then this does
                await stream.send_audio(audio[start : start + 1600])
    assert scope.cancelled_caught
    assert pool.available == pool.size


async def test_sending_waits_while_results_are_not_read(recognizer: Recognizer, model: str) -> None:
    audio = read_clip()
    sent = 0
    async with recognizer.open_stream(model, input_capacity=1, output_capacity=1) as stream:
        with trio.move_on_after(1.0) as scope:
            for start in range(0, audio.size, 1600):
                await stream.send_audio(audio[start : start + 1600])
                sent += 1600
        assert scope.cancelled_caught
        assert sent < audio.size
        results = [await stream.results().receive() for _ in range(2)]
        assert [r.is_final for r in results] == [False, False]


async def test_unknown_model_and_bad_lengths_are_refused_up_front(model: str) -> None:
    async with amira.open_recognizer(settings()) as recognizer:
        with pytest.raises(UnknownModel):
            async with recognizer.open_stream(f"no-{model}"):
                pass
        pool = recognizer.engine.model_set(model).states
        assert pool.available == pool.size
    with pytest.raises(ModelSetError, match=r"STREAM_CHUNK_SECS=1\.7 is not a whole number"):
        async with amira.open_recognizer(settings(stream_chunk_secs=1.7)):
            pass


async def test_a_backend_failure_ends_the_stream_and_frees_it(
    recognizer: Recognizer, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode, calls = recognizer.engine.encode, 0

    async def failing_encode(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise BackendError("the encoder fell over")
        return await encode(*args)

    monkeypatch.setattr(recognizer.engine, "encode", failing_encode)
    audio = read_clip()
    seen: list[StreamResult] = []
    with pytest.RaisesGroup(pytest.RaisesExc(BackendError, match="the encoder fell over")):
        async with recognizer.open_stream(model) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_audio, audio)
            async for result in stream:
                seen.append(result)
    assert seen and stream.transcription == seen[-1].transcription
    pool = recognizer.engine.model_set(model).states
    assert pool.available == pool.size
