"""The Deepgram dialect through the official `deepgram-sdk` against a real Hypercorn server on
loopback: live streams (interim and final results, Finalize, KeepAlive, CloseStream, G.711) and
prerecorded files. Every message the server sends is validated against the SDK's own types."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest
import soxr
import trio
import websockets.sync.client
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from deepgram.types import ListenV1Response
from websockets.exceptions import InvalidStatus

from amira.core.errors import ERROR_TABLE
from amira.testing.codecs import encode_g711
from amira.testing.long_audio import joined
from amira.testing.recordings import REAL_DOMAIN, pcm16, read_recording
from amira.testing.servers import embedded_settings, start_server
from amira.testing.text import levenshtein

KEY = "dg-amira-test"
T = TypeVar("T")
MESSAGE_TYPES = {
    "Results": ListenV1Results, "Metadata": ListenV1Metadata, "Error": ListenV1Error,
    "SpeechStarted": ListenV1SpeechStarted, "UtteranceEnd": ListenV1UtteranceEnd,
}  # fmt: skip


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    return await start_server(nursery, embedded_settings(api_keys=(KEY,), max_batch_audio_secs=30.0))


def client(base_url: str, key: str = KEY) -> DeepgramClient:
    """The SDK pointed at the server through its client environment (nothing leaves loopback)."""
    websocket_url = base_url.replace("http://", "ws://")
    environment = DeepgramClientEnvironment(
        base=base_url, production=websocket_url, agent=websocket_url, agent_rest=base_url
    )
    return DeepgramClient(api_key=key, environment=environment)


async def in_thread(function: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(function)


async def batch_transcript(base_url: str, samples: object) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{base_url}/v2/decode/batch/default",
            content=pcm16(samples),
            headers={"Content-Type": "audio/pcm", "Authorization": f"Token {KEY}"},
        )
    return response.json()["transcription"]


def live(
    base_url: str,
    audio: bytes,
    piece: int,
    control: Callable[[object, int], None] | None = None,
    **query: object,
) -> list[dict]:
    """Stream `audio` in `piece`-byte messages over the SDK's live client, then CloseStream; every
    message the server sent, validated against the SDK's type for it."""
    received = []
    with client(base_url).listen.v1.connect(model="default", **query) as connection:
        for number, offset in enumerate(range(0, len(audio), piece)):
            connection.send_media(audio[offset : offset + piece])
            if control is not None:
                control(connection, number)
        connection.send_close_stream()
        for message in connection._websocket:  # the raw text, to validate it strictly
            document = json.loads(message)
            MESSAGE_TYPES[document["type"]].model_validate(document)
            received.append(document)
    return received


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "Results" and m["is_final"]]


def text_of(messages: list[dict]) -> str:
    return " ".join(t for m in finals(messages) if (t := m["channel"]["alternatives"][0]["transcript"]))


async def test_live_results_join_to_the_batch_transcript(base_url: str) -> None:
    samples = joined([path for path, _ in REAL_DOMAIN[3:5]])
    expected = await batch_transcript(base_url, samples)
    messages = await in_thread(
        lambda: live(
            base_url,
            pcm16(samples),
            3200,
            encoding="linear16",
            sample_rate=16000,
            interim_results=True,
            vad_events=True,
            utterance_end_ms=1000,
        )
    )
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == pytest.approx(
        samples.size / 16000, abs=1e-3
    )
    interim = [m for m in messages if m["type"] == "Results" and not m["is_final"]]
    assert interim and all(m["channel"]["alternatives"][0]["transcript"] for m in interim)
    for message in interim:  # interim results carry the words of their partial text, timed in its span
        alternative = message["channel"]["alternatives"][0]
        assert [w["word"] for w in alternative["words"]] == alternative["transcript"].split()
        assert all(
            message["start"] - 1e-3 <= w["start"] < w["end"] <= message["start"] + message["duration"] + 0.1
            for w in alternative["words"]
        )
    assert text_of(messages) == expected
    spoken = [m for m in finals(messages) if m["channel"]["alternatives"][0]["transcript"]]
    assert [m["channel"]["alternatives"][0]["transcript"] for m in spoken] == [t for _, t in REAL_DOMAIN[3:5]]
    assert spoken[0]["speech_final"] is True  # the pause between the two utterances is an endpoint
    kinds = [m["type"] for m in messages]
    assert kinds.count("SpeechStarted") == 2 and kinds.count("UtteranceEnd") >= 1
    started = [m for m in messages if m["type"] == "SpeechStarted"]
    assert started[1]["timestamp"] >= spoken[0]["start"] + spoken[0]["duration"] - 1e-3
    utterance_end = messages[kinds.index("UtteranceEnd")]
    assert utterance_end["last_word_end"] == spoken[0]["channel"]["alternatives"][0]["words"][-1]["end"]
    assert messages.index(spoken[0]) < kinds.index("UtteranceEnd") < kinds.index("SpeechStarted", 1)
    words = [w for m in finals(messages) for w in m["channel"]["alternatives"][0]["words"]]
    assert [w["word"] for w in words] == expected.split()
    assert all(0 <= w["start"] <= w["end"] <= samples.size / 16000 for w in words)
    spans = [(m["start"], m["start"] + m["duration"]) for m in finals(messages)]
    assert all(a[1] <= b[0] + 1e-3 for a, b in itertools.pairwise(spans))  # in order, never overlapping


