"""The OpenAI dialect through the official `openai` SDK against a real Hypercorn server on loopback:
transcriptions in every response format, streaming, models, errors, and Realtime transcription.
Every document the server sends is also validated against the SDK's own types."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import TypeVar

import httpx
import openai
import pydantic
import pytest
import soundfile
import soxr
import trio
from openai.types import Model
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
)
from openai.types.realtime import RealtimeServerEvent

from amira.testing.long_audio import joined
from amira.testing.recordings import REAL_DOMAIN, pcm16, read_recording
from amira.testing.servers import embedded_settings, start_server

KEY = "sk-amira-test"
T = TypeVar("T")
SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    return await start_server(nursery, embedded_settings(api_keys=(KEY,), max_batch_audio_secs=20.0))


def client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)


async def in_thread(function: Callable[[], T]) -> T:
    """The SDK's synchronous client, off the event loop that serves it."""
    return await trio.to_thread.run_sync(function)


def wav(path: object) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, read_recording(path), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def native_transcript(base_url: str, audio: bytes) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{base_url}/v2/decode/batch/default",
            content=audio,
            headers={"Content-Type": "audio/wav", "Authorization": f"Bearer {KEY}"},
        )
    return response.json()["transcription"]


async def test_every_response_format_gives_the_batch_transcript(base_url: str) -> None:
    sdk = client(base_url)
    for path, spoken in REAL_DOMAIN:
        audio = wav(path)
        expected = await native_transcript(base_url, audio)
        assert expected == spoken

        def create(response_format: str, audio: bytes = audio, **options: object) -> httpx.Response:
            raw = sdk.audio.transcriptions.with_raw_response.create(
                file=("speech.wav", audio, "audio/wav"),
                model="default",
                response_format=response_format,
                **options,
            )
            return raw.http_response

        plain = await in_thread(lambda: create("json"))
        assert Transcription.model_validate(plain.json()).text == expected
        text = await in_thread(lambda: create("text"))
        assert text.headers["content-type"].startswith("text/plain") and text.text.strip() == expected
        verbose = await in_thread(lambda: create("verbose_json", timestamp_granularities=["word", "segment"]))
        document = TranscriptionVerbose.model_validate(verbose.json())
        assert document.text == expected and document.language == "english"
        assert [w.word for w in document.words] == expected.split()
        assert all(0 <= w.start <= w.end <= document.duration for w in document.words)
        assert " ".join(s.text for s in document.segments) == expected
        assert all(s.avg_logprob < 0 for s in document.segments)  # the log of probabilities below 1
        assert [s.id for s in document.segments] == list(range(len(document.segments)))
        for name, cue_separator in (("srt", ","), ("vtt", ".")):
            subtitles = (await in_thread(lambda name=name: create(name))).text
            assert " --> 00:00:0" in subtitles and f"00:00:00{cue_separator}" in subtitles
            cue_text = [
                line for line in subtitles.splitlines() if line and "-->" not in line and not line.isdigit()
            ]
            assert " ".join(line for line in cue_text if line != "WEBVTT") == expected


async def test_verbose_json_granularities_choose_words_and_segments(base_url: str) -> None:
    sdk = client(base_url)
    audio = wav(REAL_DOMAIN[4][0])

    def create(granularities: list[str] | None) -> dict:
        options = {"timestamp_granularities": granularities} if granularities is not None else {}
        raw = sdk.audio.transcriptions.with_raw_response.create(
            file=("speech.wav", audio), model="default", response_format="verbose_json", **options
        )
        return raw.http_response.json()

    assert {"words", "segments"} & set(await in_thread(lambda: create(None))) == {"segments"}
    assert {"words", "segments"} & set(await in_thread(lambda: create(["word"]))) == {"words"}
    assert {"words", "segments"} & set(await in_thread(lambda: create(["segment"]))) == {"segments"}
    document = TranscriptionVerbose.model_validate(await in_thread(lambda: create(["word", "segment"])))
    tokens = [t for segment in document.segments for t in segment.tokens]
    async with httpx.AsyncClient(timeout=30) as http:
        native = await http.post(
            f"{base_url}/v2/decode/batch/default",
            content=audio,
            headers={"Content-Type": "audio/wav", "X-API-Key": KEY},
        )
    assert tokens == native.json()["metadata"]["tokens"]


