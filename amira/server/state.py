"""What the request handlers of one server share: the recogniser, admission, readiness and metrics."""

from __future__ import annotations

import re
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
REQUEST_ID_MAX = 64
REQUEST_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]+")


def new_id() -> str:
    """A short random id for a request or stream, for logs and error messages."""
    return secrets.token_hex(5)


def request_id(offered: str | None) -> str:
    """The client's `X-Request-Id` when it is a plain token (letters, digits, `-_.:`, at most 64
    characters), so that it can be logged and echoed safely; else a new id."""
    if offered and len(offered) <= REQUEST_ID_MAX and REQUEST_ID_CHARS.fullmatch(offered):
        return offered
    return new_id()


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
class ServerState:
    """What the request handlers share: the recogniser, admission, readiness and metrics."""

    recognizer: Recognizer
    settings: Settings
    metrics: Metrics
    batches: Admission
    streams: Admission
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
        """Backend and model readiness, cached for a second so that probes stay cheap; with Triton,
        no healthy endpoint is known at once from the endpoints' watchers."""
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
