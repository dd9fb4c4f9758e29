"""What the request handlers of one server share: the recogniser, admission, readiness and metrics."""

from __future__ import annotations

import secrets

import attrs
import trio

from amira.backends.base import BackendFailure
from amira.recognizer import Recognizer
from amira.server.metrics import Metrics
from amira.settings import Settings

READY_CACHE_SECS = 1.0


def new_id() -> str:
    """A short random id for a request or stream, for logs and error messages."""
    return secrets.token_hex(5)


@attrs.define
class ServerState:
    """What the request handlers share: the recogniser, admission, readiness and metrics."""

    recognizer: Recognizer
    settings: Settings
    metrics: Metrics
    batch_admission: trio.CapacityLimiter
    stream_admission: trio.CapacityLimiter
    load_error: str | None = None
    shutting_down: trio.Event = attrs.field(factory=trio.Event)
    drain_expired: trio.Event = attrs.field(factory=trio.Event)
    _ready_at: float = -1.0
    _ready: tuple[bool, str] = (False, "not checked yet")

    @classmethod
    def create(cls, recognizer: Recognizer, settings: Settings) -> ServerState:
        metrics = Metrics(lambda: dict(recognizer.calls))
        recognizer.on_call = metrics.observe_backend_call
        return cls(
            recognizer,
            settings,
            metrics,
            trio.CapacityLimiter(settings.max_concurrent_batches),
            trio.CapacityLimiter(settings.max_concurrent_streams),
        )

    async def drain_after_shutdown(self) -> None:
        """Give running streams `SHUTDOWN_DRAIN_SECS` after shutdown starts; then they are finalised."""
        await self.shutting_down.wait()
        await trio.sleep(self.settings.shutdown_drain_secs)
        self.drain_expired.set()

    async def readiness(self) -> tuple[bool, str]:
        """Backend and model readiness, cached for a second so that probes stay cheap."""
        now = trio.current_time()
        if now - self._ready_at >= READY_CACHE_SECS:
            self._ready = await self._check_ready()
            self._ready_at = now
        return self._ready

    async def _check_ready(self) -> tuple[bool, str]:
        if self.load_error is not None:
            return False, self.load_error
        if not self.recognizer.loaded:
            return False, "the model sets have not been loaded from the backend yet"
        try:
            with trio.fail_after(self.settings.inference_timeout_secs):
                ready = await self.recognizer.ready()
        except (BackendFailure, trio.TooSlowError) as exc:
            return False, f"the {self.recognizer.backend.kind} backend does not answer: {exc}"
        return (True, "ready") if ready else (False, "a model of a configured model set is not ready")
