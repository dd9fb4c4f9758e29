"""What every batch request goes through, whatever its dialect: checks in order of cost, its body
read before it takes a slot, parsing in a worker thread, admission (a slot of
`MAX_CONCURRENT_BATCHES` or `capacity_exceeded` at once), the metrics labelled by protocol, and
errors answered in the dialect's shape.

The order keeps refused requests cheap and slots for work: shutdown, model and the dialect's own
checks (nothing read yet); the declared length; the body, held on the body budget
(`BODY_BUFFER_BYTES`) and read within `BODY_TIMEOUT_SECS` (`request_timeout`); only then a batch
slot, so that slow uploads never hold one; then the dialect's parser in a worker thread (JSON,
base64, multipart forms, sound files: never on the event loop), the body's bytes back to the
budget, and recognition.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from typing import TypeVar

import attrs
import numpy as np
import numpy.typing as npt
import trio
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from amira.core.errors import AmiraError, RequestTimeout, ShuttingDown, TooLarge
from amira.core.transcript import Transcript
from amira.recognizer import Recognizer, unwrapped_errors
from amira.server.errors import dialect_error_response
from amira.server.state import BodyHold, ServerState

UNKNOWN = "(unknown)"  # the model label of a request whose model is unknown or not read yet
Parsed = TypeVar("Parsed")


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


async def read_body(hold: BodyHold, declared: int | None, limit: int, seconds: float) -> bytearray:
    """The request body, within `seconds`, held on the body budget: all of a declared length at
    once, chunk by chunk otherwise. It is copied once, as it arrives (Quart's buffer is emptied as
    we go), into a buffer of the declared length when there is one."""
    hold.grow(declared or 0)
    body = bytearray(declared or 0)
    filled = 0
    try:
        with trio.move_on_after(seconds) as waited:
            async for chunk in request.body:
                if declared is None:
                    hold.grow(len(chunk))
                    body += chunk
                else:
                    body[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
    except RequestEntityTooLarge:
        raise TooLarge(f"the request body is larger than {limit} bytes") from None
    if waited.cancelled_caught:
        raise RequestTimeout(f"the request body did not arrive in full within {seconds:g} s")
    del body[filled:]
    return body


async def answer_batch(
    call: BatchCall,
    path: str,
    parse: Callable[[bytearray], Parsed],
    respond: Callable[[BatchCall, Parsed], Awaitable[Response]],
    model: str | None = None,
    check: Callable[[], object] | None = None,
) -> Response:
    """Answer a batch request: `model` (when the URL names it) and `check` before the body is read,
    `parse` (a plain function of the body) in a worker thread once a slot is held, then `respond`."""
    started = time.perf_counter()
    state, settings, metrics = call.state, call.state.settings, call.state.metrics
    try:
        if state.shutting_down.is_set():
            raise ShuttingDown("the server is shutting down; retry shortly (another instance)")
        if model is not None:
            call.use_model(model)
        if check is not None:
            check()
        declared = request.content_length
        if declared is not None and declared > settings.max_body_bytes:
            raise TooLarge(f"the request body is larger than {settings.max_body_bytes} bytes")
        with ExitStack() as body_held:
            hold = body_held.enter_context(state.bodies.hold())
            body = await read_body(hold, declared, settings.max_body_bytes, settings.body_timeout_secs)
            with state.batches.admit():
                limiter = state.engine.batch_calls.limiter
                parsed = await trio.to_thread.run_sync(parse, body, limiter=limiter)
                del body
                body_held.close()  # the body is parsed: its bytes go back to the budget
                response = await respond(call, parsed)
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