async def test_finalize_keepalive_and_close_stream_behave_as_documented(base_url: str) -> None:
    samples = read_recording(REAL_DOMAIN[4][0])
    pcm = pcm16(samples)
    half = len(pcm) // 2 // 3200

    def control(connection: object, number: int) -> None:
        if number == half:
            connection.send_keep_alive()  # type: ignore[attr-defined]
            connection.send_finalize()  # type: ignore[attr-defined]

    messages = await in_thread(
        lambda: live(base_url, pcm, 3200, control, encoding="linear16", sample_rate=16000)
    )
    assert [m["type"] for m in messages] == ["Results", "Results", "Metadata"]  # no interim results asked for
    first, last = finals(messages)
    assert first["from_finalize"] is True and last["from_finalize"] is False
    assert first["channel"]["alternatives"][0]["transcript"]
    assert last["start"] >= first["start"] + first["duration"] - 1e-3
    # the Finalize cut the utterance in two, each decoded on its own: the words at the cut may differ
    batch = (await batch_transcript(base_url, samples)).split()
    assert levenshtein(text_of(messages).split(), batch) <= 3, (text_of(messages), batch)


async def test_mulaw_at_8_khz_gives_the_words_of_the_16_khz_original(base_url: str) -> None:
    samples = read_recording(REAL_DOMAIN[4][0])
    original = await in_thread(
        lambda: live(base_url, pcm16(samples), 3200, encoding="linear16", sample_rate=16000)
    )
    telephone = encode_g711(pcm16(soxr.resample(samples, 16_000, 8_000)), "mulaw")
    mulaw = await in_thread(lambda: live(base_url, telephone, 333, encoding="mulaw", sample_rate=8000))
    assert text_of(mulaw) == text_of(original) == REAL_DOMAIN[4][1]
    alaw = encode_g711(pcm16(soxr.resample(samples, 16_000, 8_000)), "alaw")
    assert text_of(
        await in_thread(lambda: live(base_url, alaw, 800, encoding="alaw", sample_rate=8000))
    ) == text_of(original)


async def test_stereo_linear16_is_mixed_down(base_url: str) -> None:
    import numpy as np

    samples = read_recording(REAL_DOMAIN[4][0])
    stereo = np.stack([samples, samples], axis=1).reshape(-1)
    messages = await in_thread(
        lambda: live(base_url, pcm16(stereo), 3001, encoding="linear16", sample_rate=16000, channels=2)
    )
    assert text_of(messages) == REAL_DOMAIN[4][1] and messages[-1]["channels"] == 2


async def test_multichannel_transcribes_every_channel_apart(base_url: str) -> None:
    import numpy as np

    recordings = [read_recording(REAL_DOMAIN[index][0]) for index in (1, 4)]
    expected = [await batch_transcript(base_url, samples) for samples in recordings]
    assert expected == [REAL_DOMAIN[1][1], REAL_DOMAIN[4][1]]
    length = max(samples.size for samples in recordings) + 24000  # 1.5 s: an endpoint in both
    stereo = np.stack([np.pad(samples, (0, length - samples.size)) for samples in recordings], axis=1)
    messages = await in_thread(
        lambda: live(
            base_url,
            pcm16(stereo.reshape(-1)),
            3002,
            encoding="linear16",
            sample_rate=16000,
            channels=2,
            multichannel="true",
            interim_results=True,
            vad_events=True,
        )
    )
    assert messages[-1]["type"] == "Metadata" and messages[-1]["channels"] == 2
    for channel in (0, 1):
        mine = [m for m in finals(messages) if m["channel_index"] == [channel, 2]]
        assert (
            " ".join(t for m in mine if (t := m["channel"]["alternatives"][0]["transcript"]))
            == (expected[channel])
        )
        said = [m for m in mine if m["channel"]["alternatives"][0]["transcript"]]
        assert said[-1]["speech_final"] is True  # each channel's own endpoint
        started = [m for m in messages if m["type"] == "SpeechStarted" and m["channel"] == [channel, 2]]
        assert len(started) == 1
    assert {tuple(m["channel_index"]) for m in messages if m["type"] == "Results"} == {(0, 2), (1, 2)}


