"""The one interface every inference engine implements.

A backend knows nothing about speech: it runs named models on named numpy tensors. The engine
above it owns decoding; the failures a backend may raise are the `BackendFailure` branch of
`amira.core.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy.typing as npt
import trio

from amira.core.tensors import ModelMetadata, SequenceFlags

T = TypeVar("T")


class Backend(Protocol):
    """An inference engine: Triton over HTTP, or onnxruntime in this process.

    `limiter` is the capacity limiter of the caller's kind of work (streams or batches): the worker
    thread that runs the call is taken under it, so a cap on concurrent work is a cap on threads.

    `infer` is one call in one worker thread. A caller with many calls to make in a row (a decoder's
    span of `decoder_joint` calls) runs them in one thread instead: `run_blocking(work, limiter)`
    runs `work` in a worker thread, and `work` calls `infer_blocking`, which blocks that thread. The
    thread hand-off (about 150 us) then happens once per span, not once per emitted token.

    `sequence` makes `infer` a call of a stateful model's sequence (Triton's sequence batcher): its
    id and start/end flags go with the call. A backend that keeps no state (embedded) reports no
    `ModelMetadata.states` and refuses such calls. `parameters` are request parameters (Triton's
    `parameters` of an inference request: a decode model is told there which models to run a
    recording through); the embedded backend refuses them.
    """

    kind: str

    async def model_metadata(self, model: str) -> ModelMetadata: ...

    async def is_model_ready(self, model: str) -> bool: ...

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]: ...

    def infer_blocking(
        self, model: str, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]: ...

    async def run_blocking(self, work: Callable[[], T], limiter: trio.CapacityLimiter) -> T: ...

    async def aclose(self) -> None: ...
