"""Cache-aware streaming on a real Triton (the nvidia-pytriton wheel's): the caches stay inside
Triton per sequence (the CPU flavour's stateful Python model), every sequence that was started is
ended, and a Triton restart mid-stream ends the stream with `backend_unavailable`.

The production flavour's implicit state (`sequence_batching { state }` on the onnxruntime backend)
cannot run here: the wheel's Triton carries only the Python backend, which does not update implicit
state (`amira/tooling/triton_stateful_model.py`); its configuration is checked against Triton's
own `ModelConfig` schema instead.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import trio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from amira.backends.triton import TritonBackend
from amira.client import StreamError, open_stream_client
from amira.engine import Engine
from amira.models import model_file, shipped_repository
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.settings import Settings
from amira.testing.recordings import LIBRIVOX, read_recording
from amira.testing.servers import embedded_settings, write_model_sets
from amira.tooling.triton_launcher import TritonProcess
from amira.tooling.triton_repository import build_repository, write_model
from tests.conftest import TritonFixture, started_triton
from tests.test_cache_aware import SETS, finalized_segments, reference_tokens

CLIP = read_recording(LIBRIVOX[0])


def ws(base: str, model: str) -> str:
    """One segment per stream (no endpoints), as the reference decodes it."""
    return base.replace("http://", "ws://") + f"/v2/decode/stream/{model}?endpointing=false"


async def start(nursery: trio.Nursery, settings: Settings) -> tuple[str, Recognizer]:
    assert settings.triton_endpoint is not None
    recognizer = Recognizer(Engine(TritonBackend(settings.triton_endpoint), settings))
    binds = await nursery.start(serve, settings, recognizer)
    return binds[0], recognizer


async def stream(
    url: str, samples: npt.NDArray[np.float32], frame_seconds: float, pace: float = 0.0
) -> list[dict[str, Any]]:
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:

        async def send() -> None:
            step = round(frame_seconds * 16_000)
            for offset in range(0, samples.size, step):
                await client.send_samples_frame(samples[offset : offset + step])
                await trio.sleep(pace)
            await client.end()

        nursery.start_soon(send)
        return [result async for result in client.results()]


async def test_streams_keep_their_caches_in_triton_and_give_the_reference_tokens(
    nursery: trio.Nursery, asr_triton: TritonFixture
) -> None:
    base, recognizer = await start(nursery, asr_triton.settings())
    engine = recognizer.engine
    probes = engine.calls["encoder_sequence_end"]  # the load-time probe of each set ends its sequence
    cache_aware = [name for name, loaded in engine.model_sets.items() if loaded.model_set.cache_aware]
    assert set(SETS) < set(cache_aware) and probes == len(cache_aware)
    for model, entry in SETS.items():
        described = engine.model_sets[model].describe()["streaming"]
        assert isinstance(described, dict)
        assert described["caches_kept_by"] == "backend" and described["cache_shapes"] == {}
        expected = reference_tokens(*entry, CLIP)
        for frame_seconds in (0.1, 1.0):
            assert (await stream(ws(base, model), CLIP, frame_seconds))[-1]["metadata"]["tokens"] == expected
        # each segment a sequence of its own: ended by its last chunk, the next one started afresh
        clips = [read_recording(path) for path in LIBRIVOX[1:3]]
        finals = await finalized_segments(base, model, clips)
        assert [final["metadata"]["tokens"] for final in finals[:2]] == [
            reference_tokens(*entry, clip) for clip in clips
        ]
    # every stream's last chunk carried the sequence end: no separate end was needed
    assert engine.calls["encoder_sequence_end"] == probes


async def test_a_stream_that_ends_early_still_ends_its_sequence(
    nursery: trio.Nursery, asr_triton: TritonFixture
) -> None:
    """An abandoned stream (the client goes away) and a stream ended by a protocol error both send
    their sequence's end, and Triton answers it; a stream that sent no audio has none to end."""
    base, recognizer = await start(nursery, asr_triton.settings())
    engine = recognizer.engine
    probes = engine.calls["encoder_sequence_end"]
    async with open_stream_client(ws(base, "cache_aware")) as client:
        await client.send_samples_frame(CLIP[:16_000])
        results = client.results()
        assert (await anext(results))["status"] == "ACTIVE"
    with trio.fail_after(10):
        while engine.calls["encoder_sequence_end"] < probes + 1:
            await trio.sleep(0.05)
    async with open_stream_client(ws(base, "cache_aware")) as client:
        await client.send_samples_frame(CLIP[:16_000])
        assert (await anext(client.results()))["status"] == "ACTIVE"
        await client.send_pcm(b"\x00\x01\x02")  # odd length: a protocol error ends the stream
        with pytest.raises(StreamError):
            async for _ in client.results():
                pass
    with trio.fail_after(10):
        while engine.calls["encoder_sequence_end"] < probes + 2:
            await trio.sleep(0.05)
    async with open_stream_client(ws(base, "cache_aware")) as client:
        await client.end()
        assert [r["status"] async for r in client.results()] == ["COMPLETE"]
    await trio.sleep(0.2)
    assert engine.calls["encoder_sequence_end"] == probes + 2


