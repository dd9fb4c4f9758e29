"""The segment rules of api.md ("Segments"), checked on the JSON results of one native stream, and
helpers to match segments with the utterances of joined recordings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SAMPLE_RATE = 16_000
Result = dict[str, Any]  # one JSON result of the native stream


def check_segment_rules(results: Sequence[Result]) -> None:
    """One `COMPLETE` at the end, whose text, tokens, words and segments are those of the segment
    finals before it; partials and the final of one segment share its id and start, ids count up
    from 0, segments do not overlap; within a segment, `committed` only grows, `transcription`
    starts with it, and no partial repeats the one before it; finals carry tokens and words,
    partials neither; a final is `speech_final` or `from_finalize`, never both."""
    *body, complete = results
    assert complete["status"] == "COMPLETE" and complete["is_final"] is True, complete
    assert "segment" not in complete
    assert all(r["status"] == "ACTIVE" for r in body)
    finals: list[Result] = []
    previous: Result | None = None
    for result in body:
        segment = result["segment"]
        assert result["transcription"].startswith(result["committed"]), result
        assert not (result["speech_final"] and result["from_finalize"]), result
        assert segment["start"] <= segment["end"], result
        if previous is None or previous["is_final"]:
            expected_id = len(finals)
            assert segment["id"] == expected_id, (segment, expected_id)
            assert not finals or segment["start"] >= finals[-1]["segment"]["end"], result
        else:
            assert segment["id"] == previous["segment"]["id"], result
            assert segment["start"] == previous["segment"]["start"], result
            assert result["committed"].startswith(previous["committed"]), (previous, result)
            assert result["is_final"] or (result["committed"], result["transcription"]) != (
                previous["committed"],
                previous["transcription"],
            ), result
        if result["is_final"]:
            assert result["committed"] == result["transcription"], result
            assert set(result["metadata"]) >= {"tokens", "words"}, result
            finals.append(result)
        else:
            assert not result["speech_final"] and not result["from_finalize"], result
            assert "tokens" not in result["metadata"] and "words" not in result["metadata"], result
        previous = result
    texts = [f["transcription"] for f in finals if f["transcription"]]
    assert complete["transcription"] == complete["committed"] == " ".join(texts)
    metadata = complete["metadata"]
    assert metadata["tokens"] == [t for f in finals for t in f["metadata"]["tokens"]]
    assert metadata["words"] == [w for f in finals for w in f["metadata"]["words"]]
    assert [{k: s[k] for k in ("id", "start", "end")} for s in metadata["segments"]] == [
        f["segment"] for f in finals
    ]
    assert [s["text"] for s in metadata["segments"]] == [f["transcription"] for f in finals]


def without_timing(result: Result) -> Result:
    """A result without what depends on when it was sent: its processing time, and for a segment
    final the audio received by then."""
    audio = result["metadata"]["audio_seconds"] if result["status"] == "COMPLETE" else None
    metadata = result["metadata"] | {"processing_time_ms": None, "audio_seconds": audio}
    return result | {"metadata": metadata}


def segment_finals(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r["is_final"] and r["status"] == "ACTIVE"]


def overlapping(finals: Sequence[Result], span: tuple[int, int]) -> list[Result]:
    """The segment finals with text whose audio overlaps the sample span `span`."""
    start, stop = span[0] / SAMPLE_RATE, span[1] / SAMPLE_RATE
    return [
        f
        for f in finals
        if f["transcription"] and f["segment"]["start"] < stop and f["segment"]["end"] > start
    ]
