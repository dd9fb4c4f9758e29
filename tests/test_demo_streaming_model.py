"""The shipped streaming demo transducer (`python -m training --streaming`, the `default-streaming`
set, cache-aware): real human recordings of its domain through the stream endpoint, exactly, at any
frame size, alone and as a conversation with endpoints; on the embedded backend and on a real
Triton that keeps its caches."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import trio

from amira.client import open_stream_client
from amira.models import shipped_repository
from amira.testing.conversation import check_segment_rules, overlapping, segment_finals
from amira.testing.long_audio import DOMAIN, joined_utterances
from amira.testing.recordings import REAL_DOMAIN, pcm16, read_recording
from amira.testing.servers import embedded_settings, start_server

from .conftest import TritonFixture

REPOSITORY = shipped_repository()
MODEL = "default-streaming"
CASES = pytest.mark.parametrize(("path", "text"), REAL_DOMAIN, ids=[path.name for path, _ in REAL_DOMAIN])


async def stream(
    base: str, samples: npt.NDArray[np.float32], frame_seconds: float, query: str = ""
) -> list[dict[str, Any]]:
    url = base.replace("http://", "ws://") + f"/v2/decode/stream/{MODEL}{query}"
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, False)
        results = [result async for result in client.results()]
    check_segment_rules(results)
    return results


@pytest.fixture
async def embedded(nursery: trio.Nursery) -> str:
    return await start_server(nursery, embedded_settings(max_frame_bytes=262_144))


@CASES
async def test_the_real_recordings_come_out_exactly_through_the_stream_endpoint(
    embedded: str, path: Path, text: str
) -> None:
    samples = read_recording(path)
    for frame_seconds in (0.02, 0.1, 0.5, samples.size / 16_000):
        results = await stream(embedded, samples, frame_seconds)
        assert results[-1]["transcription"] == text, frame_seconds
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{embedded}/v2/decode/batch/{MODEL}",
            content=pcm16(samples),
            headers={"Content-Type": "audio/pcm"},
        )
    assert response.json()["transcription"] == text


async def test_a_conversation_ends_each_utterance_with_a_speech_final(embedded: str) -> None:
    """The six recordings joined with pauses: one segment per utterance, each its own transcript."""
    audio, spans = joined_utterances(DOMAIN)
    finals = segment_finals(await stream(embedded, audio, 0.1))
    texts = dict(REAL_DOMAIN)
    for path, span in zip(DOMAIN, spans, strict=True):
        (final,) = overlapping(finals, span)
        assert final["transcription"] == texts[path], path.name
        assert final["speech_final"] is True, path.name
    assert len(finals) == len(spans)


def test_the_streaming_demo_set_is_listed_and_cache_aware() -> None:
    sets = tomllib.loads((REPOSITORY / "model_sets.toml").read_text(encoding="utf-8"))["model_sets"]
    assert sets[MODEL] == {
        "preprocessor": "preprocessor_streaming",
        "encoder": "encoder_streaming",
        "decoder_joint": "decoder_joint_streaming",
        "vocabulary": "vocab.txt",
    }
    config = (REPOSITORY / "encoder_streaming" / "config.pbtxt").read_text(encoding="utf-8")
    assert "sequence_batching" in config and 'key: "chunk_size"' in config


@pytest.fixture
async def over_triton(nursery: trio.Nursery, asr_triton: TritonFixture) -> str:
    return await start_server(nursery, asr_triton.settings())


async def test_the_real_recordings_come_out_exactly_over_triton(over_triton: str) -> None:
    for path, text in REAL_DOMAIN:
        assert (await stream(over_triton, read_recording(path), 0.1))[-1]["transcription"] == text, path.name


async def test_a_long_recording_comes_out_segment_by_segment_through_the_batch_endpoint(
    embedded: str,
) -> None:
    """55 s, the six recordings joined three times: longer than `BATCH_WHOLE_SECS`, so the batch
    request goes through the stream session, its segments cut at the pauses, each encoded chunk by
    chunk from fresh caches; every utterance comes out exactly, in its own segment."""
    audio, _ = joined_utterances(DOMAIN, repeats=3)
    assert audio.size > 30 * 16_000
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            f"{embedded}/v2/decode/batch/{MODEL}",
            content=pcm16(audio),
            headers={"Content-Type": "audio/pcm"},
        )
    assert response.status_code == 200, response.text
    texts = dict(REAL_DOMAIN)
    assert [segment["text"] for segment in response.json()["segments"]] == [
        texts[path] for path in DOMAIN
    ] * 3
