"""The one interface every inference engine implements, and the failures it may raise.

A backend knows nothing about speech: it runs named models on named numpy tensors. The
recogniser above it owns decoding, and the server maps the exceptions below to `error_type`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs
import numpy as np
import trio


@attrs.frozen
class TensorSpec:
    """One input or output of a model; `-1` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
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


class BackendFailure(Exception):
    """Base of the failures a backend call may end in; `error_type` is the API's name for it."""

    error_type = "backend_error"


class BackendUnavailable(BackendFailure):
    """The engine cannot be reached, or the model is not loaded or not ready."""

    error_type = "backend_unavailable"


class BackendError(BackendFailure):
    """The engine answered, with an error."""

    error_type = "backend_error"


class BackendTimeout(BackendFailure):
    """The call took longer than the inference timeout."""

    error_type = "timeout"


class Backend(Protocol):
    """An inference engine: Triton over HTTP, or onnxruntime in this process.

    `limiter` is the capacity limiter of the caller's kind of work (streams or batches): the worker
    thread that runs the call is taken under it, so a cap on concurrent work is a cap on threads.
    """

    kind: str

    async def model_metadata(self, model: str) -> ModelMetadata: ...

    async def is_model_ready(self, model: str) -> bool: ...

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
    ) -> dict[str, np.ndarray]: ...

    async def aclose(self) -> None: ...
