"""The Triton backend: models run by a Triton Inference Server, over HTTP with `tritonclient.http`.

Threads. `tritonclient.http.InferenceServerClient` is built on geventhttpclient: its sockets and
connection pool belong to the gevent hub of the OS thread that created the client, and using it from
any other thread fails with `greenlet.error: Cannot switch to a different thread` (even one call at
a time; see `tests/test_triton.py::test_tritonclient_is_bound_to_its_thread`). So every worker
thread gets its own client, made lazily and kept in a `threading.local`; trio reuses its worker
threads, so connections are reused across calls. A client whose connection failed or timed out is
thrown away and made afresh on the next call.

Timeouts. The per-call `timeout` argument of `infer` is only honoured by Triton's dynamic batcher,
so it bounds nothing here. What does bound a call is geventhttpclient's `network_timeout` (every
socket read and write) and `connection_timeout` (connect), both set to the inference timeout: a
hung server (SIGSTOPped) or a slow model raises `TimeoutError` after that long. On top of that the
trio side waits at most `inference_timeout + grace` (`trio.fail_after`, `abandon_on_cancel=True`),
as a hard bound; an abandoned thread keeps its limiter token until it really ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import trio

from amira.core.endpoints import parse_endpoint
from amira.core.errors import BackendError, BackendFailure, BackendTimeout, BackendUnavailable
from amira.core.tensors import ModelMetadata, SequenceFlags, TensorSpec

T = TypeVar("T")

# Triton datatypes (metadata and infer protocol) <-> numpy
TRITON_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_TRITON: dict[np.dtype[Any], str] = {dtype: name for name, dtype in TRITON_TO_NUMPY.items()}

_UNAVAILABLE_MARKERS = ("unknown model", "not found", "not ready", "unavailable", "is not loaded")
# A sequence call that the server no longer knows (Triton restarted, or the state expired): the state
# is gone, and the stream cannot go on; it is the backend that went away, not the request.
_LOST_SEQUENCE_MARKERS = ("must specify the start flag", "sequence state is gone")
SEQUENCE_STATE_PARAMETER = "sequence_state"  # a stateful Python model's own list of the states it keeps


def sequence_states(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The inputs a model's sequence batcher keeps per sequence: its implicit state, or the states a
    stateful model keeps itself (`parameters { key: "sequence_state" }`, comma-separated)."""
    batching = config.get("sequence_batching")
    if not batching:
        return ()
    states = tuple(str(state["input_name"]) for state in batching.get("state", ()))
    own = config.get("parameters", {}).get(SEQUENCE_STATE_PARAMETER, {}).get("string_value", "")
    return states or tuple(name.strip() for name in own.split(",") if name.strip())


def _is_timeout(error: BaseException) -> bool:
    if isinstance(error, TimeoutError | socket.timeout):
        return True
    try:
        import gevent

        return isinstance(error, gevent.Timeout)
    except ImportError:  # pragma: no cover
        return False


