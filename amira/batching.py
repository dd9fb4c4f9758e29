"""Batched `decoder_joint` calls across concurrent work: one scheduler per model set.

Every span in progress on a model set (a batch recording, a stream's chunk or look-ahead) is handed
to the set's `JointScheduler`. Its worker thread runs steps: each step takes the next call of every
span it holds and runs them as one `decoder_joint` call with B rows (`amira.core.joint`), hands each
decoder its own row, and lets finished spans go. Spans join at the next step, so under load the
calls of all running requests and streams share backend calls, and at low load a span runs alone
with no wait. Rows are independent (the joint scores each frame on its own, the prediction network
runs per row), so the tokens are those of unbatched decoding: `tests/test_batching.py` checks it.

`window` (`DECODER_BATCH_WINDOW_MS`) is how long an idle scheduler waits for more spans before its
first step; 0 starts at once (spans still join at every step).

Threads and trio: the worker thread is the scheduler's own (one per model set, taken by the
scheduler task, which the engine's nursery owns); a span's task only queues its span and waits.
Each waiting span holds a token of its kind's limiter, so the caps on concurrent streams and
batches hold as before. A cancelled span is dropped by the worker at the next step; its task waits
for that (at most one backend call), since the worker writes the span's pooled decoder state.
"""

from __future__ import annotations

import collections
import enum
import time

import attrs
import trio

from amira.backends.base import Backend
from amira.core.errors import AmiraError, BackendError, BackendUnavailable
from amira.core.joint import JOINT_OUTPUTS, Array, Span, joint_step


@attrs.define(eq=False)
class _Job:
    """A span queued on a scheduler; `timings` gets the seconds of each call it took part in."""

    span: Span
    timings: list[float]
    done: trio.Event = attrs.field(factory=trio.Event)
    cancelled: bool = False
    error: BaseException | None = None


def _copy(error: BaseException) -> BaseException:
    """A failure shared by the rows of one call, as an exception of each span's own."""
    if isinstance(error, AmiraError):
        return type(error)(*error.args)
    return BackendError(f"decoder_joint failed: {type(error).__name__}: {error}")


class SchedulerState(enum.Enum):
    STARTING = "starting"  # made and started in the engine's nursery; spans may queue already
    RUNNING = "running"
    STOPPED = "stopped"  # its task ended: spans are refused


class JointScheduler:
    """Runs the `decoder_joint` calls of the spans of one model set, batched across spans."""

    def __init__(self, backend: Backend, model: str, window: float) -> None:
        self.backend = backend
        self.model = model
        self.window = window
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # rows per backend call
        self._queued: collections.deque[_Job] = collections.deque()  # thread-safe append/popleft
        self._wakeup = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._active: list[_Job] = []  # the worker thread's, while it runs
        self.state = SchedulerState.STARTING

    async def run(self) -> None:
        """Serve queued spans until cancelled; spans still queued then fail with `BackendUnavailable`."""
        self.state = SchedulerState.RUNNING
        thread_limiter = trio.CapacityLimiter(1)
        try:
            while True:
                while not self._queued:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                if self.window > 0:
                    await trio.sleep(self.window)
                await trio.to_thread.run_sync(self._work, limiter=thread_limiter)
        finally:
            self.state = SchedulerState.STOPPED
            for job in [*self._active, *self._queued]:
                self._finish(job, BackendUnavailable("the engine stopped"), soon=False)
            self._active.clear()
            self._queued.clear()

    async def decode(self, span: Span, limiter: trio.CapacityLimiter, timings: list[float]) -> None:
        """Decode `span` to its end in the scheduler's steps, under a token of `limiter`."""
        job = _Job(span, timings)
        async with limiter:
            if self.state is SchedulerState.STOPPED:
                raise BackendUnavailable("the engine stopped")
            self._queued.append(job)
            self._wakeup.set()
            try:
                await job.done.wait()
            finally:
                if not job.done.is_set():  # cancelled: the worker drops the span at its next step
                    job.cancelled = True
                    with trio.CancelScope(shield=True):
                        await job.done.wait()
        if job.error is not None:
            raise job.error

    def _finish(self, job: _Job, error: BaseException | None = None, *, soon: bool = True) -> None:
        job.error = None if error is None else _copy(error)
        if soon:
            self._token.run_sync_soon(job.done.set)
        else:
            job.done.set()

    def _work(self) -> None:
        """The worker thread: steps until no span is left; stops at a step boundary when cancelled."""

        def run(inputs: dict[str, Array]) -> dict[str, Array]:
            return self.backend.infer_blocking(self.model, inputs, JOINT_OUTPUTS)

        active = self._active
        try:
            while True:
                trio.from_thread.check_cancelled()
                while self._queued:
                    active.append(self._queued.popleft())
                for job in [job for job in active if job.cancelled]:
                    active.remove(job)
                    self._finish(job)
                if not active:
                    return
                started = time.perf_counter()
                try:
                    stepped = joint_step([job.span for job in active], run)
                except Exception as error:
                    for job in active:
                        self._finish(job, error)
                    active.clear()
                    continue
                elapsed = time.perf_counter() - started
                self.batch_sizes[len(stepped)] += 1
                still = []
                for job in active:
                    if any(job.span is span for span in stepped):
                        job.timings.append(elapsed)
                    if job.span.request() is None:
                        self._finish(job)
                    else:
                        still.append(job)
                active[:] = still
        except BaseException as error:  # cancelled (the engine stops), or a bug: no span waits forever
            failure = BackendUnavailable("the engine stopped") if isinstance(error, trio.Cancelled) else error
            for job in active:
                self._finish(job, failure)
            active.clear()
            raise
