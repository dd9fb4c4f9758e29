"""Conversational streaming on the demo model (the `default` set): segments, endpoints, Finalize,
partials, through a real Hypercorn server and real WebSocket clients (api.md, "Segments").

The audio is the real recordings of `tests/data` (people speaking the demo model's domain) joined
with pauses of faint noise (`amira.testing.long_audio.joined_utterances`). Every stream's results
are also checked against the segment rules of api.md (`check_segment_rules`).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from amira.backends.embedded import EmbeddedBackend
from amira.client import open_stream_client, to_pcm16
from amira.engine import Engine
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.testing.conversation import check_segment_rules, overlapping, segment_finals, without_timing
from amira.testing.long_audio import DOMAIN, held_out, joined_utterances
from amira.testing.recordings import read_recording
from amira.testing.servers import embedded_settings

RATE = 16_000
MAX_PARTIAL_BYTES = 4096
LONG_STREAM_SECS = 30 * 60


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The six real recordings joined with 1 s pauses (18 s), and each one's span."""
    return joined_utterances(DOMAIN)


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, Recognizer]:
    """A real server on the embedded backend: its stream URL, and its recogniser for batch decodes."""
    settings = embedded_settings()
    recognizer = Recognizer(Engine(EmbeddedBackend(settings.model_repository), settings))
    binds = await nursery.start(serve, settings, recognizer)
    return binds[0].replace("http://", "ws://") + "/v2/decode/stream/default", recognizer


async def stream(url: str, samples: np.ndarray, frame_seconds: float = 0.1, query: str = "") -> list[dict]:
    async with open_stream_client(url + query) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, False)
        results = [result async for result in client.results()]
        with trio.fail_after(5):
            assert await client.wait_closed() == 1000
    check_segment_rules(results)
    return results