def stream_until(connection: object, kind: str, seconds: float) -> list[dict]:
    """The server's messages, read while the client sends nothing, up to the first of type `kind`
    (or all of those that came within `seconds`)."""
    received = []
    websocket = connection._websocket  # type: ignore[attr-defined]
    while True:
        try:
            document = json.loads(websocket.recv(timeout=seconds))
        except TimeoutError:
            return received
        MESSAGE_TYPES[document["type"]].model_validate(document)
        received.append(document)
        if document["type"] == kind:
            return received


async def test_utterance_end_comes_after_utterance_end_ms_without_a_word(base_url: str) -> None:
    import numpy as np

    first, second = (read_recording(REAL_DOMAIN[index][0]) for index in (0, 4))
    pcm = {
        pause: pcm16(np.concatenate([first, np.zeros(int(pause * 16000), np.float32), second]))
        for pause in (0.3, 2.5)
    }

    def stream(pause: float) -> tuple[list[dict], list[dict]]:
        """The first utterance and the pause, then what came before the client sent more; the rest."""
        audio, split = pcm[pause], 2 * (first.size + int(pause * 16000))
        with client(base_url).listen.v1.connect(
            model="default",
            encoding="linear16",
            sample_rate=16000,
            interim_results=True,
            endpointing=300,
            utterance_end_ms=1000,
        ) as connection:
            for offset in range(0, split, 3200):
                connection.send_media(audio[offset : min(offset + 3200, split)])
            early = stream_until(connection, "UtteranceEnd", 3.0)
            for offset in range(split, len(audio), 3200):
                connection.send_media(audio[offset : offset + 3200])
            connection.send_close_stream()
            late = stream_until(connection, "Metadata", 30.0)
        return early, late

    for pause in (0.3, 2.5):
        early, late = await in_thread(lambda pause=pause: stream(pause))
        messages = early + late
        spoken = [m for m in finals(messages) if m["channel"]["alternatives"][0]["words"]]
        assert [m["channel"]["alternatives"][0]["transcript"] for m in spoken] == [
            REAL_DOMAIN[0][1],
            REAL_DOMAIN[4][1],
        ]
        last_word_end = spoken[0]["channel"]["alternatives"][0]["words"][-1]["end"]
        next_word_start = spoken[1]["channel"]["alternatives"][0]["words"][0]["start"]
        between = messages[messages.index(spoken[0]) : messages.index(spoken[1])]
        ends = [m for m in between if m["type"] == "UtteranceEnd"]
        if pause > 1.0:
            assert next_word_start - last_word_end >= 1.0
            # it came while the client waited: from the audio the session skipped, not the next words
            assert ends == [early[-1]] and ends[0]["last_word_end"] == last_word_end
        else:
            assert next_word_start - last_word_end < 1.0 and spoken[0]["speech_final"] is True
            assert ends == [] and not any(m["type"] == "UtteranceEnd" for m in early)


