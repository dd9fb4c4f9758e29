"""Hostile input against a real `amira serve` process: property-based (hypothesis) bodies, headers and
WebSocket frames, while a well-behaved client keeps getting correct transcripts; plus clients that
drop mid-frame, never read, or abandon hundreds of connections."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.client import to_pcm16
from amira.models import shipped_repository
from amira.testing.process import ServerProcess, running_server
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.ws_protocol import expect_complete, read_until_closed

DOCUMENTED = {
    "bad_request": 400, "bad_audio": 400, "unauthorized": 401, "unknown_model": 404, "too_large": 413,
    "unsupported_media_type": 415, "capacity_exceeded": 503,
}  # fmt: skip
WS_CLOSE = {"bad_request": 1008, "bad_audio": 1008, "unknown_model": 1008, "too_large": 1009}
MAX_FRAME = 65_536
SAMPLES = read_recording(CARDS[0])
PCM = to_pcm16(SAMPLES)


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    env = {
        "MAX_FRAME_BYTES": str(MAX_FRAME),
        "MAX_BATCH_AUDIO_SECS": "10",
        "STREAM_TIMEOUT_SECS": "2",
        "MAX_CONCURRENT_STREAMS": "20",
        "MODEL_SETS_FILE": str(shipped_repository() / "model_sets.toml"),
    }
    with running_server(env) as server:
        yield server
    assert "Traceback" not in server.log, server.log[-3000:]


@pytest.fixture(scope="module")
def expected_tokens(served: ServerProcess) -> list[int]:
    response = httpx.post(
        f"{served.url}/v2/decode/batch/default",
        content=PCM,
        headers={"Content-Type": "audio/pcm"},
        timeout=30,
    )
    return response.json()["metadata"]["tokens"]


class WellBehavedClient:
    """Batches and streams the same recording in a loop on a thread of its own, recording mismatches."""

    def __init__(self, base: str, expected: list[int]) -> None:
        self.base, self.expected = base, expected
        self.stop, self.problems, self.rounds = threading.Event(), [], 0
        self.thread = threading.Thread(target=self.run_and_record)

    def run_and_record(self) -> None:
        try:
            trio.run(self.run)
        except BaseException as exc:  # the thread's failure is the test's finding
            self.problems.append(f"client failed: {exc!r}")

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not self.stop.is_set():
                response = await http.post(
                    f"{self.base}/v2/decode/batch/default", content=PCM, headers={"Content-Type": "audio/pcm"}
                )
                if response.status_code != 200 or response.json()["metadata"]["tokens"] != self.expected:
                    self.problems.append(f"batch: {response.status_code} {response.text[:200]}")
                url = self.base.replace("http://", "ws://") + "/v2/decode/stream/default"
                async with open_websocket_url(url, message_queue_size=64) as ws:  # see fuzz_stream
                    await ws.send_message(PCM)
                    await ws.send_message(b"\x00")
                    record = await read_until_closed(ws)  # a broken wire rule fails the client
                if record.error is not None:
                    if record.error["error_type"] != "capacity_exceeded":  # documented while hostile
                        self.problems.append(f"stream: {record.error}")  # clients hold the slots
                    await trio.sleep(0.05)
                    continue
                final = expect_complete(record)
                if final["metadata"]["tokens"] != self.expected:
                    self.problems.append(f"stream: {final}")
                self.rounds += 1

    def __enter__(self) -> WellBehavedClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.problems, self.problems[:3]
        assert self.rounds >= 1


content_types = st.sampled_from(
    [
        "application/json", "audio/pcm", "audio/l16", "application/octet-stream", "audio/wav", "audio/x-wav",
        "audio/flac", "audio/ogg", "text/plain", "", "application/json; charset=utf-8", "audio/WAV",
        "multipart/form-data",
    ]
)  # fmt: skip
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode())
buffers = st.one_of(
    st.lists(st.integers(-300, 300), max_size=400), st.text(max_size=50), st.binary(max_size=50).map(list)
)
rates = st.one_of(st.integers(-10, 300_000), st.text(max_size=8))
audio_buffers = st.fixed_dictionaries(
    {"audio_buffer": buffers}, optional={"sample_rate": rates, "opaque": st.text(max_size=10)}
).map(lambda value: json.dumps(value).encode())
wav_like = st.binary(max_size=200).map(lambda tail: b"RIFF\x24\x00\x00\x00WAVEfmt " + tail)
bodies = st.one_of(st.binary(max_size=2000), json_bodies, audio_buffers, wav_like, st.just(PCM[:3001]))
queries = st.dictionaries(st.sampled_from(["sample_rate", "api_key", "x"]), st.text(max_size=8), max_size=2)
models = st.sampled_from(["default", "rnnt", "nope", "%00", "a" * 300, "default.", "..%2f"])
headers = st.dictionaries(
    st.sampled_from(["X-Request-Id", "Authorization", "X-API-Key", "Origin", "Content-Encoding"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40),  # what httpx can send
    max_size=3,
)


def check_error(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    if response.status_code == 200:
        assert response.json()["status"] == "COMPLETE"
        return
    document = response.json()
    assert DOCUMENTED.get(document["error_type"]) == response.status_code or response.status_code in (
        404,
        405,
    )
    assert document["error"] and "Traceback" not in document["error"]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(content_type=content_types, body=bodies, query=queries, model=models, extra=headers)
def test_batch_endpoint_answers_every_body_with_a_documented_error(
    served: ServerProcess,
    expected_tokens: list[int],
    content_type: str,
    body: bytes,
    query: dict,
    model: str,
    extra: dict,
) -> None:
    response = httpx.post(
        f"{served.url}/v2/decode/batch/{model}",
        content=body,
        params=query,
        headers={"Content-Type": content_type, **extra},
        timeout=30,
    )
    check_error(response)


frames = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=9),
        st.binary(min_size=2, max_size=3200).filter(lambda b: len(b) % 2 == 0),
        st.sampled_from([b"\x00", b"\x01", b"\x02", b"\xff", bytes(MAX_FRAME + 2)]),
        st.text(max_size=30),
        st.sampled_from(
            ['{"type": "KeepAlive"}', '{"type": "Finalize"}', '{"type": "CloseStream"}', "{}", "null"]
        ),
    ),
    max_size=8,
)


async def fuzz_stream(url: str, messages: list) -> None:
    """Whatever the frames, the stream ends by the wire rules (`read_until_closed` checks them): one
    COMPLETE and 1000, or one documented ERROR and its close code.

    The client keeps up to 64 messages unread: with trio-websocket's default of one, its reader
    waits to hand over the ERROR while the ACTIVE before it is unread, and when a frame this client
    sends after the server closed fails (1006), the library drops that waiting ERROR."""
    async with open_websocket_url(url, message_queue_size=64) as ws:
        for message in messages:
            try:
                await ws.send_message(message)
            except ConnectionClosed:
                break
        with contextlib.suppress(ConnectionClosed):
            await ws.send_message(b"\x00")
        record = await read_until_closed(ws, seconds=20)
    if record.error is None:
        expect_complete(record)
    else:
        assert record.error["error_type"] in WS_CLOSE and "stream " in record.error["message"], record.error


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(messages=frames, query=st.sampled_from(["", "?sample_rate=8000", "?sample_rate=0", "?sample_rate=x"]))
def test_stream_endpoint_answers_every_frame_sequence_as_documented(
    served: ServerProcess, expected_tokens: list[int], messages: list, query: str
) -> None:
    trio.run(fuzz_stream, f"{served.ws_url}/v2/decode/stream/default{query}", messages)


# JSON values of every type (as JSON text, so that numbers past Python's own limits can be sent) in
# every field, and every kind of value in the WebSocket URL query.
number_texts = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),  # NaN, Infinity too
    st.integers(1, 6000).map(lambda digits: "9" * digits),  # past the 4300 digits of int()
    st.sampled_from(["1e999", "-0", "16000.0", "1E4", "00016000", "16000", "8000"]),
)
string_texts = st.one_of(
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(['"²"', '"١٦٠٠٠"', '"16000"', '" 16000 "', '"0x3e80"', '"\\u00b2"', '"AAAA"']),
)
nesting_texts = st.one_of(
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
)
value_texts = st.recursive(
    number_texts | string_texts | nesting_texts | st.sampled_from(["true", "false", "null"]),
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.text(max_size=5).map(json.dumps), inner, max_size=3).map(
            lambda fields: "{" + ",".join(f"{key}:{value}" for key, value in fields.items()) + "}"
        )
    ),
    max_leaves=10,
)
audio_texts = value_texts | st.sampled_from(
    [json.dumps(list(PCM[:3200])), json.dumps(base64.b64encode(PCM[:3200]).decode())]
)
json_value_bodies = st.fixed_dictionaries(
    {"audio_buffer": audio_texts}, optional={"sample_rate": value_texts, "opaque": value_texts}
).map(lambda fields: ("{" + ",".join(f'"{key}":{value}' for key, value in fields.items()) + "}").encode())


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=json_value_bodies)
def test_json_fields_of_every_type_get_a_documented_answer(
    served: ServerProcess, expected_tokens: list[int], body: bytes
) -> None:
    response = httpx.post(
        f"{served.url}/v2/decode/batch/default",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    check_error(response)


query_values = st.one_of(
    st.text(max_size=12),
    number_texts,
    st.sampled_from(["²", "١٦٠٠٠", "16000", "8000", "0", "-1", "", "%", "1e4", "false", "9" * 5000]),
)
stream_queries = st.dictionaries(
    st.sampled_from(["sample_rate", "api_key", "endpointing", "interim_results", "max_segment_secs"])
    | st.text(max_size=6),
    query_values,
    max_size=3,
).map(lambda query: "?" + urlencode(query))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(query=stream_queries)
def test_stream_endpoint_answers_every_url_query_as_documented(
    served: ServerProcess, expected_tokens: list[int], query: str
) -> None:
    trio.run(fuzz_stream, f"{served.ws_url}/v2/decode/stream/default{query}", [PCM[:3200]])


form_fields = st.dictionaries(
    st.sampled_from(["model", "response_format", "timestamp_granularities[]", "stream", "language", "x"]),
    st.one_of(
        st.sampled_from(["default", "nope", "json", "srt", "verbose_json", "word", "true", "1"]),
        st.text(max_size=8),
    ),
    max_size=5,
)
form_files = st.one_of(st.none(), st.binary(max_size=300), wav_like, st.just(PCM[:6000]))


def multipart(fields: dict, file: bytes | None) -> tuple[str, bytes]:
    files = {"file" if file is not None else "other": ("a.wav", file or b"", "audio/wav")}
    request = httpx.Request("POST", "http://x/", data=fields, files=files)
    return request.headers["Content-Type"], request.read()


def check_dialect_error(response: httpx.Response, keys: set[str]) -> None:
    """Never a 500; every error a JSON document of the dialect's shape, without a traceback."""
    assert response.status_code != 500, response.text
    if response.status_code == 200:
        return
    document = response.json()
    error = document.get("error", document)
    assert set(error) == keys, document
    assert "Traceback" not in response.text


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(fields=form_fields, file=form_files, raw=st.one_of(st.none(), bodies), content_type=content_types)
def test_openai_transcriptions_answer_every_form_in_openai_shape(
    served: ServerProcess,
    expected_tokens: list[int],
    fields: dict,
    file: bytes | None,
    raw: bytes | None,
    content_type: str,
) -> None:
    form_type, body = multipart(fields, file)
    if raw is not None:  # not a form at all
        form_type, body = content_type, raw
    response = httpx.post(
        f"{served.url}/v1/audio/transcriptions", content=body, headers={"Content-Type": form_type}, timeout=30
    )
    check_dialect_error(response, {"message", "type", "param", "code"})


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    body=bodies,
    content_type=content_types,
    query=st.dictionaries(
        st.sampled_from(["model", "encoding", "sample_rate", "channels", "multichannel", "callback"]),
        st.sampled_from(["default", "nova-3", "linear16", "mulaw", "opus", "8000", "0", "2", "true", "x"]),
        max_size=4,
    ),
)
def test_deepgram_prerecorded_answers_every_body_in_deepgram_shape(
    served: ServerProcess, expected_tokens: list[int], body: bytes, content_type: str, query: dict
) -> None:
    response = httpx.post(
        f"{served.url}/v1/listen",
        content=body,
        params=query,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    check_dialect_error(response, {"err_code", "err_msg", "request_id"})


async def fuzz_live(url: str, messages: list, types: set[str], end: str | bytes | None) -> None:
    """Send the messages; every answer is a JSON message of the dialect, every close code documented."""
    async with open_websocket_url(url, message_queue_size=64) as ws:  # see fuzz_stream
        for message in messages:
            try:
                await ws.send_message(message)
            except ConnectionClosed:
                break
        with contextlib.suppress(ConnectionClosed):
            if end is not None:
                await ws.send_message(end)
        with trio.fail_after(20):
            try:
                while True:
                    document = json.loads(await ws.get_message())
                    assert document["type"] in types, document
                    if end is None and document["type"] != "error":
                        continue
                    if end is None:
                        return  # a Realtime session stays open after an error event
            except ConnectionClosed as closed:
                assert closed.reason.code in (1000, *WS_CLOSE.values()), closed.reason


WAV_HEADER = (  # 16 kHz mono 16-bit PCM, streamed: the data chunk's size unknown
    b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    + b"data\xff\xff\xff\xff"
)  # fmt: skip
live_frames = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=9),
        st.binary(min_size=2, max_size=3200),
        st.sampled_from([bytes(MAX_FRAME + 2), WAV_HEADER, WAV_HEADER[:30], b"RIFF\x00\x00\x00\x00WAVEdata"]),
        st.text(max_size=30),
        st.sampled_from(
            ['{"type": "KeepAlive"}', '{"type": "Finalize"}', '{"type": "Configure"}', "{}", "null"]
        ),
    ),
    max_size=8,
)
REALTIME_EVENT_TYPES = [
    "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear", "session.update",
    "transcription_session.update", "response.create", "x",
]  # fmt: skip
realtime_events = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.binary(max_size=20),
        st.fixed_dictionaries(
            {"type": st.sampled_from(REALTIME_EVENT_TYPES)},
            optional={
                "audio": st.one_of(st.text(max_size=20), st.just("AAAA" * 800), st.integers()),
                "session": st.one_of(st.none(), st.text(max_size=5), st.fixed_dictionaries({}, optional={
                    "type": st.sampled_from(["transcription", "realtime", 3]),
                    "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw", "wav"]),
                    "audio": st.just({"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}}),
                })),
            },
        ).map(json.dumps),
    ),
    max_size=8,
)  # fmt: skip


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    messages=live_frames,
    query=st.sampled_from(
        ["encoding=linear16&sample_rate=16000", "encoding=mulaw&sample_rate=8000&interim_results=true",
         "encoding=linear16&sample_rate=16000&channels=2", "encoding=alaw", "model=nova-3", "sample_rate=x",
         "model=default",  # no encoding: a WAV header first
         "encoding=linear16&sample_rate=16000&channels=2&multichannel=true&utterance_end_ms=1000&vad_events=true"]
    ),
)  # fmt: skip
def test_deepgram_live_answers_every_frame_sequence_in_deepgram_shape(
    served: ServerProcess, expected_tokens: list[int], messages: list, query: str
) -> None:
    url = served.ws_url + "/v1/listen?" + query
    types = {"Results", "Metadata", "Error", "ConfigureFailure", "UtteranceEnd", "SpeechStarted"}
    trio.run(fuzz_live, url, messages, types, '{"type": "CloseStream"}')


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(events=realtime_events)
def test_realtime_answers_every_event_sequence_in_openai_shape(
    served: ServerProcess, expected_tokens: list[int], events: list
) -> None:
    url = served.ws_url + "/v1/realtime?intent=transcription"
    types = {"session.created", "session.updated", "transcription_session.updated", "error",
             "input_audio_buffer.committed", "input_audio_buffer.cleared",
             "conversation.item.input_audio_transcription.delta",
             "conversation.item.input_audio_transcription.completed"}  # fmt: skip
    trio.run(fuzz_live, url, [*events, '{"type": "nope"}'], types, None)


