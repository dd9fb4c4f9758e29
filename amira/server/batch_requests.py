"""What every batch request goes through, whatever its dialect: the model check, admission (a slot
of `MAX_CONCURRENT_BATCHES` or `capacity_exceeded` at once), the metrics labelled by protocol, and
errors answered in the dialect's shape."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import attrs
import numpy as np
import numpy.typing as npt
import trio
from quart import Response

from amira.core.errors import AmiraError
from amira.core.transcript import Transcript
from amira.recognizer import Recognizer, unwrapped_errors
from amira.server.errors import dialect_error_response
from amira.server.state import ServerState

UNKNOWN = "(unknown)"  # the model label of a request whose model is unknown or not read yet


@attrs.define
class BatchCall:
    """One batch request as its handler fills it in: which model (once known), how much audio."""

    state: ServerState
    protocol: str
    model: str = UNKNOWN
    audio_seconds: float = 0.0

    def use_model(self, model: str) -> None:
        """The model set the request names; `UnknownModel` when it is not configured."""
        self.state.engine.check_known(model)
        self.model = model


async def answer_batch(
    call: BatchCall, path: str, work: Callable[[BatchCall], Awaitable[Response]], model: str | None = None
) -> Response:
    """Run `work` in an admitted batch slot; `model`, when the URL names it, is checked first, so
    that an unknown model is refused before any capacity is taken."""
    started = time.perf_counter()
    metrics = call.state.metrics
    try:
        if model is not None:
            call.use_model(model)
        with call.state.batches.admit():
            response = await work(call)
    except AmiraError as exc:
        metrics.requests.labels(call.protocol, call.model, exc.error_type).inc()
        metrics.errors.labels(call.protocol, exc.error_type).inc()
        return dialect_error_response(path, exc)
    metrics.requests.labels(call.protocol, call.model, "ok").inc()
    metrics.request_seconds.labels(call.protocol, call.model).observe(time.perf_counter() - started)
    metrics.audio_seconds.labels(call.protocol, call.model, "batch").inc(call.audio_seconds)
    return response


async def transcribe_channels(
    recognizer: Recognizer, channels: Sequence[npt.NDArray[np.float32]], model: str
) -> list[Transcript]:
    """Each channel transcribed on its own, all at once (a stereo call takes the time of one
    channel when the backend has room); the first error cancels the others and is raised."""
    transcripts: list[Transcript | None] = [None] * len(channels)

    async def one(index: int) -> None:
        transcripts[index] = await recognizer.transcribe(channels[index], model)

    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            for index in range(len(channels)):
                nursery.start_soon(one, index)
    return [t for t in transcripts if t is not None]