async def test_wav_streamed_without_encoding(base_url: str) -> None:
    import io

    import soundfile

    samples = read_recording(REAL_DOMAIN[4][0])
    for rate, subtype in ((16000, "PCM_16"), (8000, "ULAW")):
        buffer = io.BytesIO()
        audio = samples if rate == 16000 else soxr.resample(samples, 16_000, rate)
        soundfile.write(buffer, audio, rate, format="WAV", subtype=subtype)
        wav = buffer.getvalue()
        messages = await in_thread(lambda wav=wav: live(base_url, wav, 999))  # the header split too
        assert text_of(messages) == REAL_DOMAIN[4][1], subtype
        assert messages[-1]["duration"] == pytest.approx(samples.size / 16000, abs=1e-3)

    def refused(first: bytes) -> tuple[dict, int]:
        with websockets.sync.client.connect(
            f"{base_url.replace('http', 'ws')}/v1/listen?model=default",
            additional_headers={"Authorization": f"Token {KEY}"},
        ) as ws:
            ws.send(first)
            document = json.loads(ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv()
        return document, closed.value.rcvd.code

    error, code = await in_thread(lambda: refused(b"OggS\x00\x02" + bytes(200)))
    assert ListenV1Error.model_validate(error).variant == "bad_audio" and "Ogg" in error["description"]
    assert code == ERROR_TABLE["bad_audio"].close_code


async def test_prerecorded_files_give_the_batch_transcript(base_url: str) -> None:
    sdk = client(base_url)
    for path, spoken in REAL_DOMAIN[:5]:
        raw = await in_thread(
            lambda path=path: sdk.listen.v1.media.with_raw_response.transcribe_file(
                request=path.read_bytes(), model="default"
            )
        )
        document = ListenV1Response.model_validate(raw._response.json())  # the raw JSON, validated strictly
        (channel,) = document.results.channels
        assert (
            channel.alternatives[0].transcript
            == spoken
            == await batch_transcript(base_url, read_recording(path))
        )
        assert [w.word for w in channel.alternatives[0].words] == spoken.split()
        async with httpx.AsyncClient(timeout=30) as http:
            native = await http.post(
                f"{base_url}/v2/decode/batch/default",
                content=path.read_bytes() if path.suffix == ".wav" else pcm16(read_recording(path)),
                headers={"Content-Type": "audio/wav", "Authorization": f"Token {KEY}"},
            )
        native_words = native.json()["metadata"]["words"]
        assert [(w.start, w.end, w.confidence) for w in channel.alternatives[0].words] == [
            (w["start"], w["end"], w["confidence"]) for w in native_words
        ]
        assert 0 < channel.alternatives[0].confidence <= 1


async def test_prerecorded_raw_multichannel(base_url: str) -> None:
    import numpy as np

    a, b = read_recording(REAL_DOMAIN[0][0]), read_recording(REAL_DOMAIN[2][0])
    length = max(a.size, b.size)
    stereo = np.zeros((length, 2), np.float32)
    stereo[: a.size, 0], stereo[: b.size, 1] = a, b
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{base_url}/v1/listen",
            params={
                "model": "default",
                "encoding": "linear16",
                "sample_rate": 16000,
                "channels": 2,
                "multichannel": "true",
            },
            content=pcm16(stereo.reshape(-1)),
            headers={"Authorization": f"Token {KEY}", "Content-Type": "application/octet-stream"},
        )
    document = ListenV1Response.model_validate(response.json())
    expected = [await batch_transcript(base_url, stereo[:, channel]) for channel in (0, 1)]
    assert [c.alternatives[0].transcript for c in document.results.channels] == expected
    assert expected[1] == REAL_DOMAIN[2][1]