async def test_each_utterance_ends_with_a_speech_final_equal_to_its_batch_transcript(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    url, recognizer = server
    audio, spans = conversation
    finals = segment_finals(await stream(url, audio))
    for path, span in zip(DOMAIN, spans, strict=True):
        alone = await recognizer.transcribe(read_recording(path))
        (final,) = overlapping(finals, span)  # one segment per utterance: none split, none merged
        assert final["transcription"] == alone.text, path.name
        assert final["speech_final"] is True, path.name  # the last one too: a pause ends the audio
    assert len(finals) == len(spans)  # no segment of noise alone


async def test_finalize_ends_a_segment_with_from_finalize(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    url, recognizer = server
    audio, spans = conversation
    first = read_recording(DOMAIN[0])
    async with open_websocket_url(url) as ws:
        await ws.send_message(to_pcm16(first))
        await ws.send_message(json.dumps({"type": "Finalize"}))
        results = [json.loads(await ws.get_message())]
        while not results[-1]["is_final"]:
            results.append(json.loads(await ws.get_message()))
        finalized = results[-1]
        assert finalized["from_finalize"] is True and finalized["speech_final"] is False
        assert finalized["transcription"] == (await recognizer.transcribe(first)).text
        assert finalized["segment"] == {"id": 0, "start": 0.0, "end": round(first.size / RATE, 3)}
        await ws.send_message(to_pcm16(audio[spans[1][0] : spans[2][1]]))
        await ws.send_message(b"\x00")
        while results[-1]["status"] != "COMPLETE":
            results.append(json.loads(await ws.get_message()))
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    check_segment_rules(results)
    later = segment_finals(results)[1:]
    assert [f["segment"]["id"] for f in later] == [1, 2]
    assert [(f["speech_final"], f["from_finalize"]) for f in later] == [(True, False), (False, False)]


async def test_without_endpointing_the_stream_is_one_segment(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    audio, _ = conversation
    results = await stream(server[0], audio, query="?endpointing=false")
    (final,) = segment_finals(results)
    assert final["segment"] == {"id": 0, "start": 0.0, "end": round(audio.size / RATE, 3)}
    assert not final["speech_final"] and not final["from_finalize"]
    assert {r["segment"]["id"] for r in results[:-1]} == {0}
    assert results[-1]["metadata"]["segments"][0]["text"] == results[-1]["transcription"]


async def test_without_interim_results_only_finals_are_sent(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    audio, spans = conversation
    results = await stream(server[0], audio, query="?interim_results=false")
    assert all(r["is_final"] for r in results)
    assert len(segment_finals(results)) == len(spans)


async def test_segments_and_finals_do_not_depend_on_the_frame_size(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    audio, _ = conversation
    finals = {}
    for frame_seconds in (0.01, 0.1, 1.0, audio.size / RATE):
        results = await stream(server[0], audio, frame_seconds)
        finals[frame_seconds] = [without_timing(r) for r in results if r["is_final"]]
    assert len({json.dumps(f) for f in finals.values()}) == 1
    assert len(finals[0.1]) == 7


async def test_the_embedded_api_gives_the_same_segments(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    url, recognizer = server
    audio, _ = conversation
    over_the_wire = segment_finals(await stream(url, audio))
    in_process = []
    async with recognizer.open_stream("default") as session, trio.open_nursery() as nursery:

        async def send() -> None:
            for start in range(0, audio.size, 1600):
                await session.send_audio(audio[start : start + 1600])
            await session.end()

        nursery.start_soon(send)
        async for result in session:
            if result.is_final and not result.end_of_stream:
                in_process.append(result)
    assert [
        (r.transcription, r.segment.id, round(r.segment.start, 3), round(r.segment.end, 3), r.speech_final)
        for r in in_process
    ] == [
        (
            f["transcription"],
            f["segment"]["id"],
            f["segment"]["start"],
            f["segment"]["end"],
            f["speech_final"],
        )
        for f in over_the_wire
    ]


async def test_the_maximum_segment_length_bounds_segments_without_endpointing(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    audio, _ = conversation
    results = await stream(server[0], audio, query="?endpointing=false&max_segment_secs=5")
    finals = segment_finals(results)
    assert len(finals) >= 3
    for final in finals:
        assert not final["speech_final"] and not final["from_finalize"]
        first_word = (
            final["metadata"]["words"][0]["start"]
            if final["metadata"]["words"]
            else final["segment"]["start"]
        )
        assert final["segment"]["end"] - first_word <= 5 + 1.6 + 0.08  # checked on committed chunks
    assert all(a["segment"]["end"] == b["segment"]["start"] for a, b in itertools.pairwise(finals))  # no gaps


async def test_silence_before_the_first_words_is_left_out_of_the_first_segment(
    server: tuple[str, Recognizer], conversation: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    _, recognizer = server
    card = read_recording(DOMAIN[2])
    silence = (0.003 * np.random.default_rng(1).standard_normal(3 * RATE)).astype(np.float32)
    results = []
    async with recognizer.open_stream("default") as session, trio.open_nursery() as nursery:

        async def send() -> None:
            await session.send_audio(np.concatenate([silence, card]))
            await session.end()

        nursery.start_soon(send)
        results = [result async for result in session]
    (final,) = [r for r in results if r.is_final and not r.end_of_stream]
    assert final.segment.id == 0 and 2.5 <= final.segment.start <= 3.0
    assert final.transcription == (await recognizer.transcribe(card)).text


@pytest.mark.parametrize(
    "query",
    ["?endpointing=-5", "?endpointing=1.5", "?endpointing=yes", "?endpointing=%C2%B2", "?max_segment_secs=0",
     "?max_segment_secs=1e3", "?max_segment_secs=nan", "?interim_results=1", "?interim_results=False"],
)  # fmt: skip
async def test_bad_segment_options_are_refused(server: tuple[str, Recognizer], query: str) -> None:
    async with open_websocket_url(server[0] + query) as ws:
        message = json.loads(await ws.get_message())
        assert (message["status"], message["error_type"]) == ("ERROR", "bad_request")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1008


async def test_a_long_stream_keeps_every_partial_small(server: tuple[str, Recognizer]) -> None:
    """30 minutes of speech with pauses (the held-out recordings and the real ones, over and over)."""
    pieces = [samples for _, samples, _ in held_out()] + [joined_utterances(DOMAIN)[0]]
    audio = np.tile(np.concatenate(pieces), 1 + LONG_STREAM_SECS * RATE // sum(p.size for p in pieces))
    audio = audio[: LONG_STREAM_SECS * RATE]
    largest = {"partial": 0, "final": 0}
    async with open_stream_client(server[0]) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, audio, 8.0, False)
        async for result in client.results():
            if result["status"] == "ACTIVE":
                kind = "final" if result["is_final"] else "partial"
                largest[kind] = max(largest[kind], len(json.dumps(result).encode()))
            complete = result
    print(f"\nlargest partial {largest['partial']} bytes, largest segment final {largest['final']} bytes")
    assert complete["metadata"]["audio_seconds"] == LONG_STREAM_SECS
    assert len(complete["metadata"]["segments"]) > 300
    assert 0 < largest["partial"] < MAX_PARTIAL_BYTES
