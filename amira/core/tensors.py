"""What a backend says about a model's tensors: the input to model-set validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np


@attrs.frozen
class TensorSpec:
    """One input or output of a model; `-1` marks a dynamic dimension."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


@attrs.frozen
class ModelMetadata:
    """A model's tensors, and what the backend says about it beside them.

    `properties` are the model's string key/values (an ONNX file's `metadata_props`, a Triton
    config's string `parameters`); `states` names the inputs the backend keeps per sequence (Triton's
    sequence batcher: implicit state, or a stateful model's own), which are then not in `inputs`.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    properties: Mapping[str, str] = attrs.field(factory=dict)
    states: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


@attrs.frozen
class SequenceFlags:
    """A call of a sequence (stateful) model: its sequence id and whether it starts or ends it."""

    id: int
    start: bool = False
    end: bool = False
