"""The sans-IO pieces of the compatible dialects: G.711, multipart forms, subtitle cues, and the
protocol state that spans messages (Deepgram's finals, Realtime's items and deltas)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amira.core import g711
from amira.core.errors import BadRequest
from amira.core.subtitles import cues_from_words, srt, vtt
from amira.core.transcript import ResultStatus, SegmentEnd, SegmentSpan, StreamResult, Word
from amira.protocols.live import Clear, Reply
from amira.protocols.multipart import parse_form_data
from amira.protocols.native_stream import Audio, Finalize
from amira.protocols.openai_audio import InvalidField, parse_transcription_form
from amira.protocols.openai_realtime import RealtimeTranscription
from amira.testing.codecs import encode_g711


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_decodes_as_the_standard_library_did(law: str) -> None:
    audioop = pytest.importorskip(
        "audioop"
    )  # removed in Python 3.13: an independent reference while it lasts
    every_byte = bytes(range(256))
    reference = audioop.ulaw2lin(every_byte, 2) if law == "mulaw" else audioop.alaw2lin(every_byte, 2)
    assert g711.to_pcm16(every_byte, law) == reference


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_round_trip_keeps_the_signal(law: str) -> None:
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(8000) * 3000).clip(-32768, 32767).astype("<i2")
    decoded = np.frombuffer(g711.to_pcm16(encode_g711(pcm.tobytes(), law), law), "<i2").astype(float)
    error = decoded - pcm
    assert np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(pcm.astype(float) ** 2)) < 0.05  # about 30 dB SNR


def form(fields: dict[str, object], file: bytes | None = b"RIFF....") -> tuple[str, bytes]:
    files = {
        "file" if file is not None else "other": ("speech.wav", b"x" if file is None else file, "audio/wav")
    }
    request = httpx.Request("POST", "http://x/", data=fields, files=files)
    return request.headers["Content-Type"], request.read()


def test_multipart_forms_as_httpx_writes_them() -> None:
    content_type, body = form(
        {"model": "default", "timestamp_granularities[]": ["word", "segment"]}, b"\r\n--x\r\n"
    )
    parts = parse_form_data(content_type, body)
    assert [(p.name, p.filename) for p in parts] == [
        ("model", None), ("timestamp_granularities[]", None), ("timestamp_granularities[]", None),
        ("file", "speech.wav"),
    ]  # fmt: skip
    assert parts[-1].data == b"\r\n--x\r\n" and parts[-1].content_type == "audio/wav"
    request = parse_transcription_form(content_type, body)
    assert request.granularities == {"word", "segment"} and request.response_format == "json"
    assert request.audio == b"\r\n--x\r\n"


@pytest.mark.parametrize(
    ("fields", "file", "param"),
    [
        ({}, b"x", "model"),
        ({"model": "default"}, None, "file"),
        ({"model": "default"}, b"", "file"),
        ({"model": "default", "response_format": "diarized_json"}, b"x", "response_format"),
        ({"model": "default", "timestamp_granularities": "words"}, b"x", "timestamp_granularities"),
        ({"model": "default", "stream": "yes"}, b"x", "stream"),
    ],
)
def test_transcription_forms_with_a_wrong_field_name_the_field(
    fields: dict, file: bytes | None, param: str
) -> None:
    with pytest.raises(InvalidField) as raised:
        parse_transcription_form(*form(fields, file))
    assert raised.value.param == param


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"no boundary here"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nunterminated",
        ),
        ("multipart/form-data; boundary=x", b"--x\r\nno header block--x--"),
        ("multipart/form-data; boundary=x", b"--x\r\nX: y\r\n\r\nv\r\n--x--"),
        ("multipart/form-data; boundary=x", b"--xjunk"),
    ],
)
def test_malformed_multipart_bodies_are_bad_requests(content_type: str, body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_form_data(content_type, body)


words_lists = st.lists(
    st.tuples(st.text("abcdefghij", min_size=1, max_size=50), st.floats(0.0, 3.0), st.floats(0.02, 1.5)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(spec=words_lists, tail=st.floats(0.0, 2.0))
def test_cues_follow_the_subtitle_rules(spec: list[tuple[str, float, float]], tail: float) -> None:
    words, now = [], 0.0
    for text, gap, length in spec:
        words.append(Word(text, now + gap, now + gap + length, 1.0))
        now += gap + length
    audio_seconds = now + tail - (0.5 if spec else 0.0)  # sometimes the last word runs past the end
    cues = cues_from_words(words, max(audio_seconds, 0.0))
    assert [w for c in cues for w in " ".join(c.lines).split(" ")] == [w.word for w in words]
    assert [(c.first, c.last) for c in cues] == [
        (c.first, c.first + len(c.text.split(" ")) - 1) for c in cues
    ]
    for cue, following in zip(cues, [*cues[1:], None], strict=False):
        assert 0 <= cue.start <= cue.end <= max(audio_seconds, 0.0)
        assert following is None or cue.end <= following.start
        assert len(cue.lines) <= 2
        several = cue.last > cue.first
        assert all(len(line) <= 42 for line in cue.lines) or not several
        assert words[cue.last].end - words[cue.first].start <= 7.0 or not several


def test_srt_and_vtt_text() -> None:
    words = [
        Word(w, start, end, 1.0)
        for w, start, end in [("ten", 0.5, 0.9), ("of", 1.0, 1.2), ("clubs", 1.3, 1.8), ("go", 4.0, 4.3)]
    ]
    cues = cues_from_words(words, 4.5)
    assert (
        srt(cues)
        == "1\n00:00:00,500 --> 00:00:01,800\nten of clubs\n\n2\n00:00:04,000 --> 00:00:04,300\ngo\n"
    )
    assert (
        vtt(cues)
        == "WEBVTT\n\n00:00:00.500 --> 00:00:01.800\nten of clubs\n\n00:00:04.000 --> 00:00:04.300\ngo\n"
    )


def result(
    status: ResultStatus,
    text: str,
    committed: str,
    span: tuple[int, float, float],
    ended_by: SegmentEnd | None = None,
) -> StreamResult:
    return StreamResult(status, text, committed, (), (), (), span[2], 1.0, SegmentSpan(*span), ended_by)


def test_realtime_items_are_segments_and_their_deltas_are_append_only() -> None:
    realtime = RealtimeTranscription("s", frozenset({"default"}), 65536, 60.0)
    assert json.loads(realtime.opening_messages()[0])["type"] == "session.created"
    assert realtime.segment_options.endpointing_ms == 500  # server VAD, OpenAI's default
    audio = {"type": "input_audio_buffer.append", "audio": "AAAA" * 2000}
    assert isinstance(realtime.receive_text(json.dumps(audio))[0], Audio)
    sent = realtime.result_messages(result(ResultStatus.PARTIAL, "king of cl", "king o", (0, 0.5, 2.0)))
    sent += realtime.result_messages(
        result(ResultStatus.PARTIAL, "king of clubs", "king of clubs", (0, 0.5, 2.5))
    )
    sent += realtime.result_messages(
        result(ResultStatus.FINAL, "king of clubs", "king of clubs", (0, 0.5, 3.0), SegmentEnd.ENDPOINT)
    )
    realtime.receive_text(json.dumps(audio))
    events = realtime.receive_text('{"type": "input_audio_buffer.commit"}')  # a commit in the next utterance
    assert isinstance(events[0], Finalize)
    sent += [events[1].text]
    sent += realtime.result_messages(result(ResultStatus.PARTIAL, "go", "go", (1, 4.0, 4.5)))
    sent += realtime.result_messages(
        result(ResultStatus.FINAL, "go forward", "go forward", (1, 4.0, 5.0), SegmentEnd.FINALIZE)
    )
    events = [json.loads(m) for m in sent]
    assert [e["type"].removeprefix("conversation.item.input_audio_transcription.") for e in events] == [
        "input_audio_buffer.speech_started", "delta", "delta", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "completed", "input_audio_buffer.committed",
        "input_audio_buffer.speech_started", "delta", "delta", "completed",
    ]  # fmt: skip
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert [c["transcript"] for c in completed] == ["king of clubs", "go forward"]
    for item in completed:
        deltas = [
            e["delta"] for e in events if e["type"].endswith(".delta") and e["item_id"] == item["item_id"]
        ]
        assert "".join(deltas) == item["transcript"]
    assert completed[1]["usage"] == {"type": "duration", "seconds": 1.0}
    assert events[0]["audio_start_ms"] == 500 and events[3]["audio_end_ms"] == 3000


def test_realtime_clear_drops_the_buffer_and_mistakes_leave_the_session_open() -> None:
    realtime = RealtimeTranscription("s", frozenset({"default"}), 65536, 60.0)
    (nothing_to_clear,) = realtime.receive_text(
        '{"type": "input_audio_buffer.clear"}'
    )  # the session sees nothing
    assert json.loads(nothing_to_clear.text)["type"] == "input_audio_buffer.cleared"
    realtime.receive_text(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 2000}))
    events = realtime.receive_text('{"type": "input_audio_buffer.clear"}')
    assert isinstance(events[0], Clear) and json.loads(events[1].text)["type"] == "input_audio_buffer.cleared"
    assert realtime.result_messages(result(ResultStatus.PARTIAL, "noise", "noise", (0, 0.0, 1.0))) == []
    dropped = result(ResultStatus.FINAL, "noise", "noise", (0, 0.0, 1.0), SegmentEnd.FINALIZE)
    assert realtime.result_messages(dropped) == []
    for message, code in [
        ("{", "invalid_json"),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
        ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_value"),
        ('{"type": "response.create"}', "unsupported_event"),
        ('{"type": "session.update", "session": {"type": "transcription", "audio": {"input": '
         '{"transcription": {"model": "whisper-1"}}}}}', "model_not_found"),
        ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value"),
    ]:  # fmt: skip
        (reply,) = realtime.receive_text(message)
        assert isinstance(reply, Reply)
        error = json.loads(reply.text)
        assert error["type"] == "error" and error["error"]["code"] == code, error
    assert realtime.model == "default"
