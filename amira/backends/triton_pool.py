"""Several Triton endpoints behind one backend: health, least-loaded routing, failover, a bounded queue.

`TRITON_ENDPOINT` may name several Triton servers (one per GPU or node). Every call is pure (the
decoder state lives in AMIRA, the models keep none), so any endpoint can answer any call:

* **Health.** Each endpoint has a watcher task, owned by the nursery of `TritonPool.run` (which the
  engine runs for as long as it serves). An endpoint gets calls only while it is `HEALTHY`: Triton
  answers, every model of every configured model set is ready on it (its repository index, one
  call), and those models have the same tensors as on the other endpoints (their metadata, compared
  when the endpoint comes in). A healthy endpoint is probed every `probe_interval`; one that fails a
  probe, or a call (unreachable, connection lost, model not ready), is taken out at once (`DOWN`)
  and probed back with backoff (`FIRST_BACKOFF` doubling up to `max_backoff`), so a restarted Triton
  takes calls again within a few seconds.
* **Routing.** A call goes to the healthy endpoint with the fewest calls in flight (ties: the one
  picked least recently), and at most `max_calls_per_endpoint` calls are in flight on one endpoint.
  Calls beyond that wait in AMIRA, first come first served, for at most the inference timeout: that
  wait is the *queue*, whose length `/metrics` shows and which admission bounds
  (`check_admission`, `MAX_QUEUED_CALLS`).
* **Failover.** A call that fails because its endpoint became unavailable is retried at once on
  another healthy endpoint, so losing one Triton of several loses no call. A timeout is not retried
  (the call's time is spent; a hung endpoint fails its next probe) and an error that Triton answered
  is not either (any endpoint would answer the same).
* **Pinned sequences.** A call of a stateful model's sequence (a cache-aware encoder whose caches
  Triton keeps: `SequenceFlags`) is not pure. Its start call is routed like any call (and fails over
  like one: no state exists yet); the sequence is then pinned to the endpoint that took it, and its
  later calls go there at once, outside the queue (a stream makes one at a time). When that endpoint
  fails or loses the state (restart), the sequence cannot go on anywhere else: the call raises
  `BackendUnavailable` and the stream ends with `backend_unavailable` (AMIRA does not replay a
  stream's audio into a new sequence). The end call unpins it, whatever its outcome.

Threads. Calls come from trio (`infer`, each in a worker thread of its own) and from worker threads
that make many calls in a row (`infer_blocking`: a span's thread, a batching scheduler's thread).
The endpoints' bookkeeping (calls in flight, health) is kept under one lock, so that a worker thread
takes a free endpoint, gives it back and takes a failed one out without a hand-off to the event
loop; only waiting for a free endpoint (the queue, trio events) and waking a watcher happen on the
trio thread (`trio.from_thread`, or `run_sync_soon` when nothing waits for the answer).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import numpy.typing as npt
import trio

from amira.backends.triton import TritonBackend
from amira.core.errors import (
    BackendError,
    BackendFailure,
    BackendTimeout,
    BackendUnavailable,
    CapacityExceeded,
    NoHealthyEndpoint,
)
from amira.core.tensors import ModelMetadata, SequenceFlags

T = TypeVar("T")
log = logging.getLogger("amira.backends.triton_pool")

FIRST_BACKOFF = 0.25  # seconds before the first probe of an endpoint that was taken out
PROBE_TIMEOUT = 2.0  # a probe slower than this (or than the inference timeout) fails
LATENCY_WEIGHT = 0.2  # of the newest call, in the moving average of an endpoint's call latency


class EndpointState(enum.Enum):
    PROBING = "probing"  # not probed yet: gets no calls
    HEALTHY = "healthy"  # answers, every model ready, the same models as the others: gets calls
    DOWN = "down"  # failed a call or a probe: gets no calls, probed back with backoff


@attrs.define(eq=False)
class Endpoint:
    """One Triton server of the pool and what the pool knows about it."""

    url: str
    backend: TritonBackend
    state: EndpointState = EndpointState.PROBING
    reason: str = "not probed yet"  # why it is not healthy (the last failure)
    in_flight: int = 0
    calls: int = 0  # answered calls
    failures: int = 0  # times a call or a probe took it out
    latency: float | None = None  # moving average of its calls' seconds
    last_pick: int = 0
    generation: int = 0  # bumped when it is taken out: a probe begun before does not bring it back
    wake: trio.Event = attrs.field(factory=trio.Event)  # set: its watcher probes now

    def health(self) -> dict[str, Any]:
        """What `/ready` shows of it."""
        report: dict[str, Any] = {"url": self.url, "state": self.state.value, "in_flight": self.in_flight}
        if self.latency is not None:
            report["latency_ms"] = round(self.latency * 1000, 2)
        if self.state is not EndpointState.HEALTHY:
            report["reason"] = self.reason
        return report


@attrs.define(eq=False)
class _Waiter:
    """A call waiting for a free endpoint; the pool hands it one (or a failure) and sets `ready`."""

    ready: trio.Event = attrs.field(factory=trio.Event)
    endpoint: Endpoint | None = None
    failure: str = ""


class TritonPool:
    """The `Backend` over one or more Triton endpoints; serves only while `run` runs.

    `models` are the models that must be ready on an endpoint before it gets calls: every model of
    every configured model set.
    """

    kind = "triton"

    def __init__(
        self,
        urls: Sequence[str],
        models: Iterable[str],
        *,
        inference_timeout: float = 5.0,
        max_calls_per_endpoint: int = 32,
        max_queued_calls: int = 100,
        probe_interval: float = 1.0,
        max_backoff: float = 2.0,
    ) -> None:
        if not urls:
            raise ValueError("a Triton pool needs at least one endpoint")
        if max_calls_per_endpoint < 1 or max_queued_calls < 0:
            raise ValueError("max_calls_per_endpoint must be at least 1, max_queued_calls at least 0")
        self.endpoints = [Endpoint(url, TritonBackend(url, inference_timeout)) for url in urls]
        self.models = frozenset(models)
        self.inference_timeout = inference_timeout
        self.max_calls_per_endpoint = max_calls_per_endpoint
        self.max_queued_calls = max_queued_calls
        self.probe_interval = probe_interval
        self.max_backoff = max_backoff
        self.probe_timeout = min(PROBE_TIMEOUT, inference_timeout)
        self.on_call: Callable[[str, float], None] | None = None  # (endpoint url, seconds) per answered call
        self._reference: dict[str, ModelMetadata] = {}  # each model's tensors, as the first endpoint has them
        self.failovers = 0  # calls retried on another endpoint after theirs failed
        self._lock = threading.Lock()  # over the endpoints' state, in flight counts and `failovers`
        self._waiters: collections.deque[_Waiter] = collections.deque()  # the trio thread's only
        self._picks = itertools.count(1)
        self._pins: dict[int, Endpoint] = {}  # an open sequence's id: the endpoint that keeps its state
        self._token: trio.lowlevel.TrioToken | None = None  # set while running
        self._running = False
        self._closed = False

    # -- what the server reads -----------------------------------------------------------------------

    @property
    def healthy(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.state is EndpointState.HEALTHY]

    @property
    def queued(self) -> int:
        """Calls waiting for a free endpoint."""
        return len(self._waiters)

    def health(self) -> list[dict[str, Any]]:
        return [endpoint.health() for endpoint in self.endpoints]

    def require(self, model: str) -> None:
        """From now on, `model` too must be ready on an endpoint for it to take calls (the engine
        found it on every healthy endpoint, and uses it: a Triton decode model)."""
        self.models = self.models | {model}

    def check_admission(self) -> None:
        """Refuse new work at once when no endpoint is healthy or the queue is over its bound."""
        if not self.healthy:
            raise NoHealthyEndpoint(
                f"no Triton endpoint is healthy (0 of {len(self.endpoints)}; /ready says why); retry shortly"
            )
        if self.queued > self.max_queued_calls:
            raise CapacityExceeded(
                f"{self.queued} inference calls are queued (more than {self.max_queued_calls}); retry shortly"
            )

    # -- the watchers --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch every endpoint until cancelled; started once each has had its first probe."""
        if self._running:
            raise RuntimeError("the Triton pool is running already")
        self._running = True
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                async with trio.open_nursery() as starting:
                    for endpoint in self.endpoints:
                        starting.start_soon(nursery.start, self._watch, endpoint)
                task_status.started()
        finally:
            self._running = False
            self._dispatch()

    async def _watch(
        self, endpoint: Endpoint, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._probe_and_apply(endpoint)
        task_status.started()
        backoff = FIRST_BACKOFF
        while True:
            if endpoint.state is EndpointState.HEALTHY:
                backoff, delay = FIRST_BACKOFF, self.probe_interval
            else:
                delay, backoff = backoff, min(2 * backoff, self.max_backoff)
            with trio.move_on_after(delay):
                await endpoint.wake.wait()
            await self._probe_and_apply(endpoint)

    async def _probe_and_apply(self, endpoint: Endpoint) -> None:
        endpoint.wake = trio.Event()
        generation = endpoint.generation
        failure = await self._probe(endpoint)
        if generation != endpoint.generation:
            return  # a call took it out meanwhile: that is newer news
        if failure is None:
            self._bring_in(endpoint)
        else:
            self._take_out(endpoint, failure)

    async def _probe(self, endpoint: Endpoint) -> str | None:
        """Why `endpoint` cannot take calls, or None when it can."""
        try:
            with trio.fail_after(self.probe_timeout):
                missing = self.models - await endpoint.backend.ready_models()
                if missing:
                    return f"models not ready: {', '.join(sorted(missing))}"
                if endpoint.state is not EndpointState.HEALTHY:
                    return await self._compare_models(endpoint)
        except BackendFailure as exc:
            return str(exc)
        except trio.TooSlowError:
            return f"no answer to the readiness probe within {self.probe_timeout:g} s"
        return None

    async def _compare_models(self, endpoint: Endpoint) -> str | None:
        """An endpoint serving other tensors than the rest (another model version) must not take calls."""
        for model in sorted(self.models):
            metadata = await endpoint.backend.model_metadata(model)
            reference = self._reference.setdefault(model, metadata)
            if metadata != reference:
                return f"model {model!r} has other tensors than on the other endpoints: {metadata}"
        return None

    def _bring_in(self, endpoint: Endpoint) -> None:
        with self._lock:
            if endpoint.state is EndpointState.HEALTHY:
                return
            endpoint.state, endpoint.reason = EndpointState.HEALTHY, ""
        log.info("Triton endpoint %s is healthy: it takes calls", endpoint.url)
        self._dispatch()

    def _mark_down(self, endpoint: Endpoint, reason: str) -> None:
        """Stop sending calls to `endpoint` (any thread); its watcher probes it back."""
        with self._lock:
            endpoint.reason = reason
            if endpoint.state is EndpointState.DOWN:
                return
            was = endpoint.state
            if was is EndpointState.HEALTHY:
                endpoint.failures += 1
            endpoint.state = EndpointState.DOWN
            endpoint.generation += 1
        log.warning(
            "Triton endpoint %s is %s: %s",
            endpoint.url,
            "taken out" if was is EndpointState.HEALTHY else "down",
            reason,
        )

    def _take_out(self, endpoint: Endpoint, reason: str) -> None:
        self._mark_down(endpoint, reason)
        self._dispatch()

    def _failed(self, endpoint: Endpoint, reason: str) -> None:
        """A call found `endpoint` unavailable: out at once."""
        self._mark_down(endpoint, reason)
        self._after_failure(endpoint)

    def _after_failure(self, endpoint: Endpoint) -> None:
        """(trio thread) Its backoff starts now, not at its next periodic probe; waiting calls learn
        whether any endpoint is left."""
        endpoint.wake.set()
        self._dispatch()

    # -- routing -------------------------------------------------------------------------------------

    def describe(self) -> str:
        """Each endpoint's state, and why it is not healthy, in a line."""
        return "; ".join(
            f"{e.url}: {e.state.value}" + (f" ({e.reason})" if e.reason else "") for e in self.endpoints
        )

    def _take_free(self) -> Endpoint | None:
        """A slot on the healthy endpoint with the fewest calls in flight (ties: the one picked least
        recently), or None when none has a free slot."""
        with self._lock:
            free = [
                e
                for e in self.endpoints
                if e.state is EndpointState.HEALTHY and e.in_flight < self.max_calls_per_endpoint
            ]
            endpoint = min(free, key=lambda e: (e.in_flight, e.last_pick), default=None)
            if endpoint is not None:
                endpoint.in_flight += 1
                endpoint.last_pick = next(self._picks)
            return endpoint

    def _give_back(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1

    def _dispatch(self) -> None:
        """(trio thread) Hand free endpoints to waiting calls, in order; fail them all when no
        endpoint is healthy."""
        while self._waiters and (endpoint := self._take_free()) is not None:
            waiter = self._waiters.popleft()
            waiter.endpoint = endpoint
            waiter.ready.set()
        if self._waiters and not (self._running and self.healthy):
            failure = f"no Triton endpoint is healthy ({self.describe()})"
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.failure = failure
                waiter.ready.set()

    def _release(self, endpoint: Endpoint) -> None:
        self._give_back(endpoint)
        self._dispatch()

    def _soon(self, action: Callable[..., object], *args: object) -> None:
        """From a worker thread: run `action` on the trio thread, without waiting for it."""
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # the engine stopped: nothing to tell
                self._token.run_sync_soon(action, *args)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise BackendUnavailable(f"{what}: the Triton backend is closed")
        if not self._running:
            raise BackendUnavailable(f"{what}: the Triton pool is not running (Engine.run)")

    async def _acquire(self, what: str) -> Endpoint:
        """(trio thread) A slot on the best endpoint: at once when one is free, else after the calls
        queued before."""
        self._check_open(what)
        if not self._waiters and (endpoint := self._take_free()) is not None:
            return endpoint
        if not self.healthy:
            raise BackendUnavailable(f"{what}: no Triton endpoint is healthy ({self.describe()})")
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            with trio.move_on_after(self.inference_timeout):
                await waiter.ready.wait()
        except BaseException:
            self._abandon(waiter)
            raise
        if not waiter.ready.is_set():
            self._abandon(waiter)
            raise BackendTimeout(f"{what}: no Triton endpoint was free within {self.inference_timeout:g} s")
        if waiter.endpoint is None:
            raise BackendUnavailable(f"{what}: {waiter.failure}")
        return waiter.endpoint

    def _acquire_blocking(self, what: str) -> Endpoint:
        """(worker thread) `_acquire`, without a hand-off to the event loop when a slot is free."""
        self._check_open(what)
        if not self._waiters and (endpoint := self._take_free()) is not None:
            return endpoint
        return trio.from_thread.run(self._acquire, what)

    def _abandon(self, waiter: _Waiter) -> None:
        if not waiter.ready.is_set():
            self._waiters.remove(waiter)
        elif waiter.endpoint is not None:
            self._release(waiter.endpoint)

    async def _routed(self, what: str, call: Callable[[TritonBackend], Awaitable[T]]) -> T:
        """(trio thread) `call` on the best endpoint; on another at once when that one turns out
        unavailable."""
        failure: BackendUnavailable | None = None
        for _ in self.endpoints:
            try:
                endpoint = await self._acquire(what)
            except BackendUnavailable:
                if failure is None:
                    raise
                raise failure from None
            self._count_failover(failure)
            started = time.perf_counter()
            try:
                result = await call(endpoint.backend)
            except BackendUnavailable as exc:
                self._failed(endpoint, str(exc))
                failure = exc
                continue
            except BackendTimeout:
                endpoint.wake.set()  # hung, or only a slow call? its probe tells
                raise
            finally:
                self._release(endpoint)
            self._answered(endpoint, time.perf_counter() - started)
            return result
        assert failure is not None
        raise failure

    def _routed_blocking(self, what: str, call: Callable[[TritonBackend], T]) -> T:
        """(worker thread) `_routed`, the call made in this thread."""
        failure: BackendUnavailable | None = None
        for _ in self.endpoints:
            try:
                endpoint = self._acquire_blocking(what)
            except BackendUnavailable:
                if failure is None:
                    raise
                raise failure from None
            self._count_failover(failure)
            started = time.perf_counter()
            try:
                result = call(endpoint.backend)
            except BackendUnavailable as exc:
                self._mark_down(endpoint, str(exc))
                self._soon(self._after_failure, endpoint)
                failure = exc
                continue
            except BackendTimeout:
                self._soon(endpoint.wake.set)
                raise
            finally:
                self._give_back(endpoint)
                if self._waiters:
                    self._soon(self._dispatch)
            self._answered(endpoint, time.perf_counter() - started)
            return result
        assert failure is not None
        raise failure

    def _count_failover(self, failure: BackendUnavailable | None) -> None:
        if failure is not None:
            with self._lock:
                self.failovers += 1

    def _answered(self, endpoint: Endpoint, seconds: float) -> None:
        with self._lock:
            endpoint.calls += 1
            previous = endpoint.latency
            endpoint.latency = (
                seconds if previous is None else previous + LATENCY_WEIGHT * (seconds - previous)
            )
        if self.on_call is not None:
            self.on_call(endpoint.url, seconds)

    # -- the Backend protocol ------------------------------------------------------------------------

    async def model_metadata(self, model: str) -> ModelMetadata:
        return await self._routed(f"metadata of {model!r}", lambda backend: backend.model_metadata(model))

    async def is_model_ready(self, model: str) -> bool:
        """Whether some endpoint takes calls for `model`: for the models of the model sets, from the
        watchers' last probes (no call); for any other, every healthy endpoint is asked."""
        healthy = self.healthy
        if model in self.models or not healthy:
            return bool(healthy)
        return all([await endpoint.backend.is_model_ready(model) for endpoint in healthy])

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        what = f"inference on {model!r}"
        if sequence is None:
            return await self._routed(
                what, lambda backend: backend.infer(model, inputs, outputs, limiter, parameters=parameters)
            )
        if parameters:
            raise BackendError(f"{what}: a sequence call takes no request parameters")
        try:
            if sequence.start:
                return await self._routed(what, self._pinning(sequence, model, inputs, outputs, limiter))
            return await self._pinned_call(what, sequence, model, inputs, outputs, limiter)
        finally:
            if sequence.end:
                self._pins.pop(sequence.id, None)

    def _pinning(
        self,
        sequence: SequenceFlags,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
    ) -> Callable[[TritonBackend], Awaitable[dict[str, npt.NDArray[Any]]]]:
        """A sequence's start call that pins the sequence to whichever endpoint makes it."""

        def call(backend: TritonBackend) -> Awaitable[dict[str, npt.NDArray[Any]]]:
            self._pins[sequence.id] = next(e for e in self.endpoints if e.backend is backend)
            return backend.infer(model, inputs, outputs, limiter, sequence)

        return call

    async def _pinned_call(
        self,
        what: str,
        sequence: SequenceFlags,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
    ) -> dict[str, npt.NDArray[Any]]:
        """A later call of a sequence, on the endpoint that keeps its state."""
        self._check_open(what)
        endpoint = self._pins.get(sequence.id)
        if endpoint is None:
            raise BackendUnavailable(f"{what}: sequence {sequence.id} is not open on any Triton endpoint")
        if endpoint.state is not EndpointState.HEALTHY:
            self._pins.pop(sequence.id, None)
            raise BackendUnavailable(
                f"{what}: {endpoint.url}, which keeps this stream's encoder state, is {endpoint.state.value}"
            )
        with self._lock:
            endpoint.in_flight += 1
        started = time.perf_counter()
        try:
            result = await endpoint.backend.infer(model, inputs, outputs, limiter, sequence)
        except (BackendUnavailable, BackendTimeout):
            self._pins.pop(sequence.id, None)
            endpoint.wake.set()  # gone, or only this sequence's state? its probe tells
            raise
        finally:
            self._release(endpoint)
        self._answered(endpoint, time.perf_counter() - started)
        return result

    def infer_blocking(
        self, model: str, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """One call from a trio worker thread (`run_blocking`'s, or a batching scheduler's)."""
        return self._routed_blocking(
            f"inference on {model!r}", lambda backend: backend.infer_blocking(model, inputs, outputs)
        )

    async def run_blocking(self, work: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        """`work` in one worker thread, never abandoned (see `TritonBackend.run_blocking`); its calls
        (`infer_blocking`) are routed one by one."""
        self._check_open("a span of calls")
        return await trio.to_thread.run_sync(work, limiter=limiter)

    async def aclose(self) -> None:
        self._closed = True
        for endpoint in self.endpoints:
            await endpoint.backend.aclose()