class TritonBackend:
    """Runs models on a Triton server over HTTP; every call in a trio worker thread under `limiter`.

    `url` is Triton's HTTP endpoint (`http://host:8000`); `inference_timeout` bounds every call
    (`INFERENCE_TIMEOUT_SECS`); `metadata_limiter` caps the threads of metadata and readiness calls.
    """

    kind = "triton"

    def __init__(
        self,
        url: str,
        inference_timeout: float = 5.0,
        *,
        connection_timeout: float | None = None,
        grace: float = 1.0,
        metadata_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if inference_timeout <= 0:
            raise ValueError(f"inference_timeout must be positive, got {inference_timeout}")
        self.url = url
        self._endpoint, self._ssl = parse_endpoint(url)
        self.inference_timeout = float(inference_timeout)
        self.connection_timeout = float(connection_timeout or inference_timeout)
        self.grace = grace
        self._metadata_limiter = metadata_limiter or trio.CapacityLimiter(4)
        self._local = threading.local()
        self._closed = False
        self._clients_made = 0  # for tests and metrics: how many thread clients were ever made

    # -- one client per OS thread -----------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as triton_http

            client = triton_http.InferenceServerClient(
                self._endpoint,
                ssl=self._ssl,
                concurrency=1,
                connection_timeout=self.connection_timeout,
                network_timeout=self.inference_timeout,
            )
            self._local.client = client
            self._clients_made += 1
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is gone anyway
                client.close()

    def _in_thread(self, action: Callable[[Any], T], what: str) -> T:
        """Run `action(client)` in this worker thread; map every failure to a `BackendFailure`."""
        from geventhttpclient.response import HTTPParseError
        from tritonclient.utils import InferenceServerException

        try:
            return action(self._client())
        except BackendFailure:
            raise
        except InferenceServerException as error:
            message = error.message() or str(error)
            status = error.status()
            text = f"{what}: Triton answered {status or 'an error'}: {message}"
            lowered = message.lower()
            if any(marker in lowered for marker in _LOST_SEQUENCE_MARKERS):
                raise BackendUnavailable(f"{text} (the stream's encoder state is gone)") from None
            if status in ("404", "503") or any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
                raise BackendUnavailable(text) from None
            raise BackendError(text) from None
        except BaseException as error:
            if not isinstance(error, Exception) and not _is_timeout(error):
                raise  # KeyboardInterrupt, SystemExit
            self._drop_client()
            if _is_timeout(error):
                raise BackendTimeout(
                    f"{what}: no answer from Triton within {self.inference_timeout} s"
                ) from None
            if isinstance(error, OSError | HTTPParseError | ConnectionError):
                raise BackendUnavailable(f"{what}: Triton at {self.url} unreachable: {error!r}") from None
            raise BackendError(f"{what}: {type(error).__name__}: {error}") from None

    async def _call(self, action: Callable[[Any], T], what: str, limiter: trio.CapacityLimiter) -> T:
        if self._closed:
            raise BackendUnavailable(f"{what}: the Triton backend is closed")
        try:
            with trio.fail_after(self.inference_timeout + self.grace):
                return await trio.to_thread.run_sync(
                    self._in_thread, action, what, limiter=limiter, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise BackendTimeout(f"{what}: no answer from Triton within {self.inference_timeout} s") from None

    # -- the Backend protocol ---------------------------------------------------------------------

    async def model_metadata(self, model: str) -> ModelMetadata:
        raw = await self._call(
            lambda client: client.get_model_metadata(model), f"metadata of {model!r}", self._metadata_limiter
        )

        def specs(entries: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
            result = []
            for entry in entries:
                datatype = entry["datatype"]
                if datatype not in TRITON_TO_NUMPY:
                    raise BackendError(
                        f"model {model!r}: tensor {entry['name']!r} has unsupported type {datatype}"
                    )
                result.append(
                    TensorSpec(
                        entry["name"], TRITON_TO_NUMPY[datatype], tuple(int(d) for d in entry["shape"])
                    )
                )
            return tuple(result)

        config = await self.model_config(model)
        parameters = config.get("parameters", {})
        return ModelMetadata(
            name=raw.get("name", model),
            inputs=specs(raw.get("inputs", ())),
            outputs=specs(raw.get("outputs", ())),
            properties={
                key: str(value.get("string_value", ""))
                for key, value in parameters.items()
                if isinstance(value, Mapping)
            },
            states=sequence_states(config),
        )

    async def model_config(self, model: str) -> dict[str, Any]:
        """The model's configuration as Triton reports it (`max_batch_size`, `parameters`, ...)."""
        return await self._call(
            lambda client: client.get_model_config(model), f"config of {model!r}", self._metadata_limiter
        )

    async def is_model_ready(self, model: str) -> bool:
        """True when Triton answers and has `model` ready; False on any failure, never raises."""
        try:
            return bool(
                await self._call(
                    lambda client: client.is_model_ready(model),
                    f"readiness of {model!r}",
                    self._metadata_limiter,
                )
            )
        except BackendFailure:
            return False

    async def ready_models(self) -> set[str]:
        """The models Triton has ready (its repository index, one call); raises `BackendFailure`."""
        index = await self._call(
            lambda client: client.get_model_repository_index(), "model index", self._metadata_limiter
        )
        return {entry["name"] for entry in index if entry.get("state") == "READY"}

    async def is_server_ready(self) -> bool:
        try:
            return bool(
                await self._call(
                    lambda client: client.is_server_ready(), "server readiness", self._metadata_limiter
                )
            )
        except BackendFailure:
            return False

    def _request(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> Callable[[Any], dict[str, npt.NDArray[Any]]]:
        """The inference call as an action on a thread's client."""
        import tritonclient.http as triton_http

        request_inputs = []
        for name, value in inputs.items():
            array = np.ascontiguousarray(value)
            datatype = NUMPY_TO_TRITON.get(array.dtype)
            if datatype is None:
                raise BackendError(f"input {name!r} of {model!r}: unsupported dtype {array.dtype}")
            tensor = triton_http.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            request_inputs.append(tensor)
        requested = [triton_http.InferRequestedOutput(name, binary_data=True) for name in outputs]

        flags: dict[str, Any] = {}
        if sequence is not None:
            flags = {
                "sequence_id": sequence.id,
                "sequence_start": sequence.start,
                "sequence_end": sequence.end,
            }
        if parameters:
            flags["parameters"] = dict(parameters)

        def run(client: Any) -> dict[str, npt.NDArray[Any]]:
            result = client.infer(model, request_inputs, outputs=requested, **flags)
            arrays = {}
            for name in outputs:
                array = result.as_numpy(name)
                if array is None:
                    raise BackendError(f"{model!r} returned no output {name!r}")
                arrays[name] = np.array(array)  # a writable copy: as_numpy views the response buffer
            return arrays

        return run

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        what = f"inference on {model!r}" if sequence is None else f"inference on {model!r} (sequence)"
        return await self._call(self._request(model, inputs, outputs, sequence, parameters), what, limiter)

    def infer_blocking(
        self, model: str, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """One call from a `run_blocking` thread, on that thread's client; bounded by the socket timeouts."""
        return self._in_thread(self._request(model, inputs, outputs), f"inference on {model!r}")

    async def run_blocking(self, work: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        """`work` in one worker thread, never abandoned: it may hold state that the caller owns. Each of
        its calls is bounded by the socket timeouts, and it stops at the next call when cancelled."""
        if self._closed:
            raise BackendUnavailable("the Triton backend is closed")
        return await trio.to_thread.run_sync(work, limiter=limiter)

    async def aclose(self) -> None:
        """Refuse further calls. Clients of other threads close when their (idle) threads end."""
        self._closed = True
        self._drop_client()
