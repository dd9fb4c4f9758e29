"""The sans-IO streaming core: window geometry, feed invariance, bounded memory, token weaving."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pytest

from amira.core.decoding import Emission
from amira.core.vocabulary import Vocabulary
from amira.core.windowing import Chunker, StreamingConfig, StreamingConfigError, TokenWeaver, Window

F = 8  # samples per frame: small, so that one-sample feeding stays fast
CONFIG = StreamingConfig(chunk_frames=4, left_frames=3, right_frames=2, frame_samples=F)


def pieces(audio: np.ndarray, sizes: Iterable[int]) -> list[np.ndarray]:
    out, start = [], 0
    for size in sizes:
        if start >= audio.size:
            break
        out.append(audio[start : start + size])
        start += size
    if start < audio.size:
        out.append(audio[start:])
    return out


def stream(
    config: StreamingConfig, feeds: list[np.ndarray], *, flush: bool = True
) -> tuple[Chunker, list[tuple[Window, np.ndarray]]]:
    """Feed every piece, taking every window after each feed; the chunker's bound is checked throughout."""
    chunker = Chunker(config)
    bound = (config.left_frames + config.chunk_frames + config.right_frames) * config.frame_samples
    windows = []
    for piece in feeds:
        chunker.feed(piece)
        while (window := chunker.next_window()) is not None:
            windows.append((window, chunker.samples(window).copy()))
        assert chunker.buffered_samples <= bound + piece.size
    if flush and (window := chunker.flush()) is not None:
        windows.append((window, chunker.samples(window).copy()))
    return chunker, windows