def test_a_well_behaved_client_is_undisturbed_by_hostile_ones(
    served: ServerProcess, expected_tokens: list[int]
) -> None:
    base = served.url
    before = served.rss_mb()
    with WellBehavedClient(base, expected_tokens):
        for body in (b"\x00" * 3, b"{", bytes(range(256)) * 10):
            check_error(
                httpx.post(
                    f"{base}/v2/decode/batch/default", content=body, headers={"Content-Type": "audio/wav"}
                )
            )
        trio.run(hostile_streams, base.replace("http://", "ws://") + "/v2/decode/stream/default")
    assert served.process.poll() is None
    # the never-reading client pushed 28 s of audio at full speed: backpressure keeps the server's
    # memory bounded (what it holds is a few windows and the bounded queues, not the whole flood)
    assert served.rss_mb() - before < 100


async def hostile_streams(url: str) -> None:
    """Drop mid-frame, abandon hundreds of connections, and never read: the server stays fine."""
    for _ in range(5):  # a TCP connection that dies in the middle of a frame
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /v2/decode/stream/default HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              b"Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        await stream.receive_some(4096)
        await stream.send_all(
            b"\x82\x7e\x10\x00\x00\x00\x00\x00" + b"\x00" * 100
        )  # 4096-byte frame, cut short
        await stream.aclose()
    async with trio.open_nursery() as nursery:  # hundreds of connections opened and dropped
        for _ in range(200):
            nursery.start_soon(open_and_drop, url)
    async with open_websocket_url(url) as ws:  # a client that sends a lot and never reads
        audio = to_pcm16(np.tile(read_recording(LIBRIVOX[0]), 4))
        with trio.move_on_after(3):
            for offset in range(0, len(audio), 32_000):
                await ws.send_message(audio[offset : offset + 32_000])


async def open_and_drop(url: str) -> None:
    try:
        async with open_websocket_url(url) as ws:
            await ws.send_message(PCM[:3200])
    except Exception:
        pass
