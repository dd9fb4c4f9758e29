"""The sans-IO native protocols against `api.md`, without a socket: frames to events, bodies to samples,
results to the documents clients read. Fast enough for mutation testing (`[tool.mutmut]`)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile

from amira.core.errors import BadAudio, BadRequest, TooLarge, UnsupportedMediaType
from amira.core.segments import SegmentOptions
from amira.core.transcript import ResultStatus, StreamResult, Transcript, Word
from amira.protocols.native_batch import (
    NO_OPAQUE,
    BatchOptions,
    batch_document,
    check_duration,
    parse_batch_body,
    word_document,
)
from amira.protocols.native_stream import (
    END_OF_STREAM,
    KEEPALIVE,
    Audio,
    EndOfStream,
    Finalize,
    KeepAlive,
    NativeStream,
    StreamPhase,
    result_document,
)
from amira.protocols.values import parse_sample_rate

pytestmark = pytest.mark.timeout(30)

PCM = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
WORDS = (Word("four", 0.08049, 0.40049, 0.912345), Word("queen", 0.48, 0.9604, 1.0))


def rate_options(sample_rate: str | None) -> BatchOptions:
    """The options of a request whose query has only `sample_rate` (or nothing)."""
    return BatchOptions.from_query({} if sample_rate is None else {"sample_rate": sample_rate})


def result(status: ResultStatus, committed: str = "four", tail: str = " queen") -> StreamResult:
    return StreamResult(
        status=status,
        transcription=committed + tail,
        committed=committed,
        tokens=(3, 7),
        token_frames=(1, 6),
        words=WORDS if status is not ResultStatus.PARTIAL else (),
        audio_seconds=1.23456,
        processing_time_ms=12.345,
    )


# --- stream frames ------------------------------------------------------------------------------------


def test_frames_become_events() -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    assert protocol.receive_bytes(PCM) == Audio(PCM)
    assert protocol.receive_bytes(KEEPALIVE) == KeepAlive()
    assert protocol.receive_text('{"type": "KeepAlive"}') == KeepAlive()
    assert protocol.receive_text('{"type": "Finalize"}') == Finalize()
    assert protocol.received_samples == 4 and isinstance(protocol.received_samples, int)
    assert protocol.phase is StreamPhase.RECEIVING
    assert protocol.receive_bytes(END_OF_STREAM) == EndOfStream()
    assert protocol.phase is StreamPhase.ENDING
    with pytest.raises(BadRequest, match="after the end of the stream"):
        protocol.receive_bytes(PCM)
    with pytest.raises(BadRequest, match="after the end of the stream"):
        protocol.receive_text('{"type": "KeepAlive"}')


def test_close_stream_ends_the_input_like_the_end_byte() -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    assert protocol.receive_text('{"type": "CloseStream"}') == EndOfStream()
    assert protocol.phase is StreamPhase.ENDING


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", BadRequest),
        (b"\x02", BadRequest),
        (b"\xff", BadRequest),
        (b"\x00\x00\x00", BadRequest),
        (bytes(17), TooLarge),
        ("hello", BadRequest),
        ("[]", BadRequest),
        ('{"type": "Dance"}', BadRequest),
        ('{"kind": "KeepAlive"}', BadRequest),
        ("[" * 100_000, BadRequest),
    ],
)
def test_bad_frames_are_protocol_errors(frame: bytes | str, error: type) -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    with pytest.raises(error):
        protocol.receive_text(frame) if isinstance(frame, str) else protocol.receive_bytes(frame)


def test_frames_of_exactly_the_maximum_size_pass() -> None:
    assert NativeStream(max_frame_bytes=16, max_audio_secs=10).receive_bytes(bytes(16)) == Audio(bytes(16))


def test_the_stream_duration_limit_counts_samples_at_the_streams_rate() -> None:
    protocol = NativeStream(max_frame_bytes=20_000, max_audio_secs=1.0)
    protocol.configure({"sample_rate": "8000"}, SegmentOptions())
    protocol.receive_bytes(bytes(16_000))  # exactly 1 s at 8 kHz
    with pytest.raises(TooLarge, match="longer than 1 s"):
        protocol.receive_bytes(bytes(2))


def test_options_from_the_query() -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    assert protocol.configure({}, SegmentOptions()).sample_rate == 16_000
    assert protocol.configure({"sample_rate": " 44100 "}, SegmentOptions()).sample_rate == 44_100
    with pytest.raises(BadAudio):
        protocol.configure({"sample_rate": "100"}, SegmentOptions())


# --- stream messages ----------------------------------------------------------------------------------


def test_partial_and_final_documents() -> None:
    assert result_document(result(ResultStatus.PARTIAL)) == {
        "transcription": "four queen",
        "status": "ACTIVE",
        "is_final": False,
        "speech_final": False,
        "from_finalize": False,
        "committed": "four",
        "metadata": {"audio_seconds": 1.235, "processing_time_ms": 12.3},
    }
    final = result_document(result(ResultStatus.FINAL, "four queen", ""))
    assert final["status"] == "ACTIVE" and final["is_final"] is True
    assert final["metadata"] == {
        "audio_seconds": 1.235,
        "processing_time_ms": 12.3,
        "tokens": [3, 7],
        "words": [
            {"word": "four", "start": 0.08, "end": 0.4, "confidence": 0.9123},
            {"word": "queen", "start": 0.48, "end": 0.96, "confidence": 1.0},
        ],
    }
    complete = result_document(result(ResultStatus.COMPLETE, "four queen", ""))
    assert complete["status"] == "COMPLETE" and complete["is_final"] is True
    assert complete["metadata"] == final["metadata"] | {"segments": []}


def test_exactly_one_complete_and_nothing_after_it_or_an_error() -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    assert json.loads(protocol.result_message(result(ResultStatus.PARTIAL)))["status"] == "ACTIVE"
    assert json.loads(protocol.result_message(result(ResultStatus.FINAL)))["is_final"] is True
    assert protocol.phase is StreamPhase.RECEIVING
    assert json.loads(protocol.result_message(result(ResultStatus.COMPLETE)))["status"] == "COMPLETE"
    assert protocol.phase is StreamPhase.COMPLETE
    with pytest.raises(RuntimeError, match="after the stream ended"):
        protocol.result_message(result(ResultStatus.COMPLETE))
    failed = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    message = json.loads(failed.error_message(TooLarge("frame of 17 bytes"), "four", "3f2a"))
    assert message == {
        "transcription": "four",
        "status": "ERROR",
        "error_type": "too_large",
        "message": "frame of 17 bytes (stream 3f2a)",
    }
    assert failed.phase is StreamPhase.FAILED
    with pytest.raises(RuntimeError, match="failed"):
        failed.result_message(result(ResultStatus.PARTIAL))
    with pytest.raises(BadRequest):
        failed.receive_bytes(PCM)


def test_the_server_ending_the_input_keeps_a_finished_phase() -> None:
    protocol = NativeStream(max_frame_bytes=16, max_audio_secs=10)
    protocol.result_message(result(ResultStatus.COMPLETE))
    protocol.end_input()
    assert protocol.phase is StreamPhase.COMPLETE


# --- batch bodies -------------------------------------------------------------------------------------


def test_every_documented_body_form_gives_the_same_samples() -> None:
    expected = np.array([0.0, 0.5, -1.0, 32767 / 32768], np.float32)
    wav = io.BytesIO()
    soundfile.write(wav, expected, 16_000, format="WAV", subtype="PCM_16")
    bodies = {
        "application/json": json.dumps({"audio_buffer": list(PCM)}).encode(),
        "application/json; charset=utf-8": json.dumps(
            {"audio_buffer": base64.b64encode(PCM).decode()}
        ).encode(),
        "application/octet-stream": PCM,
        "audio/l16": PCM,
        "Audio/PCM": PCM,
        "audio/wav": wav.getvalue(),
        "audio/x-wav": wav.getvalue(),
        "audio/wave": wav.getvalue(),
    }
    for content_type, body in bodies.items():
        parsed = parse_batch_body(content_type.split(";")[0], body, rate_options(None), 10)
        assert parsed.samples.dtype == np.float32, content_type
        np.testing.assert_array_equal(parsed.samples, expected, err_msg=content_type)
        assert parsed.opaque is NO_OPAQUE


def test_json_bodies_carry_opaque_and_sample_rate() -> None:
    body = json.dumps({"audio_buffer": list(bytes(16_000)), "opaque": {"id": 7}, "sample_rate": 8000})
    parsed = parse_batch_body("application/json", body.encode(), rate_options("44100"), 10)
    assert parsed.opaque == {"id": 7} and parsed.samples.size == 16_000  # 1 s at 8 kHz is 16000 at 16 kHz
    document = json.dumps({"audio_buffer": [0, 0], "opaque": None}).encode()
    nothing = parse_batch_body("application/json", document, rate_options(None), 10)
    assert nothing.opaque is None


def test_raw_pcm_takes_the_query_sample_rate() -> None:
    assert parse_batch_body("audio/pcm", bytes(16_000), rate_options("8000"), 10).samples.size == 16_000
    assert parse_batch_body("audio/pcm", bytes(16_000), rate_options(None), 10).samples.size == 8000


@pytest.mark.parametrize(
    ("content_type", "body", "query", "error", "match"),
    [
        ("application/json", b"{", None, BadRequest, "malformed JSON"),
        ("application/json", b"\xff", None, BadRequest, None),
        ("application/json", b"[]", None, BadRequest, "must be an object"),
        ("application/json", b"{}", None, BadRequest, "no audio_buffer"),
        ("application/json", b'{"audio_buffer": [256, 0]}', None, BadRequest, "0 to 255"),
        ("application/json", b'{"audio_buffer": [true, 0]}', None, BadRequest, "0 to 255"),
        ("application/json", b'{"audio_buffer": [-1, 0]}', None, BadRequest, "0 to 255"),
        ("application/json", b'{"audio_buffer": "!!"}', None, BadRequest, "base64"),
        ("application/json", b'{"audio_buffer": 5}', None, BadRequest, "array of integers"),
        ("application/json", b'{"audio_buffer": [0, 0, 0]}', None, BadRequest, "even number"),
        ("application/json", b'{"audio_buffer": [0, 0], "sample_rate": "x"}', None, BadRequest, "whole"),
        ("application/json", b'{"audio_buffer": [0, 0], "sample_rate": 16000.0}', None, BadRequest, "whole"),
        ("audio/pcm", b"\x00\x00\x00", None, BadRequest, "even number"),
        ("audio/pcm", b"", None, BadAudio, "empty"),
        ("audio/pcm", b"\x00\x00", "abc", BadRequest, "whole"),
        ("audio/pcm", bytes(32_002), None, TooLarge, "limit of 1 s"),
        ("application/json", json.dumps({"audio_buffer": [0] * 32_002}).encode(), None, TooLarge, "1.00 s"),
        ("audio/wav", b"RIFF", None, BadAudio, None),
        ("text/plain", b"hello", None, UnsupportedMediaType, "text/plain"),
        ("", b"hello", None, UnsupportedMediaType, "(none)"),
    ],
)
def test_bad_bodies_get_the_documented_error(
    content_type: str, body: bytes, query: str | None, error: type, match: str | None
) -> None:
    with pytest.raises(error, match=match):
        parse_batch_body(content_type, body, rate_options(query), 1.0)


def test_the_duration_limit_is_inclusive() -> None:
    check_duration(16_000, 16_000, 1.0)
    with pytest.raises(TooLarge, match=r"1\.00 s; the limit is 0\.5 s"):
        check_duration(16_000, 16_000, 0.5)


@pytest.mark.parametrize("value", ["16000", " 8000", 44_100, "192000"])
def test_sample_rates_that_parse(value: object) -> None:
    assert parse_sample_rate(value) == int(str(value).strip())


@pytest.mark.parametrize("value", ["", "1e4", "²", "16000.0", "-16000", "1" * 10, True, 16000.0, None])
def test_sample_rates_that_are_not_numbers(value: object) -> None:
    with pytest.raises(BadRequest, match="whole number"):
        parse_sample_rate(value)


@pytest.mark.parametrize("value", ["0", "7999", "999999999", 192_001])
def test_numbers_that_are_not_supported_rates(value: object) -> None:
    with pytest.raises(BadAudio, match="unsupported sample rate"):
        parse_sample_rate(value)


# --- batch documents ----------------------------------------------------------------------------------


def test_the_batch_document_is_the_contracts() -> None:
    transcript = Transcript(
        text="four queen",
        tokens=(3, 7),
        token_frames=(1, 6),
        token_probabilities=(0.9, 1.0),
        words=WORDS,
        audio_samples=47_840,
        audio_seconds=2.99049,
        features_length=299,
        encoded_length=38,
    )
    assert batch_document(transcript, "default", 41.234) == {
        "transcription": "four queen",
        "status": "COMPLETE",
        "metadata": {
            "model": "default",
            "audio_length_samples": 47_840,
            "audio_seconds": 2.99,
            "features_length": 299,
            "encoded_length": 38,
            "tokens": [3, 7],
            "words": [word_document(w) for w in WORDS],
            "processing_time_ms": 41.2,
        },
        "segments": [],  # a transcript built without segments (issue 15 adds them to the document)
    }
    assert batch_document(transcript, "default", 1.0, opaque=None)["opaque"] is None
    assert word_document(WORDS[1]) == {"word": "queen", "start": 0.48, "end": 0.96, "confidence": 1.0}