async def interrupted_stream(
    url: str, clip: npt.NDArray[np.float32], interrupt: Callable[[], Awaitable[None]]
) -> StreamError:
    """Stream 2 s of `clip`, wait until they are encoded, `interrupt()` the backend, send the rest:
    the stream must end with an error (returned), never with a `COMPLETE` from emptied caches."""
    async with open_stream_client(url) as client:
        await client.send_samples_frame(clip[: 16_000 * 2])
        results = client.results()
        partial = await anext(results)
        assert partial["status"] == "ACTIVE" and partial["committed"]
        await trio.sleep(1.0)  # every chunk of the first 2 s is encoded: the stream waits for audio
        await interrupt()
        await client.send_samples_frame(clip[16_000 * 2 :])
        await client.end()
        with trio.fail_after(30), pytest.raises(StreamError) as failed:
            async for result in results:
                assert result["status"] == "ACTIVE"  # never a COMPLETE from emptied caches
    return failed.value


@pytest.fixture
async def own_triton(tmp_path: Path) -> AsyncIterator[TritonProcess]:
    """A Triton of the test's own with the cache-aware set, to restart."""
    models = ["preprocessor_streaming", "encoder_cache_aware", "decoder_joint_rnnt"]
    repository = build_repository(shipped_repository(), tmp_path / "repository", "cpu", models=models)
    async with started_triton(repository, tmp_path / "triton.log") as triton:
        yield triton


async def test_a_triton_restart_mid_stream_ends_the_stream_with_backend_unavailable(
    nursery: trio.Nursery, own_triton: TritonProcess, tmp_path: Path
) -> None:
    """The caches were in the Triton that went away: the stream cannot go on, and must not pretend to
    (the restarted Triton refuses the sequence rather than encoding from empty caches)."""
    sets = write_model_sets(
        tmp_path / "sets.toml",
        {"ca": ("preprocessor_streaming", "encoder_cache_aware", "decoder_joint_rnnt", "vocab_test.txt")},
    )
    settings = embedded_settings(
        triton_endpoint=own_triton.url,
        model_sets_file=sets,
        inference_timeout_secs=2.0,
        stream_outage_secs=30.0,
    )
    base, _ = await start(nursery, settings)

    async def restart() -> None:
        await own_triton.akill()
        await own_triton.astart()

    failed = await interrupted_stream(ws(base, "ca"), CLIP, restart)
    assert failed.error_type == "backend_unavailable" and failed.code == 1011
    assert "encoder state is gone" in str(failed)
    # a new stream on the restarted Triton starts a new sequence and is exact again
    expected = reference_tokens(*SETS["cache_aware"], CLIP)
    assert (await stream(ws(base, "ca"), CLIP, 0.5))[-1]["metadata"]["tokens"] == expected


@pytest.mark.parametrize("flavour", ["production", "cpu"])
def test_the_cache_aware_encoders_triton_config_fits_tritons_schema(flavour: str, tmp_path: Path) -> None:
    source = shipped_repository() / "encoder_cache_aware" / "1" / "model.onnx"
    written = write_model(source, tmp_path, "encoder_cache_aware", flavour)  # type: ignore[arg-type]
    config = text_format.Parse((written / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [tensor.name for tensor in config.input] == ["processed_signal", "processed_signal_length"]
    assert [tensor.name for tensor in config.output] == ["encoded", "encoded_len"]
    batching = config.sequence_batching
    if flavour == "production":
        assert config.max_batch_size == 0 and batching.HasField("direct")
        assert [(s.input_name, s.output_name, list(s.dims)) for s in batching.state] == [
            ("cache_last_channel", "cache_last_channel_next", [2, 1, 6, 128]),
            ("cache_last_time", "cache_last_time_next", [2, 1, 128, 4]),
            ("cache_last_channel_len", "cache_last_channel_len_next", [1]),
        ]
        assert all(s.initial_state[0].zero_data for s in batching.state)
    else:
        assert config.max_batch_size > 0 and batching.HasField("oldest") and not batching.state
        assert config.parameters["sequence_state"].string_value == (
            "cache_last_channel,cache_last_time,cache_last_channel_len"
        )
    assert config.parameters["chunk_size"].string_value == "16"


def test_a_cache_aware_nemo_export_gets_the_streaming_preprocessor(tmp_path: Path) -> None:
    from amira.tooling.triton_repository import build_repository_from_nemo_export

    export = tmp_path / "export"
    export.mkdir()
    for source, target in (
        ("encoder_cache_aware", "encoder-model.onnx"),
        ("decoder_joint_rnnt", "decoder_joint-model.onnx"),
    ):
        shutil.copyfile(model_file(shipped_repository(), source), export / target)
    shutil.copyfile(shipped_repository() / "vocab_test.txt", export / "vocab.txt")
    dest = build_repository_from_nemo_export(export, tmp_path / "repo", "production")
    preprocessor = onnx.load(str(dest / "preprocessor" / "1" / "model.onnx"))
    assert preprocessor.doc_string.startswith("NeMo 128-mel log features, valid framing")
    assert sorted(path.name for path in dest.iterdir()) == [
        "decoder_joint",
        "decoder_joint_decode",
        "decoder_joint_recording",
        "encoder",
        "preprocessor",
        "vocab.txt",
    ]
    assert "sequence_batching" in (dest / "encoder" / "config.pbtxt").read_text()
