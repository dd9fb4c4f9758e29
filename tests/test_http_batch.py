"""The batch endpoint and the HTTP surface, through a real Hypercorn server and a real HTTP client."""

from __future__ import annotations

import base64
import io
import itertools
import json

import httpx
import numpy as np
import pytest
import soundfile
import trio
from prometheus_client.parser import text_string_to_metric_families

from amira import open_recognizer
from amira.testing.recordings import (
    CARDS,
    LIBRIVOX,
    MODEL_SETS,
    REAL_DOMAIN,
    RECORDINGS,
    pcm16,
    read_recording,
)
from amira.testing.servers import embedded_settings, start_server
from tests.test_audio import fft_resample


@pytest.fixture
async def embedded_url(nursery: trio.Nursery) -> str:
    return await start_server(nursery, embedded_settings(max_batch_audio_secs=20.0, max_frame_bytes=65536))


@pytest.fixture
async def direct_tokens() -> dict[tuple[str, str], list[int]]:
    """Tokens of the in-process recogniser for every recording and model set: what HTTP must match."""
    tokens = {}
    async with open_recognizer(embedded_settings()) as recognizer:
        for path in RECORDINGS:
            for model in MODEL_SETS:
                transcript = await recognizer.transcribe(read_recording(path), model)
                tokens[(path.name, model)] = list(transcript.tokens)
    return tokens