def assert_commits_tile(windows: list[Window], total: int) -> None:
    """Committed frames run from 0 to the last frame of the audio with no gap or overlap."""
    spans = [(w.commit_start, w.commit_stop) for w in windows]
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == -(-total // F)


def random_sizes(rng: np.random.Generator, total: int, high: int) -> list[int]:
    return list(rng.integers(1, high, size=total))


@pytest.mark.parametrize(
    ("chunk", "left", "right", "frames"),
    [(1.6, 4.0, 0.8, (20, 50, 10)), (0.08, 0.0, 0.0, (1, 0, 0)), (2.4, 1.2, 0.32, (30, 15, 4))],
)
def test_config_from_seconds(chunk: float, left: float, right: float, frames: tuple[int, int, int]) -> None:
    config = StreamingConfig.from_seconds(chunk=chunk, left=left, right=right, frame_samples=1280)
    assert (config.chunk_frames, config.left_frames, config.right_frames) == frames
    assert config.frame_samples == 1280


@pytest.mark.parametrize(
    ("values", "setting", "message"),
    [
        ({"chunk": 1.7}, "STREAM_CHUNK_SECS=1.7", "use e.g. 1.68 or 1.76"),
        ({"chunk": 0.04}, "STREAM_CHUNK_SECS=0.04", "whole number of encoder frames (0.08 s each)"),
        ({"chunk": 0.0}, "STREAM_CHUNK_SECS=0", "at least one encoder frame"),
        ({"left": 0.1}, "STREAM_LEFT_CONTEXT_SECS=0.1", "whole number"),
        ({"right": 0.81}, "STREAM_RIGHT_CONTEXT_SECS=0.81", "whole number"),
        ({"left": -0.08}, "STREAM_LEFT_CONTEXT_SECS=-0.08", "0 or more"),
    ],
)
def test_config_rejects_lengths_that_are_not_whole_frames(
    values: dict[str, float], setting: str, message: str
) -> None:
    lengths = {"chunk": 1.6, "left": 4.0, "right": 0.8} | values
    with pytest.raises(StreamingConfigError) as info:
        StreamingConfig.from_seconds(**lengths, frame_samples=1280)
    assert setting in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "fields", [(0, 0, 0, 8), (1, -1, 0, 8), (1, 0, -1, 8), (1, 0, 0, 0)], ids=["chunk", "left", "right", "F"]
)
def test_config_validates_frames(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        StreamingConfig(*fields)


def test_windows_are_frame_aligned_and_commits_tile_the_stream() -> None:
    audio = np.arange(301, dtype=np.float32)
    _, windows = stream(CONFIG, [audio])
    assert_commits_tile([w for w, _ in windows], audio.size)
    for window, samples in windows[:-1]:
        assert not window.final
        assert window.commit_stop - window.commit_start == CONFIG.chunk_frames
        assert window.first_frame == max(0, window.commit_start - CONFIG.left_frames)
        assert window.start_sample == window.first_frame * F
        assert window.tentative_stop == window.commit_stop + CONFIG.right_frames
        assert window.stop_sample == window.tentative_stop * F
        np.testing.assert_array_equal(samples, audio[window.start_sample : window.stop_sample])
    last, samples = windows[-1]
    assert last.final and last.tentative_stop == last.commit_stop
    assert last.stop_sample == audio.size
    np.testing.assert_array_equal(samples, audio[last.start_sample :])


def test_windows_depend_only_on_the_sample_count() -> None:
    rng = np.random.default_rng(7)
    audio = rng.standard_normal(1003).astype(np.float32)
    _, expected = stream(CONFIG, [audio])
    for sizes in ([1] * audio.size, [10] * 101, [160] * 7, random_sizes(rng, audio.size, 90), [5, 500, 3]):
        _, windows = stream(CONFIG, pieces(audio, sizes))
        assert [w for w, _ in windows] == [w for w, _ in expected]
        for (_, got), (_, want) in zip(windows, expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_real_frame_size_with_160_sample_and_one_second_feeds() -> None:
    config = StreamingConfig.from_seconds(chunk=1.6, left=4.0, right=0.8, frame_samples=1280)
    audio = np.random.default_rng(3).standard_normal(16_000 * 12 + 77).astype(np.float32)
    results = [stream(config, pieces(audio, [size] * audio.size))[1] for size in (160, 16_000, audio.size)]
    for windows in results[1:]:
        assert [w for w, _ in windows] == [w for w, _ in results[0]]
    assert len(results[0]) == 8  # chunks at 0, 1.6, ..., 9.6 s with 0.8 s look-ahead, then the rest


@pytest.mark.parametrize("total", [1, F - 1, F, 17, (CONFIG.chunk_frames + CONFIG.right_frames) * F])
def test_a_stream_of_at_most_chunk_plus_lookahead_is_one_final_window(total: int) -> None:
    chunker, windows = stream(CONFIG, [np.ones(1, np.float32)] * total)
    assert [w for w, _ in windows] == [Window(0, total, 0, 0, -(-total // F), -(-total // F), final=True)]
    assert chunker.flush() is None


def test_one_sample_more_than_chunk_plus_lookahead_gives_a_window_before_the_end() -> None:
    total = (CONFIG.chunk_frames + CONFIG.right_frames) * F + 1
    _, windows = stream(CONFIG, [np.ones(total, np.float32)])
    assert [w.final for w, _ in windows] == [False, True]


def test_flush_without_audio_gives_nothing() -> None:
    chunker = Chunker(CONFIG)
    assert chunker.flush() is None
    chunker.feed(np.zeros(0, np.float32))
    assert chunker.next_window() is None and chunker.flush() is None


def test_memory_stays_bounded_on_a_long_stream() -> None:
    config = StreamingConfig.from_seconds(chunk=0.8, left=1.6, right=0.4, frame_samples=1280)
    chunker = Chunker(config)
    bound = (config.left_frames + config.chunk_frames + config.right_frames) * 1280
    piece = np.zeros(1600, np.float32)
    for _ in range(2000):  # 200 s
        chunker.feed(piece)
        while chunker.next_window() is not None:
            pass
        assert chunker.buffered_samples <= bound + piece.size
    assert chunker.total_samples == 2000 * piece.size


def test_samples_of_an_old_window_are_refused() -> None:
    chunker = Chunker(CONFIG)
    chunker.feed(np.zeros(40 * F, np.float32))
    first = chunker.next_window()
    assert first is not None
    while chunker.next_window() is not None:
        pass
    with pytest.raises(ValueError, match="no longer buffered"):
        chunker.samples(first)


@pytest.mark.parametrize("flushed_at", [5 * F, 5 * F + 3, 13 * F + 1])
def test_finalize_then_more_audio_resumes_at_the_next_frame_boundary(flushed_at: int) -> None:
    audio = np.arange(40 * F + 5, dtype=np.float32)
    chunker, before = stream(CONFIG, [audio[:flushed_at]])
    finalized = before[-1][0]
    assert finalized.final and finalized.commit_stop == -(-flushed_at // F)
    assert chunker.flush() is None  # a second Finalize with nothing new commits nothing

    later = []
    for piece in pieces(audio[flushed_at:], [7] * audio.size):
        chunker.feed(piece)
        while (window := chunker.next_window()) is not None:
            later.append((window, chunker.samples(window).copy()))
    window = chunker.flush()
    assert window is not None
    later.append((window, chunker.samples(window).copy()))

    assert_commits_tile([w for w, _ in before + later], audio.size)
    resumed = later[0][0]
    assert resumed.first_frame == max(0, resumed.commit_start - CONFIG.left_frames)
    for window, samples in later:
        np.testing.assert_array_equal(samples, audio[window.start_sample : window.stop_sample])


def test_decode_stop() -> None:
    window = Window(80, 160, 10, 12, 16, 20, final=False)
    assert window.decode_stop(10) == 16
    assert window.decode_stop(11) == 16
    with pytest.raises(ValueError, match="gave 9 frames for a window of 10"):
        window.decode_stop(9)
    final = Window(80, 150, 10, 12, 19, 19, final=True)
    assert final.decode_stop(9) == 19  # through the encoder's extra frame at the end of the audio
    assert final.decode_stop(7) == 17


VOCABULARY = Vocabulary(("▁he", "▁was", "▁no", "t", "▁an", "<blk>"))


def test_weaver_commits_and_replaces_the_tentative_tail() -> None:
    weaver = TokenWeaver(VOCABULARY)
    first = weaver.snapshot()
    assert (first.committed, first.transcription, first.changed) == ("", "", True)
    assert not weaver.snapshot().changed

    weaver.commit([Emission(0, 1), Emission(1, 3)])
    weaver.propose([Emission(2, 5)])
    snap = weaver.snapshot()
    assert (snap.committed, snap.transcription, snap.changed) == ("he was", "he was no", True)
    assert [e.token for e in snap.emissions] == [0, 1, 2]

    weaver.propose([Emission(2, 5)])
    assert not weaver.snapshot().changed  # the same tail again is not news

    weaver.commit([Emission(2, 5)])
    weaver.propose([Emission(3, 6)])
    snap = weaver.snapshot()
    assert (snap.committed, snap.transcription) == ("he was no", "he was not")
    assert snap.transcription.startswith(snap.committed)

    weaver.commit([Emission(3, 6)])
    weaver.propose([])
    snap = weaver.snapshot()
    assert (snap.committed, snap.transcription, snap.changed) == ("he was not", "he was not", True)


def test_weaver_refuses_emissions_that_go_back_in_time() -> None:
    weaver = TokenWeaver(VOCABULARY)
    weaver.commit([Emission(0, 4)])
    with pytest.raises(ValueError, match="frame 3 comes before frame 4"):
        weaver.commit([Emission(1, 3)])
    with pytest.raises(ValueError, match="before"):
        weaver.propose([Emission(1, 5), Emission(2, 2)])
