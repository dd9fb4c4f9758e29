"""The embedded backend: onnxruntime in this process, on the same model repository Triton serves.

It makes the server work out of the box with no Triton. `InferenceSession.run` is safe to call
from several threads at once, so one session per model serves every worker thread. Calls are not
given the inference timeout: a local computation cannot hang on a network, and a worker thread
cannot be cancelled, only abandoned, which would leave work running that nobody owns.

At most `max_running_calls` calls (`INFERENCE_THREADS`, default the usable cores) run at once;
the others wait in trio, first come first served. More threads than cores would not finish the work
sooner, only share the cores (and the GIL) with the event loop: with 200 streams on 2 cores and
a thread per stream's call, the loop woke up to 175 ms late, against 45 ms with the cap, in the
same A/B run (`bench.stream --streams 200`, README "Benchmarks", "Hundreds of streams").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime
import trio
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from amira.core.errors import BackendError, BackendUnavailable
from amira.core.tensors import ModelMetadata, SequenceFlags, TensorSpec
from amira.models import model_file

T = TypeVar("T")

ONNX_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(bool)": np.dtype(np.bool_),
}


# onnxruntime's own exceptions derive from Exception directly, one class per status code.
ORT_ERRORS = tuple(
    getattr(ort_state, name)
    for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail",
    )
    if hasattr(ort_state, name)
)  # fmt: skip


def _tensor_spec(arg: onnxruntime.NodeArg) -> TensorSpec:
    dtype = ONNX_DTYPES.get(arg.type, np.dtype(object))
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class EmbeddedBackend:
    kind = "embedded"

    def __init__(
        self, repository: Path, intra_op_threads: int = 1, max_running_calls: int | None = None
    ) -> None:
        self.repository = repository
        self._intra_op_threads = intra_op_threads
        self.max_running_calls = max_running_calls or usable_cores()
        self._running = trio.CapacityLimiter(self.max_running_calls)
        self._sessions: dict[str, onnxruntime.InferenceSession] = {}

    def _session(self, model: str) -> onnxruntime.InferenceSession:
        session = self._sessions.get(model)
        if session is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._intra_op_threads
            options.inter_op_num_threads = 1
            try:
                path = model_file(self.repository, model)
                session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except (OSError, ValueError, *ORT_ERRORS) as exc:
                raise BackendUnavailable(
                    f"model {model!r} cannot be loaded from {self.repository}: {exc}"
                ) from exc
            self._sessions[model] = session
        return session

    async def model_metadata(self, model: str) -> ModelMetadata:
        session = await trio.to_thread.run_sync(self._session, model)
        return ModelMetadata(
            model,
            tuple(_tensor_spec(a) for a in session.get_inputs()),
            tuple(_tensor_spec(a) for a in session.get_outputs()),
            dict(session.get_modelmeta().custom_metadata_map),
        )

    async def is_model_ready(self, model: str) -> bool:
        try:
            await trio.to_thread.run_sync(self._session, model)
        except BackendUnavailable:
            return False
        return True

    def infer_blocking(
        self, model: str, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        session = self._session(model)
        try:
            results = session.run(list(outputs), dict(inputs))
        except ORT_ERRORS as exc:
            raise BackendError(f"model {model!r} failed: {exc}") from exc
        return dict(zip(outputs, results, strict=True))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        if sequence is not None:
            raise BackendError(f"model {model!r}: the embedded backend keeps no sequence state")
        if parameters:
            raise BackendError(f"model {model!r}: the embedded backend takes no request parameters")
        async with self._running:
            return await trio.to_thread.run_sync(self.infer_blocking, model, inputs, outputs, limiter=limiter)

    async def run_blocking(self, work: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        async with self._running:
            return await trio.to_thread.run_sync(work, limiter=limiter)

    async def aclose(self) -> None:
        self._sessions.clear()