def wav_bytes(samples: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def bodies(samples: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """The same audio in every request form of the contract."""
    pcm = pcm16(samples)
    return {
        "json-bytes": ("application/json", json.dumps({"audio_buffer": list(pcm)}).encode()),
        "json-base64": (
            "application/json",
            json.dumps({"audio_buffer": base64.b64encode(pcm).decode()}).encode(),
        ),
        "raw-pcm": ("application/octet-stream", pcm),
        "wav": ("audio/wav", wav_bytes(samples)),
    }


async def post(
    http: httpx.AsyncClient, url: str, content_type: str, body: bytes, **params: object
) -> httpx.Response:
    return await http.post(url, content=body, headers={"Content-Type": content_type}, params=params)


async def test_health_ready_models_metrics(http: httpx.AsyncClient, embedded_url: str) -> None:
    health = (await http.get(f"{embedded_url}/health")).json()
    assert health == {"status": "healthy", "version": "0.1.0", "backend": "embedded"}
    ready = await http.get(f"{embedded_url}/ready")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "models": ["cache_aware", "cache_aware_batch_first", "default", "default-streaming", "rnnt", "tdt"],
    }
    models = {m["name"]: m for m in (await http.get(f"{embedded_url}/v2/models")).json()["models"]}
    assert models["tdt"]["type"] == "tdt" and models["rnnt"]["type"] == "rnnt"
    assert (
        models["default"]["type"] == "rnnt" and models["default"]["vocabulary_size"] == 57
    )  # the demo model
    assert models["default"]["models"]["encoder"] == "encoder"
    assert models["tdt"] == {
        "name": "tdt",
        "sample_rate": 16_000,
        "feature_size": 128,
        "vocabulary_size": 129,
        "type": "tdt",
        "durations": [0, 1, 2, 3, 4],
        "frame_seconds": 0.08,
        "models": {
            "preprocessor": "preprocessor",
            "encoder": "encoder_tdt",
            "decoder_joint": "decoder_joint_tdt",
        },
        "encoder": "offline",
        "streaming": {
            "kind": "windowed",
            "chunk_seconds": 1.6,
            "left_context_seconds": 4.0,
            "right_context_seconds": 1.2,
        },
    }
    metrics = await http.get(f"{embedded_url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "amira_batch_requests" in {f.name for f in text_string_to_metric_families(metrics.text)}


@pytest.mark.parametrize("model", MODEL_SETS)
async def test_every_body_form_gives_the_direct_transcript(
    http: httpx.AsyncClient, embedded_url: str, direct_tokens: dict, model: str
) -> None:
    for path in [LIBRIVOX[1], CARDS[0]]:
        samples = read_recording(path)
        for form, (content_type, body) in bodies(samples).items():
            response = await post(http, f"{embedded_url}/v2/decode/batch/{model}", content_type, body)
            assert response.status_code == 200, (form, response.text)
            document = response.json()
            assert document["status"] == "COMPLETE"
            assert document["metadata"]["tokens"] == direct_tokens[(path.name, model)], (path.name, form)
            assert document["metadata"]["audio_length_samples"] == samples.size
            assert document["metadata"]["model"] == model


async def test_opaque_is_echoed_and_words_have_times(http: httpx.AsyncClient, embedded_url: str) -> None:
    pcm = pcm16(read_recording(LIBRIVOX[1]))
    opaque = {"session": 7, "tags": ["a", None]}
    body = json.dumps({"audio_buffer": base64.b64encode(pcm).decode(), "opaque": opaque}).encode()
    document = (await post(http, f"{embedded_url}/v2/decode/batch/default", "application/json", body)).json()
    assert document["opaque"] == opaque
    metadata = document["metadata"]
    assert metadata["audio_length_samples"] == len(pcm) // 2
    assert metadata["audio_seconds"] == round(len(pcm) / 2 / 16_000, 3)
    words = document["metadata"]["words"]
    assert words and " ".join(w["word"] for w in words) == document["transcription"]
    assert all(0 <= w["start"] < w["end"] <= document["metadata"]["audio_seconds"] + 0.08 for w in words)
    assert all(set(w) == {"word", "start", "end", "confidence"} and 0 <= w["confidence"] <= 1 for w in words)
    assert all(a["start"] < b["start"] and a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert (
        "opaque" not in (await post(http, f"{embedded_url}/v2/decode/batch/default", "audio/l16", pcm)).json()
    )


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
async def test_other_sample_rates_are_resampled(
    http: httpx.AsyncClient, embedded_url: str, rate: int
) -> None:
    """A person's recording at another rate (resampled without soxr, see `fft_resample`) transcribes
    to what they said, as a WAV file and as raw PCM with `?sample_rate=`."""
    path, text = REAL_DOMAIN[4]
    samples = read_recording(path)
    resampled = fft_resample(samples[: samples.size // 320 * 320], 16_000, rate).astype(np.float32)
    wav = await post(http, f"{embedded_url}/v2/decode/batch/default", "audio/wav", wav_bytes(resampled, rate))
    raw = await post(
        http, f"{embedded_url}/v2/decode/batch/default", "audio/pcm", pcm16(resampled), sample_rate=rate
    )
    for response in (wav, raw):
        assert response.status_code == 200, response.text
        assert abs(response.json()["metadata"]["audio_length_samples"] - samples.size) <= 320
        assert response.json()["transcription"] == text


ERROR_CASES = [
    # (name, content type, body, query, status, error_type)
    ("malformed json", "application/json", b"{not json", {}, 400, "bad_request"),
    ("json not an object", "application/json", b"[1, 2]", {}, 400, "bad_request"),
    ("missing audio_buffer", "application/json", b'{"opaque": 1}', {}, 400, "bad_request"),
    ("byte out of range", "application/json", b'{"audio_buffer": [0, 256]}', {}, 400, "bad_request"),
    ("byte not an integer", "application/json", b'{"audio_buffer": [0, 1.5]}', {}, 400, "bad_request"),
    ("bad base64", "application/json", b'{"audio_buffer": "***"}', {}, 400, "bad_request"),
    ("odd json pcm", "application/json", b'{"audio_buffer": [0, 1, 2]}', {}, 400, "bad_request"),
    ("odd raw pcm", "application/octet-stream", b"\x00\x01\x02", {}, 400, "bad_request"),
    ("text sample rate", "audio/pcm", b"\x00\x00", {"sample_rate": "fast"}, 400, "bad_request"),
    (
        "json sample rate",
        "application/json",
        b'{"audio_buffer": [0, 0], "sample_rate": "x"}',
        {},
        400,
        "bad_request",
    ),
    ("empty json audio", "application/json", b'{"audio_buffer": []}', {}, 400, "bad_audio"),
    ("empty raw audio", "application/octet-stream", b"", {}, 400, "bad_audio"),
    ("unreadable wav", "audio/wav", b"RIFF\x00\x00\x00\x00WAVEjunk", {}, 400, "bad_audio"),
    ("empty wav", "audio/wav", wav_bytes(np.zeros(0, np.float32)), {}, 400, "bad_audio"),
    ("rate too low", "audio/pcm", b"\x00\x00", {"sample_rate": "4000"}, 400, "bad_audio"),
    (
        "rate too high",
        "application/json",
        b'{"audio_buffer": [0, 0], "sample_rate": 999999}',
        {},
        400,
        "bad_audio",
    ),
    ("media type", "text/plain", b"hello", {}, 415, "unsupported_media_type"),
    ("no media type", "", b"hello", {}, 415, "unsupported_media_type"),
    ("too long raw", "audio/pcm", bytes(2 * 16_000 * 21), {}, 413, "too_large"),
    ("too long wav", "audio/wav", wav_bytes(np.zeros(8000 * 21, np.float32), 8000), {}, 413, "too_large"),
    ("body too large", "audio/pcm", bytes(16 * 65536 + 2), {}, 413, "too_large"),
]


@pytest.mark.parametrize(("name", "content_type", "body", "query", "status", "error_type"), ERROR_CASES)
async def test_bad_requests_get_their_documented_error(
    http: httpx.AsyncClient,
    embedded_url: str,
    name: str,
    content_type: str,
    body: bytes,
    query: dict,
    status: int,
    error_type: str,
) -> None:
    response = await post(http, f"{embedded_url}/v2/decode/batch/default", content_type, body, **query)
    assert response.status_code == status, response.text
    document = response.json()
    assert document["error_type"] == error_type and document["error"]


async def test_unknown_model_is_404_never_a_fallback(http: httpx.AsyncClient, embedded_url: str) -> None:
    response = await post(http, f"{embedded_url}/v2/decode/batch/nope", "audio/pcm", b"\x00\x00" * 1600)
    assert response.status_code == 404 and response.json()["error_type"] == "unknown_model"


async def test_an_answer_before_the_body_was_read_closes_the_connection(
    http: httpx.AsyncClient, embedded_url: str
) -> None:
    """README: the connection cannot be reused, so the answer says `Connection: close` (a keep-alive
    client's next request would hang otherwise); an answer after the whole body keeps it open."""
    body = bytes(16 * 65536 - 2)  # more than Hypercorn reads ahead
    early = await post(http, f"{embedded_url}/v2/decode/batch/nope", "audio/pcm", body)
    assert early.status_code == 404 and early.headers["Connection"] == "close"
    read = await post(http, f"{embedded_url}/v2/decode/batch/default", "audio/pcm", b"\x00\x00" * 1600)
    assert read.status_code == 200 and read.headers.get("Connection") != "close"


async def test_metrics_count_requests_and_errors(http: httpx.AsyncClient, embedded_url: str) -> None:
    await post(http, f"{embedded_url}/v2/decode/batch/default", "audio/pcm", pcm16(read_recording(CARDS[0])))
    await post(http, f"{embedded_url}/v2/decode/batch/default", "text/plain", b"x")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families((await http.get(f"{embedded_url}/metrics")).text)
        for s in family.samples
    }
    assert (
        samples[
            ("amira_batch_requests_total", (("model", "default"), ("outcome", "ok"), ("protocol", "native")))
        ]
        == 1
    )
    assert (
        samples[("amira_errors_total", (("error_type", "unsupported_media_type"), ("protocol", "native")))]
        == 1
    )
    assert samples[("amira_backend_calls_total", (("role", "encoder"),))] >= 1
