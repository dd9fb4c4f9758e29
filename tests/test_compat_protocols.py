"""The sans-IO pieces of the compatible dialects: G.711, multipart forms, subtitle cues, WAV headers,
and the protocol state that spans messages (Deepgram's utterance ends and channels, Realtime's items
and deltas)."""

from __future__ import annotations

import io
import json
import struct

import httpx
import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from amira.core import g711
from amira.core.errors import BadAudio, BadRequest
from amira.core.subtitles import cues_from_words, srt, vtt
from amira.core.transcript import ResultStatus, SegmentEnd, SegmentSpan, StreamResult, Word
from amira.protocols.deepgram import DeepgramLive, ListenOptions, ModelInfo
from amira.protocols.live import ChannelAudio, Clear, Reply
from amira.protocols.multipart import parse_form_data
from amira.protocols.native_stream import Audio, EndOfStream, Finalize
from amira.protocols.openai_audio import InvalidField, parse_transcription_form
from amira.protocols.openai_realtime import RealtimeTranscription
from amira.protocols.wav_header import read_wav_header
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


def wav_bytes(samples: np.ndarray, rate: int, subtype: str, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.reshape(-1, channels), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("subtype", "rate", "channels", "encoding"),
    [("PCM_16", 16000, 1, "linear16"), ("ULAW", 8000, 2, "mulaw"), ("ALAW", 8000, 1, "alaw")],
)
def test_wav_headers_are_read_from_any_number_of_first_bytes(
    subtype: str, rate: int, channels: int, encoding: str
) -> None:
    data = wav_bytes(np.zeros(800 * channels, np.float32), rate, subtype, channels)
    header = next(h for n in range(len(data) + 1) if (h := read_wav_header(data[:n])) is not None)
    assert (header.encoding, header.sample_rate, header.channels) == (encoding, rate, channels)
    assert data[header.data_offset - 8 : header.data_offset - 4] == b"data"
    assert all(read_wav_header(data[:n]) is None for n in range(header.data_offset))


def test_wav_extensible_and_extra_chunks_before_the_data() -> None:
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 16000, 64000, 4, 16, 22, 16, 3) + b"\x01\x00" + bytes(14)
    data = (
        b"RIFF\xff\xff\xff\xffWAVE" + b"LIST\x03\x00\x00\x00abc\x00" + b"fmt " + struct.pack("<I", len(fmt))
    )
    data += fmt + b"data\x00\x00\x00\x00" + b"\x01\x02"
    header = read_wav_header(data)
    assert header is not None and (header.encoding, header.channels) == ("linear16", 2)
    assert data[header.data_offset :] == b"\x01\x02"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"OggS\x00\x02" + bytes(40), "Ogg"),
        (b"\x1a\x45\xdf\xa3" + bytes(40), "WebM"),
        (b"ID3\x04" + bytes(40), "MP3"),
        (b"hello world, this is not audio", "encoding"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "AVI"),
        (wav_bytes(np.zeros(100, np.float32), 16000, "FLOAT"), "format 3 with 32 bits"),
        (wav_bytes(np.zeros(100, np.float32), 16000, "PCM_24"), "format 1 with 24 bits"),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "no fmt chunk"),
        (b"RIFF\x00\x00\x00\x00WAVEJUNK\xff\xff\x00\x00" + bytes(70_000), "longer than"),
    ],
)
def test_other_containers_and_wav_formats_are_refused_naming_why(data: bytes, says: str) -> None:
    with pytest.raises(BadAudio, match=says):
        read_wav_header(data)


def deepgram_live(**query: str) -> DeepgramLive:
    info = ModelInfo("default", "1", "tdt")
    options = ListenOptions.from_query({"model": "default", **query}, live=True)
    return DeepgramLive(options, info, "r", "now", 1 << 20, 600.0)


def spoken(
    status: ResultStatus, segment: int, words: list[tuple[str, float, float]], end: float
) -> StreamResult:
    text = " ".join(w for w, _, _ in words)
    found = tuple(Word(w, start, stop, 0.9) for w, start, stop in words)
    ended_by = SegmentEnd.ENDPOINT if status is ResultStatus.FINAL else None
    start = words[0][1] if words else 0.0
    return StreamResult(
        status, text, text, (), (), found, end, 1.0, SegmentSpan(segment, start, end), ended_by
    )


