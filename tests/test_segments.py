"""The sans-IO segment rules: endpoints, maximum length, speech onsets, cuts and interim windows of the
chunker, the segment options on the wire and in the settings, and the documents of api.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amira.core import segments
from amira.core.decoding import Emission
from amira.core.errors import BadRequest
from amira.core.segments import (
    Boundary,
    BoundaryKind,
    Endpointer,
    SegmentConfig,
    SegmentOptions,
    SegmentPhase,
    SpeechOnset,
    frame_energies,
)
from amira.core.transcript import ResultStatus, Segment, SegmentEnd, SegmentSpan, StreamResult, Word
from amira.core.windowing import Chunker, StreamingConfig
from amira.protocols.native_stream import StreamOptions, result_document
from amira.settings import Settings, SettingsError

LOUD, QUIET = 0.2, 0.001
E = 5  # endpointing frames in these tests


def energies(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(count, level) for level, count in runs])


def tokens(*frames: int) -> list[Emission]:
    return [Emission(1, frame) for frame in frames]


def test_an_endpoint_needs_speech_then_a_run_of_non_speech() -> None:
    endpointer = Endpointer(E, max_frames=1000)
    frames = energies((QUIET, 1), (LOUD, 9), (QUIET, 20))
    assert endpointer.observe(tokens(2, 6), frames[:10], 0, 10) is None
    assert endpointer.phase is SegmentPhase.SPEECH
    # the last loud frame is 9: frames 10..14 are the run, the cut keeps one frame of it
    boundary = endpointer.observe([], frames[10:], 10, 30)
    assert boundary == Boundary(BoundaryKind.ENDPOINT, 9 + 1 + segments.TRAILING_FRAMES, 9 + E + 1)


def test_loud_frames_without_tokens_keep_the_segment_going() -> None:
    """The decoder alone would end it at frame 2 + E: the rest of the word is loud."""
    endpointer = Endpointer(E, max_frames=1000)
    frames = energies((QUIET, 1), (LOUD, 11), (QUIET, 10))
    boundary = endpointer.observe(tokens(2), frames, 0, 22)
    assert boundary is not None and boundary.cut == 12 + segments.TRAILING_FRAMES


def test_until_a_quiet_frame_sets_the_floor_only_tokens_are_speech() -> None:
    endpointer = Endpointer(E, max_frames=1000)
    boundary = endpointer.observe(tokens(2), energies((LOUD, 12)), 0, 12)
    assert boundary == Boundary(BoundaryKind.ENDPOINT, 2 + 1 + segments.TRAILING_FRAMES, 2 + E + 1)


def test_steady_noise_counts_as_non_speech() -> None:
    """Noise at 0.05 is louder than -20 dB under the speech (0.2), but it is the floor."""
    endpointer = Endpointer(E, max_frames=1000)
    frames = energies((0.05, 2), (LOUD, 5), (0.05, 10))
    boundary = endpointer.observe(tokens(3), frames, 0, 17)
    assert boundary == Boundary(BoundaryKind.ENDPOINT, 6 + 1 + segments.TRAILING_FRAMES, 6 + E + 1)


def test_look_ahead_frames_are_judged_but_not_kept() -> None:
    """A run that reaches the endpoint in the look-ahead ends the segment; a token there that is
    not committed does not count once the next window decodes those frames differently."""
    endpointer = Endpointer(E, max_frames=1000)
    frames = energies((QUIET, 1), (LOUD, 3), (QUIET, 16))
    assert endpointer.observe(tokens(1, 8), frames[:12], 0, 6) is None  # 8: a tentative token
    boundary = endpointer.observe(tokens(), frames[6:], 6, 12)  # committed: no token at 8
    # the cut (frame 5) would go back into the committed frames before the window: it stays at 6
    assert boundary == Boundary(BoundaryKind.ENDPOINT, 6, 3 + E + 1)


def test_a_segment_without_speech_is_dropped_after_a_run_of_non_speech() -> None:
    endpointer = Endpointer(E, max_frames=1000)
    boundary = endpointer.observe([], energies((QUIET, 1), (LOUD, 2), (QUIET, 10)), 0, 13)
    assert boundary == Boundary(BoundaryKind.NO_SPEECH, 2 + E + 1, 2 + E + 1)
    assert endpointer.phase is SegmentPhase.AWAITING_SPEECH


def test_without_endpointing_only_the_maximum_length_ends_a_segment() -> None:
    endpointer = Endpointer(None, max_frames=30)
    frames = energies((QUIET, 1), (LOUD, 9), (QUIET, 10), (LOUD, 20))
    assert endpointer.observe(tokens(3), frames[:20], 0, 20) is None
    frames[27] = 0.0001  # the quietest frame of the next chunk
    boundary = endpointer.observe(tokens(22, 35), frames[20:40], 20, 40)
    assert boundary == Boundary(BoundaryKind.MAX_LENGTH, 27, 27)  # 40 - 3 >= 30


def test_the_maximum_length_counts_from_the_first_token() -> None:
    endpointer = Endpointer(None, max_frames=30)
    assert endpointer.observe([], energies((QUIET, 40)), 0, 40) is None
    assert endpointer.observe(tokens(45), energies((LOUD, 20)), 40, 60) is None
    assert endpointer.observe([], energies((LOUD, 20)), 60, 80) is not None


def test_speech_onset_skips_non_speech_and_keeps_a_preroll() -> None:
    frame = 4
    onset = SpeechOnset(position=1000, reference=LOUD, frame_samples=frame, preroll_frames=2)
    assert onset.feed(np.full(10 * frame + 3, QUIET, np.float32)) is None
    assert onset.feed(np.full(5 * frame, QUIET, np.float32)) is None
    speech = np.full(3 * frame, LOUD, np.float32)
    found = onset.feed(speech)
    assert found is not None
    start, audio = found
    assert start == 1000 + 13 * frame  # 2 frames before the first loud one (frame 15 counted from 1000)
    assert audio.size == 2 * frame + 3 + speech.size
    np.testing.assert_array_equal(audio[-speech.size :], speech)


def test_at_the_start_of_a_stream_only_a_silence_longer_than_the_lead_is_skipped() -> None:
    frame, quiet, loud = 4, np.full(4, QUIET, np.float32), np.full(4, LOUD, np.float32)
    early = SpeechOnset(position=0, reference=0.0, frame_samples=frame, preroll_frames=1, lead_frames=6)
    found = early.feed(np.concatenate([quiet] * 5 + [loud]))
    assert found is not None and found[0] == 0 and found[1].size == 6 * frame
    late = SpeechOnset(position=0, reference=0.0, frame_samples=frame, preroll_frames=1, lead_frames=6)
    assert late.feed(np.concatenate([quiet] * 5)) is None
    held = late.within_lead()  # a stream ending now gets its quiet start decoded
    assert held is not None and held[0] == 0 and held[1].size == 5 * frame
    assert late.feed(np.concatenate([quiet] * 4)) is None
    assert late.within_lead() is None
    found = late.feed(loud)
    assert found is not None and found[0] == 8 * frame and found[1].size == 2 * frame


def test_speech_onset_needs_more_than_the_pause_floor_and_a_fraction_of_the_speech_before() -> None:
    onset = SpeechOnset(position=0, reference=LOUD, frame_samples=4, preroll_frames=0)
    too_quiet = segments.GATE_OF_ONSET * LOUD * 0.9
    assert onset.feed(np.full(40, too_quiet, np.float32)) is None
    loud_enough = np.full(4, segments.GATE_OF_ONSET * LOUD * 1.1, np.float32)
    assert onset.feed(np.concatenate([np.full(40, 0.0001, np.float32), loud_enough])) is not None
    noisy = SpeechOnset(position=0, reference=0.0, frame_samples=4, preroll_frames=0)
    assert noisy.feed(np.full(40, 0.05, np.float32)) is None  # a steady floor is no onset
    assert noisy.feed(np.full(4, 0.15, np.float32)) is not None


def test_frame_energies() -> None:
    samples = np.array([1, -1, 1, -1, 0.5, 0.5], np.float32)
    np.testing.assert_allclose(frame_energies(samples, 4), [1.0, 0.5])
    assert frame_energies(np.zeros(0, np.float32), 4).size == 0


def test_segment_config_in_frames() -> None:
    options = SegmentOptions(endpointing_ms=640, max_segment_secs=30.0, interim_secs=0.4)
    assert SegmentConfig.from_options(options, 1280, 16_000) == SegmentConfig(8, 375, True, 6400)
    assert SegmentConfig.from_options(SegmentOptions(endpointing_ms=10), 1280, 16_000).endpointing_frames == 2
    quiet = SegmentConfig.from_options(
        SegmentOptions(endpointing_ms=None, interim_results=False), 1280, 16_000
    )
    assert (quiet.endpointing_frames, quiet.partials, quiet.interim_samples) == (None, False, None)


F = 8
CONFIG = StreamingConfig(chunk_frames=4, left_frames=3, right_frames=2, frame_samples=F)


def test_a_cut_decodes_up_to_it_and_hands_on_the_rest() -> None:
    audio = np.arange(40 * F + 5, dtype=np.float32)
    chunker = Chunker(CONFIG)
    chunker.feed(audio[: 20 * F + 3])
    windows = []
    while (window := chunker.next_window()) is not None:
        windows.append(window)
    latest = windows[-1]  # commits frames 8..12 of window frames 5..14
    final, rest = chunker.cut(latest, 13)
    assert (final.commit_start, final.commit_stop, final.final) == (latest.commit_start, 13, True)
    np.testing.assert_array_equal(chunker.samples(final), audio[latest.start_sample : 13 * F])
    np.testing.assert_array_equal(rest, audio[13 * F : 20 * F + 3])
    assert chunker.total_samples == 13 * F
    with pytest.raises(ValueError, match="outside"):
        Chunker(CONFIG).cut(latest, latest.tentative_stop + 1)


def test_an_interim_window_reaches_the_newest_sample_and_changes_nothing() -> None:
    audio = np.arange(8 * F + 5, dtype=np.float32)
    chunker = Chunker(CONFIG)
    assert chunker.interim() is None
    chunker.feed(audio)
    window = chunker.next_window()
    assert window is not None and chunker.next_window() is None
    interim = chunker.interim()
    assert interim is not None
    refresh, samples = interim
    assert (refresh.first_frame, refresh.commit_start, refresh.stop_sample) == (1, 4, audio.size)
    np.testing.assert_array_equal(samples, audio[F:])
    np.testing.assert_array_equal(chunker.samples(window), audio[: window.stop_sample])  # still the latest
    assert chunker.next_frame == 4 and chunker.total_samples == audio.size


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, SegmentOptions(endpointing_ms=300)),
        ({"endpointing": "false"}, SegmentOptions(endpointing_ms=None)),
        ({"endpointing": "10"}, SegmentOptions(endpointing_ms=10)),
        ({"endpointing": "1500", "max_segment_secs": "12.5"}, SegmentOptions(1500, 12.5)),
        ({"interim_results": "false", "api_key": "x"}, SegmentOptions(300, interim_results=False)),
    ],
)
def test_segment_options_from_the_query(query: dict[str, str], expected: SegmentOptions) -> None:
    defaults = SegmentOptions(endpointing_ms=300)
    assert StreamOptions.from_query(query, defaults).segments == expected


@pytest.mark.parametrize(
    "query",
    [
        {"endpointing": "9"},
        {"endpointing": "60001"},
        {"endpointing": "1e3"},
        {"endpointing": "+100"},
        {"endpointing": "True"},
        {"endpointing": "٣٠٠"},
        {"max_segment_secs": "0.5"},
        {"max_segment_secs": "301"},
        {"max_segment_secs": "inf"},
        {"max_segment_secs": "1."},
        {"max_segment_secs": "9" * 40},
        {"interim_results": "yes"},
        {"interim_results": ""},
    ],
)
def test_bad_segment_options_are_bad_requests(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest, match=next(iter(query))):
        StreamOptions.from_query(query, SegmentOptions())


def test_segment_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"STREAM_ENDPOINTING_MS": "false", "STREAM_MAX_SEGMENT_SECS": "20", "STREAM_INTERIM_SECS": "0"}
    )
    assert settings.segment_options() == SegmentOptions(None, 20.0, True, None)
    assert Settings().segment_options() == SegmentOptions()
    for variable, value in (
        ("STREAM_ENDPOINTING_MS", "5"),
        ("STREAM_MAX_SEGMENT_SECS", "0.1"),
        ("STREAM_INTERIM_SECS", "-1"),
    ):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: value})


def result(status: ResultStatus, **fields: object) -> StreamResult:
    values: dict[str, object] = {
        "transcription": "four queen",
        "committed": "four",
        "tokens": (3, 4),
        "token_frames": (1, 5),
        "words": (Word("four", 0.08, 0.16, 0.9), Word("queen", 0.4, 0.48, 0.5)),
        "audio_seconds": 2.0,
        "processing_time_ms": 1.25,
    }
    return StreamResult(status, **(values | fields))  # type: ignore[arg-type]


def test_documents_of_partials_segment_finals_and_complete() -> None:
    span = SegmentSpan(1, 2.3, 3.1)
    partial = result_document(result(ResultStatus.PARTIAL, segment=span))
    assert partial == {
        "transcription": "four queen",
        "status": "ACTIVE",
        "is_final": False,
        "speech_final": False,
        "from_finalize": False,
        "committed": "four",
        "segment": {"id": 1, "start": 2.3, "end": 3.1},
        "metadata": {"audio_seconds": 2.0, "processing_time_ms": 1.2},
    }
    final = result_document(result(ResultStatus.FINAL, segment=span, ended_by=SegmentEnd.ENDPOINT))
    assert (final["is_final"], final["speech_final"], final["from_finalize"]) == (True, True, False)
    assert final["metadata"]["tokens"] == [3, 4] and final["metadata"]["words"][1]["word"] == "queen"
    finalized = result_document(result(ResultStatus.FINAL, segment=span, ended_by=SegmentEnd.FINALIZE))
    assert (finalized["speech_final"], finalized["from_finalize"]) == (False, True)
    words = (Word("four", 2.4, 2.5, 0.9), Word("queen", 2.6, 2.8, 0.5))
    segment = Segment(span, "four queen", (3, 4), (1, 5), words, SegmentEnd.ENDPOINT)
    complete = result_document(result(ResultStatus.COMPLETE, segments=(segment,)))
    assert complete["status"] == "COMPLETE" and "segment" not in complete
    assert complete["metadata"]["segments"] == [
        {"id": 1, "start": 2.3, "end": 3.1, "text": "four queen", "confidence": 0.7}
    ]
    json.dumps(complete)
