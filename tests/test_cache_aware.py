"""Cache-aware model sets on the embedded backend: streaming features, the chunk loop against an
independent reference, the contract's validation, `/v2/models`, batch requests, pooled caches."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import trio

from amira.backends.embedded import EmbeddedBackend
from amira.client import open_stream_client
from amira.core.cache_aware import CacheAwareChunker, CacheAwareSpec, CachePool, Chunk
from amira.core.model_set import ModelSet, ModelSetConfig, ModelSetError, validate_model_set
from amira.core.tensors import ModelMetadata, TensorSpec
from amira.core.vocabulary import Vocabulary
from amira.engine import Engine
from amira.models import model_file, onnx_asr_preprocessor, shipped_repository
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.testing.recordings import LIBRIVOX, pcm16, read_recording
from amira.testing.reference import greedy_frame_by_frame
from amira.testing.servers import embedded_settings, write_model_sets

REPOSITORY = shipped_repository()
CLIP = read_recording(LIBRIVOX[0])  # 7.1 s
# model set -> (encoder, decoder_joint, TDT durations)
SETS = {
    "cache_aware": ("encoder_cache_aware", "decoder_joint_rnnt", ()),
    "cache_aware_batch_first": ("encoder_cache_aware_batch_first", "decoder_joint_tdt", (0, 1, 2, 3, 4)),
}
F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
Samples = npt.NDArray[np.float32]


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_file(REPOSITORY, name)), providers=["CPUExecutionProvider"])


def whole_signal_features(samples: Samples) -> Samples:
    """The streaming preprocessor over the whole signal at once, with half a window of zeros on each
    side and a zero pre-emphasis history: [F, T]."""
    padded = np.concatenate([np.zeros(257, np.float32), samples, np.zeros(256, np.float32)])
    features, _ = session("preprocessor_streaming").run(
        None, {"waveforms": padded[None], "waveforms_lens": np.array([padded.size])}
    )
    return np.asarray(features[0], np.float32)


def reference_tokens(
    encoder_name: str, joint_name: str, durations: tuple[int, ...], samples: Samples
) -> list[int]:
    """The cache-aware export decoded the plain way, written here on onnxruntime: the whole signal's
    features, chunk after chunk with the caches and the pre-encode cache, then the spec's greedy loop
    one frame per `decoder_joint` call."""
    encoder, joint = session(encoder_name), session(joint_name)
    meta = encoder.get_modelmeta().custom_metadata_map
    chunk, pre_encode = int(meta["chunk_size"]), int(meta["pre_encode_cache_size"])
    mel = whole_signal_features(samples)
    shapes = {i.name: i.shape for i in encoder.get_inputs()}
    caches = {
        name: np.zeros([d if isinstance(d, int) else 1 for d in shapes[name]], np.float32)
        for name in ("cache_last_channel", "cache_last_time")
    }
    seen, previous, frames = np.zeros(1, np.int64), np.zeros((mel.shape[0], pre_encode), np.float32), []
    for start in range(0, mel.shape[1], chunk):
        valid = min(chunk, mel.shape[1] - start)
        signal = np.zeros((mel.shape[0], pre_encode + -(-valid // 8) * 8), np.float32)
        signal[:, :pre_encode], signal[:, pre_encode : pre_encode + valid] = (
            previous,
            mel[:, start : start + valid],
        )
        encoded, length, channel, time, seen = encoder.run(
            None,
            {
                "processed_signal": signal[None],
                "processed_signal_length": np.array([pre_encode + valid]),
                **caches,
                "cache_last_channel_len": seen,
            },
        )
        caches = {"cache_last_channel": channel, "cache_last_time": time}
        previous = signal[:, signal.shape[1] - pre_encode :]
        frames.append(encoded[0, :, : int(length[0])])
    vocab = joint.get_outputs()[0].shape[3] - len(durations)
    tokens, _, _ = greedy_frame_by_frame(joint, np.concatenate(frames, axis=1), vocab, durations)
    return tokens


@pytest.fixture(scope="module")
def references() -> dict[str, list[int]]:
    return {name: reference_tokens(*entry, CLIP) for name, entry in SETS.items()}


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, Recognizer]:
    settings = embedded_settings(max_frame_bytes=262_144)
    recognizer = Recognizer(Engine(EmbeddedBackend(settings.model_repository), settings))
    binds = await nursery.start(serve, settings, recognizer)
    return binds[0], recognizer


async def stream(
    base: str, model: str, samples: Samples, frame_seconds: float, query: str = "?endpointing=false"
) -> list[dict[str, Any]]:
    """Stream `samples` to the server; by default as one segment (no endpoints), as the batch decode is."""
    url = base.replace("http://", "ws://") + f"/v2/decode/stream/{model}{query}"
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_samples, samples, frame_seconds, False)
        return [result async for result in client.results()]


# --- streaming features ------------------------------------------------------------------------


def chunker_features(samples: Samples, piece: int) -> tuple[Samples, list[Chunk]]:
    """The mel frames of every chunk a `CacheAwareChunker` cuts, `samples` fed `piece` at a time."""
    spec = CacheAwareSpec(chunk_frames=16, pre_encode_frames=9, subsampling=8, feature_size=128)
    chunker, pre, chunks = CacheAwareChunker(spec), session("preprocessor_streaming"), []

    def drain() -> None:
        while (request := chunker.features_request()) is not None:
            features, _ = pre.run(
                None, {"waveforms": request[None], "waveforms_lens": np.array([request.size])}
            )
            chunker.add_features(features[0])
        while (chunk := chunker.next_chunk()) is not None:
            chunks.append(chunk)

    for start in range(0, samples.size, piece):
        chunker.feed(samples[start : start + piece])
        drain()
    chunker.finish()
    drain()
    mel = np.concatenate([chunk.signal[0, :, 9 : chunk.length] for chunk in chunks], axis=1)
    return mel, chunks


@pytest.mark.parametrize("piece", [1, 37, 160, 1280, 5000, CLIP.size])
def test_streamed_features_equal_the_whole_signals_bit_for_bit(piece: int) -> None:
    samples = CLIP[: 16_000 * 2 + 77] if piece == 1 else CLIP
    mel, chunks = chunker_features(samples, piece)
    whole = whole_signal_features(samples)
    assert mel.shape == whole.shape == (128, samples.size // 160 + 1)
    assert np.array_equal(mel, whole)
    assert [chunk.final for chunk in chunks].count(True) == 1 and chunks[-1].final
    for before, after in itertools.pairwise(chunks):  # the pre-encode cache: the frames before
        assert np.array_equal(after.signal[0, :, :9], before.signal[0, :, before.signal.shape[2] - 9 :])
        assert after.first_frame == before.first_frame + before.frames


def test_streaming_features_are_nemos_log_mel_frames_unnormalised() -> None:
    """Away from the ends (where NeMo pads after pre-emphasis), each frame is the NeMo graph's own
    log-mel frame before its per-utterance normalisation, which streaming leaves out."""
    graph = onnx.load(str(onnx_asr_preprocessor("nemo128")))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("tmp_24", onnx.TensorProto.FLOAT, None))
    nemo = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    _, _, log_mel = nemo.run(None, {"waveforms": CLIP[None], "waveforms_lens": np.array([CLIP.size])})
    streamed, _ = chunker_features(CLIP, 3000)
    assert streamed.shape == log_mel[0].shape
    assert np.abs(streamed[:, 1:-2] - log_mel[0][:, 1:-2]).max() < 1e-4


# --- the chunk loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(SETS))
async def test_streams_at_any_frame_size_give_the_reference_tokens(
    server: tuple[str, Recognizer], model: str, references: dict[str, list[int]], http: httpx.AsyncClient
) -> None:
    expected = references[model]
    assert len(expected) > 20
    for frame_seconds in (0.01, 0.1, 0.37, 1.0, CLIP.size / 16_000):
        results = await stream(server[0], model, CLIP, frame_seconds)
        final = results[-1]
        assert final["status"] == "COMPLETE", frame_seconds
        assert final["metadata"]["tokens"] == expected, frame_seconds
        committed = ""
        for result in results:  # no look-ahead: a partial's whole text is committed
            assert result["transcription"] == result["committed"]
            assert result["committed"].startswith(committed)
            committed = result["committed"]
    response = await http.post(
        f"{server[0]}/v2/decode/batch/{model}", content=pcm16(CLIP), headers={"Content-Type": "audio/pcm"}
    )
    assert response.status_code == 200 and response.json()["metadata"]["tokens"] == expected
    loaded = server[1].engine.model_sets[model]
    assert loaded.caches is not None and loaded.caches.available == loaded.caches.size


async def finalized_segments(base: str, model: str, clips: list[Samples]) -> list[dict[str, Any]]:
    """Stream the clips with a Finalize after each (no endpoints): one segment per clip."""
    url = base.replace("http://", "ws://") + f"/v2/decode/stream/{model}?endpointing=false"
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:

        async def send() -> None:
            for clip in clips:
                for start in range(0, clip.size, 1600):
                    await client.send_samples_frame(clip[start : start + 1600])
                await client.finalize()
            await client.end()

        nursery.start_soon(send)
        return [result async for result in client.results() if result["is_final"]]


@pytest.mark.parametrize("model", list(SETS))
async def test_each_segment_is_encoded_from_fresh_caches(server: tuple[str, Recognizer], model: str) -> None:
    """After a Finalize the next segment starts a new encoder: its tokens are those of its audio alone."""
    clips = [read_recording(path) for path in LIBRIVOX[1:3]]
    finals = await finalized_segments(server[0], model, clips)
    assert [final["from_finalize"] for final in finals[:2]] == [True, True]
    assert finals[2]["status"] == "COMPLETE" and len(finals[2]["metadata"]["segments"]) == 2
    for final, clip in zip(finals, clips, strict=False):
        assert final["metadata"]["tokens"] == reference_tokens(*SETS[model], clip)


async def test_v2_models_shows_the_kind_and_the_chunk(
    server: tuple[str, Recognizer], http: httpx.AsyncClient
) -> None:
    models = {m["name"]: m for m in (await http.get(f"{server[0]}/v2/models")).json()["models"]}
    streaming = models["cache_aware"]["streaming"]
    assert models["cache_aware"]["encoder"] == "cache_aware"
    assert streaming["kind"] == "cache_aware" and streaming["caches_kept_by"] == "amira"
    assert streaming["chunk_seconds"] == 0.16 and streaming["chunk_mel_frames"] == 16
    assert streaming["pre_encode_cache_mel_frames"] == 9
    assert streaming["cache_shapes"]["cache_last_channel"] == [2, 1, 6, 128]
    assert models["cache_aware_batch_first"]["streaming"]["cache_shapes"]["cache_last_time"] == [1, 2, 128, 4]
    assert models["tdt"]["encoder"] == "offline" and models["tdt"]["streaming"]["kind"] == "windowed"
    assert json.dumps(models["tdt"]["streaming"]["chunk_seconds"]) == "1.6"


async def test_a_chunk_size_from_the_model_sets_file_is_used_and_checked(tmp_path: Path) -> None:
    sets = write_model_sets(
        tmp_path / "sets.toml",
        {"ca": ("preprocessor_streaming", "encoder_cache_aware", "decoder_joint_rnnt", "vocab_test.txt")},
    )
    text = sets.read_text(encoding="utf-8")
    sets.write_text(text + "chunk_size = 32\n", encoding="utf-8")
    settings = embedded_settings(model_sets_file=sets)
    engine = Engine(EmbeddedBackend(settings.model_repository), settings)
    await engine.load()
    spec = engine.model_sets["ca"].model_set.cache_aware
    assert spec is not None and spec.chunk_frames == 32
    sets.write_text(text + "chunk_size = 12\n", encoding="utf-8")
    engine = Engine(EmbeddedBackend(settings.model_repository), settings)
    with pytest.raises(ModelSetError, match="whole number of encoder frames"):
        await engine.load()


async def test_a_cache_aware_set_refuses_a_normalising_preprocessor(tmp_path: Path) -> None:
    sets = write_model_sets(
        tmp_path / "sets.toml",
        {"ca": ("preprocessor", "encoder_cache_aware", "decoder_joint_rnnt", "vocab_test.txt")},
    )
    settings = embedded_settings(model_sets_file=sets)
    engine = Engine(EmbeddedBackend(settings.model_repository), settings)
    with pytest.raises(ModelSetError, match="needs the streaming preprocessor"):
        await engine.load()


def test_caches_are_pooled_and_zeroed() -> None:
    spec = CacheAwareSpec(chunk_frames=16, pre_encode_frames=9, subsampling=8, feature_size=128)
    with pytest.raises(ValueError, match="whole number of encoder frames"):
        CacheAwareSpec(chunk_frames=12, pre_encode_frames=9, subsampling=8, feature_size=128)
    pool = CachePool(spec, 1)
    caches = pool.acquire()
    assert pool.available == 0 and caches.arrays == {}  # no caches: a spec whose backend keeps them


# --- validation of the contract -----------------------------------------------------------------


Table = dict[str, tuple[np.dtype[Any], tuple[int, ...]]]


def metadata(name: str, inputs: Table, outputs: Table, **extra: Any) -> ModelMetadata:
    def specs(table: Table) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, dtype, shape) for n, (dtype, shape) in table.items())

    return ModelMetadata(name, specs(inputs), specs(outputs), **extra)


VOCABULARY = Vocabulary.parse("".join(f"t{i} {i}\n" for i in range(4)) + "<blk> 4\n")
PREPROCESSOR = metadata(
    "pre",
    {"waveforms": (F32, (-1, -1)), "waveforms_lens": (I64, (-1,))},
    {"features": (F32, (-1, 128, -1)), "features_lens": (I64, (-1,))},
)
JOINT = metadata(
    "joint",
    {
        "encoder_outputs": (F32, (-1, 64, -1)),
        "targets": (np.dtype(np.int32), (-1, 1)),
        "target_length": (np.dtype(np.int32), (-1,)),
        "input_states_1": (F32, (1, -1, 32)),
        "input_states_2": (F32, (1, -1, 32)),
    },
    {
        "outputs": (F32, (-1, -1, 1, 5)),
        "prednet_lengths": (np.dtype(np.int32), (-1,)),
        "output_states_1": (F32, (1, -1, 32)),
        "output_states_2": (F32, (1, -1, 32)),
    },
)


def encoder(
    channel: tuple[int, ...] = (3, -1, 10, 64),
    time: tuple[int, ...] = (3, -1, 64, 8),
    *,
    names: tuple[str, str] = ("processed_signal", "encoded"),
    **extra: Any,
) -> ModelMetadata:
    signal, encoded = names
    length = "length" if signal == "audio_signal" else "processed_signal_length"
    encoded_len = "encoded_lengths" if encoded == "outputs" else "encoded_len"
    inputs: Table = {signal: (F32, (-1, 128, -1)), length: (I64, (-1,))}
    outputs: Table = {encoded: (F32, (-1, 64, -1)), encoded_len: (I64, (-1,))}
    if not extra.get("states"):
        inputs |= {
            "cache_last_channel": (F32, channel),
            "cache_last_time": (F32, time),
            "cache_last_channel_len": (I64, (-1,)),
        }
        outputs |= {
            "cache_last_channel_next": (F32, channel),
            "cache_last_time_next": (F32, time),
            "cache_last_channel_next_len" if encoded == "outputs" else "cache_last_channel_len_next": (
                I64,
                (-1,),
            ),
        }
    return metadata("enc", inputs, outputs, **extra)


def validate(enc: ModelMetadata, **config: Any) -> CacheAwareSpec:
    cfg = ModelSetConfig(name="s", **config)
    model_set: ModelSet = validate_model_set(
        cfg, VOCABULARY, {"preprocessor": PREPROCESSOR, "encoder": enc, "decoder_joint": JOINT}
    )
    assert model_set.cache_aware is not None
    return model_set.cache_aware


def test_cache_layout_and_sizes_are_read_from_the_encoder() -> None:
    nemo = validate(encoder(), chunk_size=56, pre_encode_cache_size=9)
    assert [(c.name, c.shape, c.batch_axis) for c in nemo.caches] == [
        ("cache_last_channel", (3, 1, 10, 64), 1),
        ("cache_last_time", (3, 1, 64, 8), 1),
        ("cache_last_channel_len", (1,), 0),
    ]
    assert nemo.chunk_encoder_frames == 7 and nemo.signal == "processed_signal"
    first = validate(
        encoder(
            (-1, 3, 10, 64), (-1, 3, 64, 8), properties={"chunk_size": "16", "pre_encode_cache_size": "0"}
        )
    )
    assert [c.batch_axis for c in first.caches] == [0, 0, 0] and first.caches[0].shape == (1, 3, 10, 64)
    assert first.chunk_frames == 16 and first.pre_encode_frames == 0
    names = validate(encoder(names=("audio_signal", "outputs")), chunk_size=8, pre_encode_cache_size=2)
    assert (names.signal, names.encoded, names.caches[2].next_name) == (
        "audio_signal",
        "outputs",
        "cache_last_channel_next_len",
    )
    kept = validate(
        encoder(states=("cache_last_channel", "cache_last_time", "cache_last_channel_len")),
        chunk_size=8,
        pre_encode_cache_size=2,
    )
    assert kept.backend_state and kept.caches == ()


@pytest.mark.parametrize(
    ("enc", "config", "message"),
    [
        (encoder(), {}, "needs its chunk and pre-encode cache sizes"),
        (encoder(), {"chunk_size": 12, "pre_encode_cache_size": 0}, "whole number of encoder frames"),
        (
            encoder(channel=(3, -1, 10, 32)),
            {"chunk_size": 8, "pre_encode_cache_size": 0},
            "encoder's width 64",
        ),
        (encoder(channel=(-1, -1, 10, 64)), {"chunk_size": 8, "pre_encode_cache_size": 0}, "batch axis"),
        (encoder(time=(3, -1, 64, -1)), {"chunk_size": 8, "pre_encode_cache_size": 0}, "must be fixed"),
        (
            encoder(states=("cache_last_channel",)),
            {"chunk_size": 8, "pre_encode_cache_size": 0},
            "keeps state but not 'cache_last_time'",
        ),
        (
            encoder(properties={"chunk_size": "lots", "pre_encode_cache_size": "0"}),
            {},
            "not a whole number",
        ),
    ],
)
def test_a_cache_aware_encoder_that_does_not_fit_is_refused(
    enc: ModelMetadata, config: dict[str, int], message: str
) -> None:
    with pytest.raises(ModelSetError, match=message):
        validate(enc, **config)