def test_utterance_end_is_due_utterance_end_ms_after_the_last_finalized_word() -> None:
    live = deepgram_live(
        encoding="linear16", sample_rate="16000", utterance_end_ms="1000", interim_results="true"
    )
    partial = json.loads(live.result_messages(spoken(ResultStatus.PARTIAL, 0, [("king", 0.5, 0.8)], 1.0))[0])
    assert partial["channel"]["alternatives"][0]["words"][0] == {
        "word": "king", "start": 0.5, "end": 0.8, "confidence": 0.9, "punctuated_word": "king",
    }  # fmt: skip
    final = [("king", 0.5, 0.8), ("of", 0.9, 1.0), ("clubs", 1.1, 1.5)]
    assert [
        json.loads(m)["type"] for m in live.result_messages(spoken(ResultStatus.FINAL, 0, final, 2.0))
    ] == ["Results"]  # not at the endpoint: only once 1 s passed after the last word without a new one
    assert live.progress_messages(0, 2.4) == []
    (end,) = live.progress_messages(0, 2.5)
    assert json.loads(end) == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.5}
    assert live.progress_messages(0, 9.0) == []  # once per utterance
    # a new word within the pause: none; the next one is due after that utterance's last word
    live.result_messages(spoken(ResultStatus.FINAL, 1, [("go", 3.0, 3.2)], 3.5))
    live.result_messages(spoken(ResultStatus.PARTIAL, 2, [("forward", 3.9, 4.2)], 4.3))
    assert live.progress_messages(0, 4.3) == []
    live.result_messages(spoken(ResultStatus.FINAL, 2, [("forward", 3.9, 4.4)], 4.6))
    # words that start after it was due: UtteranceEnd first, though no progress came between
    messages = live.result_messages(spoken(ResultStatus.PARTIAL, 3, [("ten", 6.0, 6.2)], 6.3))
    assert [json.loads(m)["type"] for m in messages] == ["UtteranceEnd", "Results"]
    assert json.loads(messages[0])["last_word_end"] == 4.4
    live.result_messages(spoken(ResultStatus.FINAL, 3, [("ten", 6.0, 6.3)], 6.5))
    live.receive_bytes(bytes(2 * 16000 * 8))  # 8 s of audio: the stream ends 1.7 s after "ten"
    closing = [json.loads(m) for m in live.closing_messages()]
    assert [m["type"] for m in closing] == ["UtteranceEnd", "Metadata"] and closing[0]["last_word_end"] == 6.3


def test_multichannel_audio_is_deinterleaved_and_results_name_their_channel() -> None:
    live = deepgram_live(
        encoding="linear16", sample_rate="16000", channels="3", multichannel="true", utterance_end_ms="1000"
    )
    assert live.channels == 3
    frames = np.arange(30, dtype="<i2").tobytes()
    events = live.receive_bytes(frames[:7]) + live.receive_bytes(frames[7:])
    pcm = {
        c: b"".join(e.pcm for e in events if isinstance(e, ChannelAudio) and e.channel == c) for c in range(3)
    }
    assert [np.frombuffer(pcm[c], "<i2").tolist() for c in range(3)] == [
        list(range(c, 30, 3)) for c in range(3)
    ]
    (results,) = live.result_messages(spoken(ResultStatus.FINAL, 0, [("go", 0.1, 0.3)], 0.5), 2)
    assert json.loads(results)["channel_index"] == [2, 3]
    assert live.progress_messages(0, 5.0) == []  # channel 0 had no word
    assert json.loads(live.progress_messages(2, 1.3)[0])["channel"] == [2, 3]


def test_a_stream_without_encoding_reads_its_wav_header_first() -> None:
    live = deepgram_live(multichannel="true")
    data = wav_bytes(np.zeros(1600 * 2, np.float32), 8000, "ULAW", channels=2)
    assert live.receive_bytes(data[:20]) == [] and live.receive_text('{"type": "KeepAlive"}')
    events = live.receive_bytes(data[20:])
    assert live.sample_rate == 8000 and live.channels == 2
    assert [e.channel for e in events] == [0, 1] and all(len(e.pcm) == 1600 * 2 for e in events)
    assert json.loads(live.closing_messages()[0])["duration"] == 0.2
    with pytest.raises(BadAudio, match="Ogg"):
        deepgram_live().receive_bytes(b"OggS" + bytes(100))
    ended = deepgram_live()  # the legacy end of stream before the header was whole
    assert ended.receive_bytes(b"RIFF") == [] and isinstance(ended.receive_bytes(b"")[0], EndOfStream)
    assert json.loads(ended.closing_messages()[0])["duration"] == 0.0