async def test_refusals_in_deepgram_shape(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        auth = {"Authorization": f"Token {KEY}"}
        url = await http.post(
            f"{base_url}/v1/listen?model=default", json={"url": "https://example.com/a.wav"}, headers=auth
        )
        assert url.status_code == 400 and "URL" in url.json()["err_msg"]
        unknown = await http.post(f"{base_url}/v1/listen?model=nova-3", content=b"RIFF", headers=auth)
        assert unknown.status_code == 404 and unknown.json()["err_code"] == "UNKNOWN_MODEL"
        wrong_key = await http.post(
            f"{base_url}/v1/listen?model=default", content=b"RIFF", headers={"Authorization": "Token nope"}
        )
        assert wrong_key.status_code == 401 and wrong_key.json()["err_code"] == "INVALID_AUTH"
        for document in (url.json(), unknown.json(), wrong_key.json()):
            assert set(document) == {"err_code", "err_msg", "request_id"}

    def wrong_key() -> None:
        with client(base_url, "nope").listen.v1.connect(
            model="default", encoding="linear16", sample_rate=16000
        ):
            pass

    with pytest.raises((ApiError, InvalidStatus)) as refused:  # this SDK version lets InvalidStatus through
        await in_thread(wrong_key)
    error = refused.value
    assert (error.status_code if isinstance(error, ApiError) else error.response.status_code) == 401

    def refused_stream(query: str) -> tuple[dict, int]:
        with websockets.sync.client.connect(
            f"{base_url.replace('http', 'ws')}/v1/listen?{query}",
            additional_headers={"Authorization": f"Token {KEY}"},
        ) as ws:
            document = json.loads(ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv()
        return document, closed.value.rcvd.code

    for query, code in (
        ("model=nova-3&encoding=linear16&sample_rate=16000", 1008),
        ("model=default&encoding=opus&sample_rate=16000", 1008),
        ("model=default&encoding=linear16", 1008),
        ("model=default&multichannel=maybe&encoding=linear16&sample_rate=16000", 1008),
    ):
        error, close_code = await in_thread(lambda query=query: refused_stream(query))
        assert ListenV1Error.model_validate(error).type == "Error" and close_code == code, (query, error)


async def test_malformed_control_messages_get_an_error_and_the_stream_goes_on(base_url: str) -> None:
    def stream() -> list[dict]:
        with websockets.sync.client.connect(
            f"{base_url.replace('http', 'ws')}/v1/listen?model=default&encoding=linear16&sample_rate=16000",
            additional_headers={"Authorization": f"Token {KEY}"},
        ) as ws:
            messages = []
            for text in ("{", '{"type": "Nope"}', "[]", '{"type": "Configure", "keyterms": ["x"]}'):
                ws.send(text)
                messages.append(json.loads(ws.recv()))
            ws.send(pcm16(read_recording(REAL_DOMAIN[0][0])))
            ws.send(b"")  # Deepgram's legacy end of stream
            messages += [json.loads(m) for m in ws]
        return messages

    messages = await in_thread(stream)
    assert [m["type"] for m in messages] == [
        "Error",
        "Error",
        "Error",
        "ConfigureFailure",
        "Results",
        "Metadata",
    ]
    assert all(ListenV1Error.model_validate(m).variant == "SchemaError" for m in messages[:3])
    assert messages[4]["channel"]["alternatives"][0]["transcript"] == REAL_DOMAIN[0][1]


async def test_over_capacity_streams_get_their_dialects_error_and_1013(nursery: trio.Nursery) -> None:
    base_url = await start_server(nursery, embedded_settings(max_concurrent_streams=1))
    ws_url = base_url.replace("http", "ws")

    def crowded() -> list[tuple[dict, int]]:
        with websockets.sync.client.connect(
            f"{ws_url}/v1/listen?encoding=linear16&sample_rate=16000"
        ) as held:
            held.send(pcm16(read_recording(REAL_DOMAIN[0][0])))
            refused = []
            for path in (
                "/v1/listen?encoding=linear16&sample_rate=16000",
                "/v1/realtime?intent=transcription",
            ):
                with websockets.sync.client.connect(f"{ws_url}{path}") as ws:
                    document = json.loads(ws.recv())
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        ws.recv()
                    refused.append((document, closed.value.rcvd.code))
            return refused

    def stereo_on_one_slot() -> tuple[dict, int]:
        with websockets.sync.client.connect(
            f"{ws_url}/v1/listen?encoding=linear16&sample_rate=16000&channels=2&multichannel=true"
        ) as ws:
            ws.send(bytes(6400))
            document = json.loads(ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv()
        return document, closed.value.rcvd.code

    stereo, stereo_code = await in_thread(stereo_on_one_slot)
    assert ListenV1Error.model_validate(stereo).variant == "capacity_exceeded" and stereo_code == 1013
    (deepgram, deepgram_code), (realtime, realtime_code) = await in_thread(crowded)
    assert ListenV1Error.model_validate(deepgram).variant == "capacity_exceeded" and deepgram_code == 1013
    assert (
        realtime["type"] == "error"
        and realtime["error"]["code"] == "capacity_exceeded"
        and realtime_code == 1013
    )


async def test_metrics_are_labelled_by_protocol(base_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    path, _ = REAL_DOMAIN[4]
    samples = read_recording(path)
    await in_thread(lambda: live(base_url, pcm16(samples), 3200, encoding="linear16", sample_rate=16000))
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Token {KEY}"}) as http:
        await http.post(f"{base_url}/v1/listen?model=default", content=path.read_bytes())
        await http.post(f"{base_url}/v1/listen?model=nova-3", content=path.read_bytes())
        await http.post(
            f"{base_url}/v1/audio/transcriptions",
            data={"model": "default"},
            files={"file": ("a.wav", path.read_bytes())},
        )
        exposition = (await http.get(f"{base_url}/metrics")).text
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    seconds = samples.size / 16000
    requests, audio = "amira_batch_requests_total", "amira_audio_seconds_total"
    assert values[(requests, (("model", "default"), ("outcome", "ok"), ("protocol", "deepgram")))] == 1
    assert (
        values[(requests, (("model", "(unknown)"), ("outcome", "unknown_model"), ("protocol", "deepgram")))]
        == 1
    )
    assert values[(requests, (("model", "default"), ("outcome", "ok"), ("protocol", "openai")))] == 1
    assert values[
        (audio, (("mode", "stream"), ("model", "default"), ("protocol", "deepgram")))
    ] == pytest.approx(seconds)
    assert values[
        (audio, (("mode", "batch"), ("model", "default"), ("protocol", "openai")))
    ] == pytest.approx(seconds)
    assert values[("amira_errors_total", (("error_type", "unknown_model"), ("protocol", "deepgram")))] == 1