async def test_streamed_deltas_join_to_the_final_text(base_url: str) -> None:
    sdk = client(base_url)
    path, spoken = REAL_DOMAIN[4]

    def stream() -> list[object]:
        return list(sdk.audio.transcriptions.create(file=("s.wav", wav(path)), model="default", stream=True))

    events = await in_thread(stream)
    deltas = [e for e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    (done,) = [e for e in events if isinstance(e, TranscriptionTextDoneEvent)]
    assert len(deltas) == len(spoken.split()) and events[-1] is done
    assert "".join(d.delta for d in deltas) == done.text == spoken


async def test_models_and_errors_in_openai_shape(base_url: str) -> None:
    sdk = client(base_url)
    listed = await in_thread(sdk.models.list)
    assert sorted(m.id for m in listed.data) == [
        "cache_aware",
        "cache_aware_batch_first",
        "default",
        "default-streaming",
        "rnnt",
        "tdt",
    ]
    assert Model.model_validate(listed.data[0].model_dump()).owned_by == "amira"
    assert (await in_thread(lambda: sdk.models.retrieve("tdt"))).id == "tdt"
    raw = await in_thread(
        lambda: sdk.models.with_raw_response.list(extra_headers={"X-Request-Id": "trace-7"})
    )
    assert raw.headers["x-request-id"] == "trace-7"  # the client's own, echoed
    audio = wav(REAL_DOMAIN[0][0])
    with pytest.raises(openai.AuthenticationError) as wrong_key:
        await in_thread(
            lambda: client(base_url, "sk-wrong").audio.transcriptions.create(
                file=("a.wav", audio), model="default"
            )
        )
    assert wrong_key.value.code == "invalid_api_key" and wrong_key.value.type == "invalid_request_error"
    assert wrong_key.value.request_id  # errors too carry x-request-id, generated when none was sent
    with pytest.raises(openai.AuthenticationError):
        await in_thread(lambda: client(base_url, "sk-wrong").models.list())
    with pytest.raises(openai.NotFoundError) as unknown:
        await in_thread(lambda: sdk.audio.transcriptions.create(file=("a.wav", audio), model="whisper-1"))
    assert unknown.value.code == "model_not_found" and "whisper-1" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        await in_thread(lambda: sdk.models.retrieve("gpt-4o-transcribe"))
    with pytest.raises(openai.BadRequestError) as unreadable:
        await in_thread(
            lambda: sdk.audio.transcriptions.create(file=("a.wav", b"not a sound file"), model="default")
        )
    assert unreadable.value.code == "bad_audio" and unreadable.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_format:
        await in_thread(
            lambda: sdk.audio.transcriptions.create(
                file=("a.wav", audio), model="default", response_format="diarized_json"
            )
        )
    assert bad_format.value.param == "response_format"
    async with httpx.AsyncClient(timeout=30) as http:
        for request in (
            http.build_request(
                "POST",
                f"{base_url}/v1/audio/transcriptions",
                content=b"x",
                headers={"Authorization": f"Bearer {KEY}"},
            ),
            http.build_request(
                "GET", f"{base_url}/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}
            ),
        ):
            request.headers["X-Request-Id"] = "bad id\twith a tab"
            response = await http.send(request)
            assert response.status_code in (400, 404)
            assert response.headers["x-request-id"] != "bad id\twith a tab"  # not echoed: a new one
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def realtime_session(base_url: str, utterances: list[tuple[bytes, float]]) -> list[dict]:
    """A Realtime transcription session over the SDK: 24 kHz PCM appended in 40 ms pieces, a
    commit after each utterance; every server event, validated against the SDK's types."""
    received: list[dict] = []
    sdk = client(base_url)
    with sdk.realtime.connect(extra_query={"intent": "transcription"}) as connection:

        def receive() -> dict:
            raw = connection.recv_bytes()
            SERVER_EVENT.validate_json(raw)
            event = json.loads(raw)
            received.append(event)
            return event

        assert receive()["type"] == "session.created"
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "default", "language": "en"},
                        "turn_detection": None,
                    }
                },
            }
        )
        updated = receive()
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == "default"
        piece = 24_000 * 2 * 40 // 1000
        for pcm, _ in utterances:
            for offset in range(0, len(pcm), piece):
                connection.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[offset : offset + piece]).decode()
                )
            connection.input_audio_buffer.commit()
        completed = 0
        while completed < len(utterances):
            event = receive()
            assert event["type"] != "error", event
            completed += event["type"] == "conversation.item.input_audio_transcription.completed"
    return received


async def test_realtime_transcription_gives_one_completed_transcript_per_utterance(base_url: str) -> None:
    utterances = [
        (pcm16(soxr.resample(read_recording(path), 16_000, 24_000)), spoken)
        for path, spoken in REAL_DOMAIN[2:]
    ]
    events = await in_thread(lambda: realtime_session(base_url, utterances))
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    assert [c["previous_item_id"] for c in committed] == [None] + [c["item_id"] for c in committed[:-1]]
    for item in completed:
        deltas = [
            e["delta"] for e in events if e["type"].endswith(".delta") and e["item_id"] == item["item_id"]
        ]
        assert "".join(deltas) == item["transcript"]
    assert [c["transcript"] for c in completed] == [spoken for _, spoken in utterances]


