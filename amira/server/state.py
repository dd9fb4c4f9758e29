"""What the request handlers of one server share: the recogniser, admission, readiness and metrics."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from amira.core.errors import AmiraError, BackendFailure, CapacityExceeded
from amira.engine import Engine
from amira.recognizer import Recognizer
from amira.server.metrics import Metrics
from amira.settings import Settings

READY_CACHE_SECS = 1.0


def new_id() -> str:
    """A short random id for a request or stream, for logs and error messages."""
    return secrets.token_hex(5)


@attrs.frozen
class Admission:
    """The cap on one kind of work (`batch`, `stream`): admitted at once, or refused at once.

    Work never queues for a slot: past the cap the client is told `capacity_exceeded` (503 with
    `Retry-After`, close 1013) and retries, which keeps latency bounded under overload. Before the
    cap, `shed` may refuse it for the backend's sake (`Engine.check_admission`: no healthy Triton
    endpoint, or too many calls queued), answered the same way.
    """

    kind: str
    description: str  # "batch requests", "streams": for the refusal's message
    limiter: trio.CapacityLimiter
    metrics: Metrics
    shed: Callable[[], None]

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a slot for the `with` block; `CapacityExceeded` (or the `shed` check's error) when
        the work cannot be taken now."""
        try:
            self.shed()
        except AmiraError:
            self.metrics.rejected.labels(self.kind).inc()
            raise
        try:
            self.limiter.acquire_nowait()
        except trio.WouldBlock:
            self.metrics.rejected.labels(self.kind).inc()
            raise CapacityExceeded(
                f"more than {self.limiter.total_tokens} {self.description} at once; retry shortly"
            ) from None
        gauge = self.metrics.active_streams if self.kind == "stream" else self.metrics.active_batches
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
            self.limiter.release()


@attrs.define
class BodyBudget:
    """The bytes of request bodies held at once, all requests together (`BODY_BUFFER_BYTES`).

    A request with a declared length reserves all of it before its body is read; one without
    (chunked) reserves each chunk as it arrives. Past the budget the request is refused at once
    with `capacity_exceeded`, like a batch over `MAX_CONCURRENT_BATCHES`: it never waits holding
    part of what it needs. Without the budget, bodies arriving together (Quart buffers each one
    whole) could take gigabytes; with it, they take at most the budget.
    """

    total: int
    metrics: Metrics
    reserved: int = 0

    @contextmanager
    def hold(self) -> Iterator[BodyHold]:
        """A hold on the budget for one body; given back when the `with` block ends."""
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.reserved -= hold.size


@attrs.define
class BodyHold:
    budget: BodyBudget
    size: int = 0

    def grow(self, size: int) -> None:
        if self.budget.reserved + size > self.budget.total:
            self.budget.metrics.rejected.labels("body").inc()
            raise CapacityExceeded("too many request bodies are being received at once; retry shortly")
        self.budget.reserved += size
        self.size += size


@attrs.define
class PerKeyLimit:
    """Streams at once per API key (`MAX_STREAMS_PER_KEY`), so that one client's key cannot take
    every stream slot; keys are counted by their position in `API_KEYS`, never by their text."""

    limit: int | None
    metrics: Metrics
    counts: dict[int, int] = attrs.field(factory=dict)

    @contextmanager
    def admit(self, key: int | None) -> Iterator[None]:
        if key is None or self.limit is None:
            yield
            return
        if self.counts.get(key, 0) >= self.limit:
            self.metrics.rejected.labels("stream_per_key").inc()
            raise CapacityExceeded(f"more than {self.limit} streams at once with this API key; retry shortly")
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            yield
        finally:
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]


@attrs.define
class InFlight:
    """Requests and streams being served, so that shutdown can end as soon as the last one is done."""

    count: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event)

    @contextmanager
    def track(self) -> Iterator[None]:
        if not self.count:
            self._idle = trio.Event()
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            await self._idle.wait()


@attrs.define
class ServerState:
    """What the request handlers share: the recogniser, admission, readiness and metrics."""

    recognizer: Recognizer
    settings: Settings
    metrics: Metrics
    batches: Admission
    streams: Admission
    bodies: BodyBudget
    streams_per_key: PerKeyLimit
    in_flight: InFlight = attrs.field(factory=InFlight)
    load_error: str | None = None
    shutting_down: trio.Event = attrs.field(factory=trio.Event)
    drain_expired: trio.Event = attrs.field(factory=trio.Event)
    _ready_at: float = -1.0
    _ready: tuple[bool, str] = (False, "not checked yet")

    @classmethod
    def create(cls, recognizer: Recognizer, settings: Settings) -> ServerState:
        """`settings` are the server's (bind, limits); the recogniser's engine may have its own."""
        engine = recognizer.engine
        metrics = Metrics(lambda: dict(engine.calls))
        engine.on_call = metrics.observe_backend_call
        if engine.pool is not None:
            metrics.watch_endpoints(engine.pool)
        batch_limit = trio.CapacityLimiter(settings.max_concurrent_batches)
        stream_limit = trio.CapacityLimiter(settings.max_concurrent_streams)
        shed = engine.check_admission
        return cls(
            recognizer,
            settings,
            metrics,
            Admission("batch", "batch requests", batch_limit, metrics, shed),
            Admission("stream", "streams", stream_limit, metrics, shed),
            BodyBudget(settings.body_budget, metrics),
            PerKeyLimit(settings.max_streams_per_key, metrics),
        )

    @property
    def engine(self) -> Engine:
        return self.recognizer.engine

    async def drain_after_shutdown(self) -> None:
        """Give running streams `SHUTDOWN_DRAIN_SECS` after shutdown starts; then they are finalised."""
        await self.shutting_down.wait()
        await trio.sleep(self.settings.shutdown_drain_secs)
        self.drain_expired.set()

    async def readiness(self) -> tuple[bool, str]:
        """Backend and model readiness, cached for a second so that probes stay cheap; not ready
        from the moment shutdown begins; with Triton, no healthy endpoint is known at once from the
        endpoints' watchers."""
        if self.shutting_down.is_set():
            return False, "the server is shutting down"
        pool = self.engine.pool
        if pool is not None and not pool.healthy:
            return False, f"no Triton endpoint is healthy: {pool.describe()}"
        now = trio.current_time()
        if now - self._ready_at >= READY_CACHE_SECS:
            self._ready = await self._check_ready()
            self._ready_at = now
        return self._ready

    async def _check_ready(self) -> tuple[bool, str]:
        if self.load_error is not None:
            return False, self.load_error
        if not self.engine.loaded:
            return False, "the model sets have not been loaded from the backend yet"
        try:
            with trio.fail_after(self.settings.inference_timeout_secs):
                ready = await self.engine.ready()
        except (BackendFailure, trio.TooSlowError) as exc:
            return False, f"the {self.engine.backend.kind} backend does not answer: {exc}"
        return (True, "ready") if ready else (False, "a model of a configured model set is not ready")
