"""Model sets: a preprocessor, encoder and decoder_joint triple with its vocabulary.

Everything about a model set is read from the backend's model metadata and checked against the
contract of `models-and-decoding.md` before a request is served: a server that starts with a
vocabulary or tensor that does not fit would otherwise fail, or worse, answer nonsense, later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

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

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> Literal["rnnt", "tdt"]:
        return self.decoding.kind

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
        }


def _check_tensors(role: str, model: str, metadata: ModelMetadata) -> list[str]:
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
    feature_size = _static(_require(enc, "input", "audio_signal"), 1, f"{prefix}: the encoder's feature size")
    if features > 0 and features != feature_size:
        raise ModelSetError(
            f"{prefix}: the preprocessor makes {features} features, the encoder wants {feature_size}"
        )
    encoder_dim = _static(_require(enc, "output", "outputs"), 1, f"{prefix}: the encoder's output size")
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
    return ModelSet(
        config=config,
        vocabulary=vocabulary,
        decoding=spec,
        feature_size=feature_size,
        encoder_dim=encoder_dim,
        state_layers=layers,
        state_hidden=hidden,
    )
