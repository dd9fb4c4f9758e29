"""Streaming sessions on the shipped test models (embedded backend), TDT and RNN-T."""

from __future__ import annotations

import itertools
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
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, SegmentEnd, StreamResult
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


NO_REFRESHES = SegmentOptions(
    interim_secs=None
)  # partials only from the windows: they depend on the sample count


async def stream_audio(
    recognizer: Recognizer,
    model: str,
    audio: np.ndarray,
    piece: int,
    finalize_at: int | None = None,
    options: SegmentOptions | None = None,
) -> list[StreamResult]:
    """Send `audio` in pieces of `piece` samples (a Finalize after `finalize_at`), then end; all results."""
    results: list[StreamResult] = []

    async def send(stream: Stream) -> None:
        for start in range(0, audio.size, piece):
            await stream.send_audio(audio[start : start + piece])
            if finalize_at is not None and start < finalize_at <= start + piece:
                await stream.finalize()
        await stream.end()

    async with recognizer.open_stream(model, options=options) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(send, stream)
        async for result in stream:
            results.append(result)
    return results


def timeline(results: list[StreamResult]) -> list[tuple[str, str, bool, tuple[int, ...]]]:
    return [(r.committed, r.transcription, r.is_final, r.tokens) for r in results]


def finals(results: list[StreamResult]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    return [(r.transcription, r.tokens, r.token_frames) for r in results if r.is_final]


async def test_results_do_not_depend_on_how_audio_is_split(recognizer: Recognizer, model: str) -> None:
    audio = read_clip()
    expected = await stream_audio(recognizer, model, audio, audio.size, options=NO_REFRESHES)
    final = expected[-1]
    assert final.is_final and final.end_of_stream and final.tokens
    assert [r.status for r in expected if r.is_final] == [ResultStatus.FINAL, ResultStatus.COMPLETE]
    assert len(expected) > 3  # several chunks, so commits really happened across windows
    refreshed = await stream_audio(recognizer, model, audio, audio.size)
    for piece in (160, 1600, RATE):  # 10 ms, 100 ms, 1 s
        split = await stream_audio(recognizer, model, audio, piece, options=NO_REFRESHES)
        assert timeline(split) == timeline(expected)
        assert finals(await stream_audio(recognizer, model, audio, piece)) == finals(refreshed)
    assert finals(refreshed) == finals(expected)  # refreshes only touch the tentative tail


@pytest.mark.parametrize("seconds", [0.3, CHUNK + RIGHT])
async def test_a_stream_of_one_window_is_the_batch_result(
    recognizer: Recognizer, model: str, seconds: float
) -> None:
    audio = read_clip()[: round(seconds * RATE)]
    *partials, segment_final, complete = await stream_audio(recognizer, model, audio, 1600)
    assert not any(r.is_final for r in partials)
    batch = await recognizer.transcribe(audio, model)
    assert batch.tokens
    for result in (segment_final, complete):
        assert (result.tokens, result.token_frames) == (batch.tokens, batch.token_frames)
        assert (result.transcription, result.committed) == (batch.text, batch.text)
        assert result.words == batch.words
        assert result.audio_seconds == pytest.approx(seconds)


async def test_committed_text_only_grows_within_a_segment(recognizer: Recognizer, model: str) -> None:
    audio = np.concatenate([read_clip(0), read_clip(2)])
    results = await stream_audio(recognizer, model, audio, 4000)
    *segments, complete = results
    assert complete.end_of_stream and results[-2].ended_by is SegmentEnd.END_OF_STREAM
    for previous, result in itertools.pairwise(segments):
        assert result.transcription.startswith(result.committed)
        assert timeline([previous]) != timeline([result])  # never repeated
        assert result.processing_time_ms >= 0
        if previous.segment.id == result.segment.id:
            assert not previous.is_final and result.committed.startswith(previous.committed)
            assert result.segment.start == previous.segment.start < result.segment.end
            assert result.is_final or previous.segment.end <= result.segment.end  # a final ends at its cut
        else:
            assert previous.is_final and result.segment.id == previous.segment.id + 1
            assert result.segment.start >= previous.segment.end
    assert any(r.transcription != r.committed for r in results)  # look-ahead gives tentative tails
    finals = [r for r in segments if r.is_final]
    assert complete.transcription == " ".join(r.transcription for r in finals if r.transcription)
    assert complete.words == tuple(w for r in finals for w in r.words)
    assert complete.audio_seconds == pytest.approx(audio.size / RATE)
    assert complete.words and complete.words[-1].end <= audio.size / RATE + 0.08 + 1e-9


async def test_finalize_gives_a_final_and_the_stream_goes_on(recognizer: Recognizer, model: str) -> None:
    audio = read_clip()
    middle = 3 * RATE + 123
    results = await stream_audio(recognizer, model, audio, 1600, finalize_at=middle)
    finalized, second, last = (r for r in results if r.is_final)
    assert last is results[-1] and last.end_of_stream and not finalized.end_of_stream
    assert (finalized.ended_by, second.ended_by) == (SegmentEnd.FINALIZE, SegmentEnd.END_OF_STREAM)
    assert finalized.from_finalize and not finalized.speech_final and not second.from_finalize
    assert finalized.transcription == finalized.committed and finalized.words
    flushed = 1600 * (middle // 1600 + 1) / RATE
    assert finalized.audio_seconds == pytest.approx(flushed)
    assert (finalized.segment.id, finalized.segment.start, finalized.segment.end) == (0, 0.0, flushed)
    assert (second.segment.id, second.segment.start) == (1, flushed)  # no endpointing: the segments tile
    assert last.tokens == finalized.tokens + second.tokens
    assert last.transcription == f"{finalized.transcription} {second.transcription}"
    assert [s.span for s in last.segments] == [finalized.segment, second.segment]
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
        assert pool.available == pool.size - 3
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
