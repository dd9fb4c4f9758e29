"""What a backend says about a model's tensors: the input to model-set validation."""

from __future__ import annotations

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
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)
