"""Model sets: a preprocessor, encoder and decoder_joint triple with its vocabulary.

Everything about a model set is read from the backend's model metadata and checked against the
contract of `models-and-decoding.md` before a request is served: a server that starts with a
vocabulary or tensor that does not fit would otherwise fail, or worse, answer nonsense, later.

Two kinds of encoder: an offline one (`audio_signal`, `length` -> `outputs`, `encoded_lengths`),
streamed in overlapping windows, and a **cache-aware** one (NeMo's cache-aware export,
`amira.core.cache_aware`), recognised by its `cache_last_channel` input (or state, where the
backend keeps the caches), streamed one chunk per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from amira.core.cache_aware import CacheAwareSpec, CacheTensor
from amira.core.decoding import NEMO_MAX_SYMBOLS_PER_STEP, DecodingSpec
from amira.core.tensors import ModelMetadata, TensorSpec
from amira.core.vocabulary import Vocabulary

F32, I64, I32 = np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.int32)

# name -> (dtype, rank) for each model's inputs and outputs, as the NeMo export has them.
CONTRACT: dict[str, tuple[dict[str, tuple[np.dtype[Any], int]], dict[str, tuple[np.dtype[Any], int]]]] = {
    "preprocessor": (
        {"waveforms": (F32, 2), "waveforms_lens": (I64, 1)},
        {"features": (F32, 3), "features_lens": (I64, 1)},
    ),
    "encoder": (
        {"audio_signal": (F32, 3), "length": (I64, 1)},
        {"outputs": (F32, 3), "encoded_lengths": (I64, 1)},
    ),
    "decoder_joint": (
        {
            "encoder_outputs": (F32, 3),
            "targets": (I32, 2),
            "target_length": (I32, 1),
            "input_states_1": (F32, 3),
            "input_states_2": (F32, 3),
        },
        {
            "outputs": (F32, 4),
            "prednet_lengths": (I32, 1),
            "output_states_1": (F32, 3),
            "output_states_2": (F32, 3),
        },
    ),
}


# The cache-aware encoder's tensors: each name with its alternatives (NeMo's own export uses the
# offline names for signal and output, and `cache_last_channel_next_len`), dtype and ranks. A length
# of rank 2 is `[B, 1]`: a model batched by Triton's sequence batcher (`max_batch_size` > 0).
CACHE_AWARE_INPUTS: dict[str, tuple[tuple[str, ...], np.dtype[Any], tuple[int, ...]]] = {
    "signal": (("processed_signal", "audio_signal"), F32, (3,)),
    "signal_length": (("processed_signal_length", "length"), I64, (1, 2)),
}
CACHE_AWARE_OUTPUTS: dict[str, tuple[tuple[str, ...], np.dtype[Any], tuple[int, ...]]] = {
    "encoded": (("encoded", "outputs"), F32, (3,)),
    "encoded_length": (("encoded_len", "encoded_lengths"), I64, (1, 2)),
}
# cache input -> (its `_next` output names, rank)
CACHES: dict[str, tuple[tuple[str, ...], int]] = {
    "cache_last_channel": (("cache_last_channel_next",), 4),
    "cache_last_time": (("cache_last_time_next",), 4),
    "cache_last_channel_len": (("cache_last_channel_len_next", "cache_last_channel_next_len"), 1),
}
DEFAULT_SUBSAMPLING = 8  # NeMo's FastConformer; a model may say otherwise (`subsampling_factor`)


class ModelSetError(ValueError):
    """A model set does not fit the contract; the server refuses to start with it."""


@attrs.frozen
class ModelSetConfig:
    """Which backend models and vocabulary make up a named model set."""

    name: str
    preprocessor: str = "preprocessor"
    encoder: str = "encoder"
    decoder_joint: str = "decoder_joint"
    vocabulary: Path = Path("vocab.txt")
    durations: tuple[int, ...] | None = None
    max_symbols_per_step: int = NEMO_MAX_SYMBOLS_PER_STEP
    # cache-aware encoders: mel frames per encoder call and of the pre-encode cache; the encoder's
    # metadata (`chunk_size`, `pre_encode_cache_size`) gives them when these are not set
    chunk_size: int | None = None
    pre_encode_cache_size: int | None = None

    @property
    def models(self) -> dict[str, str]:
        """Role (`preprocessor`, `encoder`, `decoder_joint`) -> backend model name."""
        return {
            "preprocessor": self.preprocessor,
            "encoder": self.encoder,
            "decoder_joint": self.decoder_joint,
        }


@attrs.frozen
class ModelSet:
    """A validated model set: the dimensions the rest of the server works with."""

    config: ModelSetConfig
    vocabulary: Vocabulary
    decoding: DecodingSpec
    feature_size: int
    encoder_dim: int
    state_layers: int
    state_hidden: int
    hop_samples: int = 160
    subsampling: int = 8
    sample_rate: int = 16_000
    cache_aware: CacheAwareSpec | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> Literal["rnnt", "tdt"]:
        return self.decoding.kind

    @property
    def encoder_kind(self) -> Literal["offline", "cache_aware"]:
        return "offline" if self.cache_aware is None else "cache_aware"

    @property
    def frame_samples(self) -> int:
        """Samples per encoder frame: the unit of every streaming chunk and context length."""
        return self.hop_samples * self.subsampling

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "feature_size": self.feature_size,
            "vocabulary_size": self.vocabulary.size,
            "type": self.kind,
            "durations": list(self.decoding.durations),
            "frame_seconds": self.frame_seconds,
            "models": self.config.models,
            "encoder": self.encoder_kind,
        }


def _check_tensors(role: str, model: str, metadata: ModelMetadata) -> list[str]:
    if role == "encoder" and is_cache_aware(metadata):
        return _check_cache_aware(model, metadata)
    problems = []
    inputs, outputs = CONTRACT[role]
    for direction, expected, find in (
        ("input", inputs, metadata.input),
        ("output", outputs, metadata.output),
    ):
        for name, (dtype, rank) in expected.items():
            spec: TensorSpec | None = find(name)
            if spec is None:
                problems.append(f"{role} model {model!r} has no {direction} {name!r}")
            elif spec.dtype != dtype or spec.rank != rank:
                problems.append(
                    f"{role} model {model!r} {direction} {name!r} is {spec.dtype}[rank {spec.rank}], "
                    f"expected {dtype}[rank {rank}]"
                )
    return problems


def is_cache_aware(encoder: ModelMetadata) -> bool:
    """A cache-aware encoder has a `cache_last_channel` input, or state where the backend keeps it."""
    return encoder.input("cache_last_channel") is not None or "cache_last_channel" in encoder.states


def _find(specs: tuple[TensorSpec, ...], names: tuple[str, ...]) -> TensorSpec | None:
    return next((spec for name in names for spec in specs if spec.name == name), None)


def _check_cache_aware(model: str, metadata: ModelMetadata) -> list[str]:
    problems = []
    for direction, table, specs in (
        ("input", CACHE_AWARE_INPUTS, metadata.inputs),
        ("output", CACHE_AWARE_OUTPUTS, metadata.outputs),
    ):
        for names, dtype, ranks in table.values():
            spec = _find(specs, names)
            if spec is None:
                problems.append(
                    f"cache-aware encoder {model!r} has no {direction} {' or '.join(map(repr, names))}"
                )
            elif spec.dtype != dtype or spec.rank not in ranks or (spec.rank == 2 and spec.shape[1] != 1):
                expected = " or ".join(f"rank {r}" for r in ranks)
                problems.append(
                    f"cache-aware encoder {model!r} {direction} {spec.name!r} is "
                    f"{spec.dtype}{list(spec.shape)}, expected {dtype}[{expected}]"
                )
    kept_by_backend = bool(metadata.states)
    for cache, (next_names, rank) in CACHES.items():
        if kept_by_backend:
            if cache not in metadata.states:
                problems.append(f"cache-aware encoder {model!r} keeps state but not {cache!r}")
            continue
        for direction, spec in (
            ("input", metadata.input(cache)),
            ("output", _find(metadata.outputs, next_names)),
        ):
            name = cache if direction == "input" else " or ".join(map(repr, next_names))
            if spec is None:
                problems.append(f"cache-aware encoder {model!r} has no {direction} {name}")
            elif spec.rank != rank or spec.dtype not in (F32, I64, I32):
                problems.append(
                    f"cache-aware encoder {model!r} {direction} {spec.name!r} is "
                    f"{spec.dtype}[rank {spec.rank}], expected rank {rank}"
                )
    return problems


def _cache_tensor(metadata: ModelMetadata, cache: str, prefix: str) -> CacheTensor:
    """A cache's shape for one stream; its batch axis is the dynamic one of the first two (or, in an
    export with a fixed batch, the one of size 1; for batch 1 both layouts are then the same)."""
    spec = _require(metadata, "input", cache)
    next_spec = _find(metadata.outputs, CACHES[cache][0])
    assert next_spec is not None  # checked by _check_cache_aware
    if next_spec.dtype != spec.dtype:
        raise ModelSetError(f"{prefix}: {cache} is {spec.dtype} but {next_spec.name} is {next_spec.dtype}")
    shape = list(spec.shape)
    axes = (0,) if len(shape) == 1 else (1, 0)  # NeMo's [L, B, ...] first
    dynamic = [axis for axis in axes if shape[axis] < 1]
    ones = [axis for axis in axes if shape[axis] == 1]
    if len(dynamic) > 1 or not (dynamic or ones):
        raise ModelSetError(
            f"{prefix}: {cache} {spec.shape}: cannot tell its batch axis (one of the first two, dynamic or 1)"
        )
    batch_axis = (dynamic or ones)[0]
    shape[batch_axis] = 1
    if any(size < 1 for size in shape):
        raise ModelSetError(f"{prefix}: {cache} {spec.shape} must be fixed in every axis but the batch")
    return CacheTensor(cache, next_spec.name, tuple(shape), spec.dtype, batch_axis)


def _positive_property(metadata: ModelMetadata, key: str, configured: int | None, prefix: str) -> int | None:
    if configured is not None:
        return configured
    text = metadata.properties.get(key)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ModelSetError(f"{prefix}: the encoder's {key!r} is {text!r}, not a whole number") from None


def cache_aware_spec(config: ModelSetConfig, encoder: ModelMetadata, encoder_dim: int) -> CacheAwareSpec:
    """The validated streaming spec of a cache-aware encoder (its tensors already checked)."""
    prefix = f"model set {config.name!r}"
    signal = _find(encoder.inputs, CACHE_AWARE_INPUTS["signal"][0])
    length = _find(encoder.inputs, CACHE_AWARE_INPUTS["signal_length"][0])
    encoded = _find(encoder.outputs, CACHE_AWARE_OUTPUTS["encoded"][0])
    encoded_length = _find(encoder.outputs, CACHE_AWARE_OUTPUTS["encoded_length"][0])
    assert signal and length and encoded and encoded_length  # checked by _check_cache_aware
    chunk = _positive_property(encoder, "chunk_size", config.chunk_size, prefix)
    pre_encode = _positive_property(encoder, "pre_encode_cache_size", config.pre_encode_cache_size, prefix)
    subsampling = _positive_property(encoder, "subsampling_factor", None, prefix) or DEFAULT_SUBSAMPLING
    if chunk is None or pre_encode is None:
        raise ModelSetError(
            f"{prefix}: a cache-aware encoder needs its chunk and pre-encode cache sizes in mel frames: "
            "set chunk_size and pre_encode_cache_size in the model set (or in the encoder's metadata)"
        )
    caches: tuple[CacheTensor, ...] = ()
    if not encoder.states:
        caches = tuple(_cache_tensor(encoder, cache, prefix) for cache in CACHES)
        channel, time = caches[0].shape, caches[1].shape
        d_channel, d_time = channel[3], time[2]
        if d_channel != encoder_dim or d_time != encoder_dim:
            raise ModelSetError(
                f"{prefix}: cache_last_channel {channel} and cache_last_time {time} must have the "
                f"encoder's width {encoder_dim} (D) as their last and third axis"
            )
    try:
        return CacheAwareSpec(
            chunk_frames=chunk,
            pre_encode_frames=pre_encode,
            subsampling=subsampling,
            feature_size=_static(signal, 1, f"{prefix}: the encoder's feature size"),
            signal=signal.name,
            signal_length=length.name,
            length_shape=(1,) * length.rank,
            encoded=encoded.name,
            encoded_length=encoded_length.name,
            caches=caches,
            backend_state=bool(encoder.states),
        )
    except ValueError as exc:
        raise ModelSetError(f"{prefix}: {exc}") from exc


def _require(metadata: ModelMetadata, direction: Literal["input", "output"], name: str) -> TensorSpec:
    """A tensor that `_check_tensors` has already found; should it be missing, a clear error all the same."""
    spec = metadata.input(name) if direction == "input" else metadata.output(name)
    if spec is None:
        raise ModelSetError(f"model {metadata.name!r} has no {direction} {name!r}")
    return spec


def _static(spec: TensorSpec, axis: int, what: str) -> int:
    size = spec.shape[axis]
    if size < 1:
        raise ModelSetError(f"{what} ({spec.name!r} axis {axis}) must be a fixed size, got {spec.shape}")
    return size


def validate_model_set(
    config: ModelSetConfig, vocabulary: Vocabulary, metadata: dict[str, ModelMetadata]
) -> ModelSet:
    """Check names, dtypes and ranks of every tensor, then the dimensions that must agree.

    `metadata` maps each role to its model's metadata. RNN-T or TDT follows from the joint width:
    W = V is RNN-T, W > V is TDT with W - V durations (0, 1, 2, ... unless the config names them).
    """
    problems = [
        p for role, model in config.models.items() for p in _check_tensors(role, model, metadata[role])
    ]
    if problems:
        raise ModelSetError(f"model set {config.name!r} does not fit the contract: " + "; ".join(problems))
    prefix = f"model set {config.name!r}"
    pre, enc, joint = metadata["preprocessor"], metadata["encoder"], metadata["decoder_joint"]
    features = _require(pre, "output", "features").shape[1]
    cache_aware = is_cache_aware(enc)
    signal = _find(enc.inputs, CACHE_AWARE_INPUTS["signal"][0] if cache_aware else ("audio_signal",))
    encoded = _find(enc.outputs, CACHE_AWARE_OUTPUTS["encoded"][0] if cache_aware else ("outputs",))
    if signal is None or encoded is None:  # checked above; a clear error all the same
        raise ModelSetError(f"{prefix}: the encoder has no signal input or no encoded output")
    feature_size = _static(signal, 1, f"{prefix}: the encoder's feature size")
    if features > 0 and features != feature_size:
        raise ModelSetError(
            f"{prefix}: the preprocessor makes {features} features, the encoder wants {feature_size}"
        )
    encoder_dim = _static(encoded, 1, f"{prefix}: the encoder's output size")
    joint_dim = _require(joint, "input", "encoder_outputs").shape[1]
    if joint_dim > 0 and joint_dim != encoder_dim:
        raise ModelSetError(
            f"{prefix}: the encoder outputs {encoder_dim} values a frame, decoder_joint wants {joint_dim}"
        )
    state_1 = _require(joint, "input", "input_states_1")
    state_2 = _require(joint, "input", "input_states_2")
    layers = _static(state_1, 0, f"{prefix}: the LSTM layer count")
    hidden = _static(state_1, 2, f"{prefix}: the LSTM state size")
    if state_2.shape[0] not in (-1, layers) or state_2.shape[2] not in (-1, hidden):
        raise ModelSetError(
            f"{prefix}: input_states_1 {state_1.shape} and input_states_2 {state_2.shape} differ"
        )
    width = _static(_require(joint, "output", "outputs"), 3, f"{prefix}: the joint width")
    size = vocabulary.size
    if width < size:
        raise ModelSetError(
            f"{prefix}: the vocabulary has {size} entries (blank included) but the joint only {width} outputs"
        )
    if width == size:
        if config.durations:
            raise ModelSetError(
                f"{prefix}: durations are configured but the joint width {width} equals V (RNN-T)"
            )
        spec = DecodingSpec("rnnt", vocabulary.blank, size, (), config.max_symbols_per_step)
    else:
        durations = config.durations or tuple(range(width - size))
        if len(durations) != width - size:
            raise ModelSetError(
                f"{prefix}: the joint width {width} = V {size} + {width - size} durations, "
                f"but {len(durations)} durations are configured"
            )
        spec = DecodingSpec("tdt", vocabulary.blank, size, tuple(durations), config.max_symbols_per_step)
    streaming = cache_aware_spec(config, enc, encoder_dim) if cache_aware else None
    return ModelSet(
        config=config,
        vocabulary=vocabulary,
        decoding=spec,
        feature_size=feature_size,
        encoder_dim=encoder_dim,
        state_layers=layers,
        state_hidden=hidden,
        subsampling=streaming.subsampling if streaming else DEFAULT_SUBSAMPLING,
        cache_aware=streaming,
    )