async def test_realtime_refuses_bad_events_with_error_events_and_goes_on(base_url: str) -> None:
    def session() -> list[dict]:
        with client(base_url).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            connection.recv()
            errors = []
            for event in (
                {"type": "input_audio_buffer.append", "audio": "not base64!"},
                {"type": "input_audio_buffer.commit"},
                {"type": "response.create"},
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
                    },
                },
            ):
                connection.send(event)  # type: ignore[arg-type]
                raw = connection.recv_bytes()
                SERVER_EVENT.validate_json(raw)
                errors.append(json.loads(raw))
            connection.send({"type": "session.update", "session": {"type": "transcription"}})
            errors.append(json.loads(connection.recv_bytes()))
        return errors

    events = await in_thread(session)
    assert [e["error"]["code"] for e in events[:4]] == [
        "invalid_value", "input_audio_buffer_commit_empty", "unsupported_event", "model_not_found",
    ]  # fmt: skip
    assert events[4]["type"] == "session.updated"


async def test_realtime_needs_a_key_and_the_transcription_intent(base_url: str) -> None:
    with pytest.raises(Exception, match="401"):
        await in_thread(
            lambda: (
                client(base_url, "sk-wrong").realtime.connect(extra_query={"intent": "transcription"}).enter()
            )
        )

    def conversation() -> dict:
        with client(base_url).realtime.connect(model="gpt-realtime") as connection:
            return json.loads(connection.recv_bytes())

    refused = await in_thread(conversation)
    assert refused["type"] == "error" and "intent=transcription" in refused["error"]["message"]


async def test_realtime_clear_drops_the_uncommitted_audio(base_url: str) -> None:
    dropped, kept = (pcm16(soxr.resample(read_recording(p), 16_000, 24_000)) for p, _ in REAL_DOMAIN[3:5])

    def session() -> list[dict]:
        events = []
        with client(base_url).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            connection.recv()
            manual = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
            connection.send({"type": "session.update", "session": manual})
            connection.recv()
            for pcm, last in ((dropped, "input_audio_buffer.clear"), (kept, "input_audio_buffer.commit")):
                for offset in range(0, len(pcm), 9600):
                    connection.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[offset : offset + 9600]).decode()
                    )
                connection.send({"type": last})
            while not events or not events[-1]["type"].endswith(".completed"):
                raw = connection.recv_bytes()
                SERVER_EVENT.validate_json(raw)
                events.append(json.loads(raw))
        return events

    events = await in_thread(session)
    assert [e["type"] for e in events if not e["type"].endswith(".delta")] == [
        "input_audio_buffer.cleared", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ]  # fmt: skip
    assert events[-1]["transcript"] == REAL_DOMAIN[4][1]
    cleared = [e["type"] for e in events].index("input_audio_buffer.cleared")
    deltas = [e for e in events[cleared:] if e["type"].endswith(".delta")]  # before it, the dropped item's
    assert {e["item_id"] for e in deltas} == {events[-1]["item_id"]}
    assert "".join(e["delta"] for e in deltas) == REAL_DOMAIN[4][1]


async def test_realtime_server_vad_gives_one_item_per_utterance(base_url: str) -> None:
    """No commits: server VAD ends each utterance at its pause (`speech_started`, `speech_stopped`,
    `committed`, deltas, `completed`), each transcript the batch transcript of that utterance."""
    paths = [path for path, _ in REAL_DOMAIN[2:]]
    expected = [await native_transcript(base_url, wav(path)) for path in paths]
    audio = pcm16(soxr.resample(joined(paths), 16_000, 24_000))
    audio += bytes(2 * 24_000 * 2)  # 2 s of silence after the last utterance

    def session() -> list[dict]:
        events = []
        with client(base_url).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            connection.recv()
            vad = {"type": "server_vad", "silence_duration_ms": 500}
            update = {"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
            connection.send({"type": "session.update", "session": update})
            assert (
                json.loads(connection.recv_bytes())["session"]["audio"]["input"]["turn_detection"]["type"]
                == "server_vad"
            )
            piece = 24_000 * 2 * 60 // 1000  # 60 ms
            for offset in range(0, len(audio), piece):
                connection.input_audio_buffer.append(
                    audio=base64.b64encode(audio[offset : offset + piece]).decode()
                )
            while sum(e["type"].endswith(".completed") for e in events) < len(paths):
                raw = connection.recv_bytes()
                SERVER_EVENT.validate_json(raw)
                events.append(json.loads(raw))
                assert events[-1]["type"] != "error", events[-1]
        return events

    events = await in_thread(session)
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert [c["transcript"] for c in completed] == expected
    for item in completed:
        own = [e["type"] for e in events if e.get("item_id") == item["item_id"]]
        assert own[0] == "input_audio_buffer.speech_started" and own[-1] == item["type"]
        assert own.index("input_audio_buffer.speech_stopped") < own.index("input_audio_buffer.committed")
        deltas = [
            e["delta"] for e in events if e["type"].endswith(".delta") and e["item_id"] == item["item_id"]
        ]
        assert "".join(deltas) == item["transcript"]
    started = [e["audio_start_ms"] for e in events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e["audio_end_ms"] for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert all(a < b for a, b in zip(started, stopped, strict=True))
