"""Running the server: Hypercorn's trio worker, inside the caller's nursery if they like.

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, settings)

The recogniser is loaded before the first bind when the backend answers; when it does not
(Triton still starting, or down), the server starts anyway, reports it on `/ready`, and keeps
trying in the background until the backend comes back.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable

import trio
from hypercorn.config import Config, Sockets
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from amira.core.errors import BackendFailure
from amira.core.model_set import ModelSetError
from amira.engine import Engine, create_backend
from amira.recognizer import Recognizer
from amira.server.app import create_app
from amira.server.connections import ensure_descriptors, serve_connections
from amira.server.metrics import Metrics
from amira.server.state import ServerState
from amira.server.stream_handler import HYPERCORN_FRAME_FACTOR
from amira.server.workers import Seat, Turn
from amira.settings import Settings

log = logging.getLogger("amira.server")

ASGIReceive = ASGIReceiveCallable
ASGISend = ASGISendCallable
ASGIApp = ASGIFramework

LOAD_RETRY_SECS = 1.0
INVALID_MODEL_RETRY_SECS = 10.0
FINAL_FLUSH_CALLS = 4
LAG_TICK_SECS = 0.010
# How long a worker thread that parses or decodes may keep the GIL while the event loop waits for
# it (Python's default is 5 ms). Answering one request takes the loop a dozen hand-offs of the
# GIL (each socket operation releases it), so with the default a request waited up to ~50 ms
# while bodies were parsed; with 1 ms, ~10 ms. CPU-bound work switches more often (its cost is
# not measurable here), and the backends' own calls release the GIL anyway.
GIL_SWITCH_SECS = 0.001
LOGGED_STATUSES = (401, 408)  # and every 5xx: refused credentials, stalled uploads, failures


async def keep_loading(state: ServerState) -> None:
    """Load the model sets, retrying while the backend is unreachable or a set does not fit."""
    engine = state.engine
    while not engine.loaded:
        try:
            with trio.fail_after(max(10.0, 4 * state.settings.inference_timeout_secs)):
                await engine.load()
        except (BackendFailure, trio.TooSlowError) as exc:
            state.load_error = None
            log.warning("backend not available yet (%s); retrying in %.0f s", exc, LOAD_RETRY_SECS)
            await trio.sleep(LOAD_RETRY_SECS)
        except ModelSetError as exc:
            state.load_error = str(exc)
            log.error("%s; retrying in %.0f s", exc, INVALID_MODEL_RETRY_SECS)
            await trio.sleep(INVALID_MODEL_RETRY_SECS)
        else:
            state.load_error = None
            log.info("model sets loaded: %s", ", ".join(sorted(engine.model_sets)))


def run_queue_seconds() -> float:
    """How long this thread has waited, runnable, for a CPU (Linux schedstat; 0 where unknown)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


async def watch_event_loop(metrics: Metrics) -> None:
    """Observe the event loop's stalls as the server sees them: how late a 10 ms timer fires (the
    lag), and that lateness less the time the OS kept the loop's thread waiting for a CPU (the
    stall). On a loaded machine the lag counts the other processes; the stall counts only the
    loop's own work and its waits for the GIL."""
    waited = run_queue_seconds()
    while True:
        due = trio.current_time() + LAG_TICK_SECS
        await trio.sleep_until(due)
        late = trio.current_time() - due
        waited, previous = run_queue_seconds(), waited
        metrics.event_loop_lag.observe(late)
        metrics.event_loop_stall.observe(max(0.0, late - (waited - previous)))


def with_header(message: HTTPResponseStartEvent, name: bytes, value: bytes) -> HTTPResponseStartEvent:
    """The message with header `name` set to `value` (replacing it)."""
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
    return {**message, "headers": [*headers, (name, value)]}


def close_when_body_unread(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: answer `Connection: close` when a response starts before the request body
    was received in full (a 413 on the declared length, `unknown_model`, `capacity_exceeded`).

    Hypercorn cannot reuse such a connection, yet without the header it keeps it open and a
    keep-alive client's next request on it hangs (httpx: a read timeout). With the header the
    client opens a fresh connection for its next request.
    """

    async def wrapped(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        body_done = headers.get(b"content-length", b"0").strip() in (b"0", b"") and (
            b"transfer-encoding" not in headers
        )

        async def receiving() -> ASGIReceiveEvent:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def sending(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = with_header(message, b"connection", b"close")
            await send(message)

        await app(scope, receiving, sending)

    return wrapped


def guard_sends(app: ASGIApp) -> ASGIApp:
    """ASGI middleware around two faults of Hypercorn's sending under Quart-Trio: the first shows with
    a minimal Quart-Trio app and no AMIRA code (`tests/test_runner.py`), the second under load
    (`tests/test_abuse.py`, row 5; `tests/test_hostile_input.py`).

    * The last `http.response.body` message is sent shielded from cancellation. Quart-Trio runs a
      request as two tasks, and the one that reads the request's messages ends the request as soon
      as Hypercorn reports the response sent (`http.disconnect`), by cancelling the other. But
      Hypercorn reports it from *inside* the last body send, which then goes on to close the
      connection (`Connection: close`, HTTP/1.0) or to start the keep-alive timer; the
      cancellation lands in the middle, and neither happens: the connection stays open for good,
      and shutdown waits for its graceful timeout whenever an idle keep-alive client is connected.
      Shielding that one send lets Hypercorn finish; its socket writes are shielded already.
    * A send that meets Hypercorn closing the connection (a client that hung up in the middle of
      its upload, or of a WebSocket handshake: Hypercorn's reader closes the socket while a
      response or a close frame is being written) raises `trio.BusyResourceError`, which
      Hypercorn and Quart log as an application error with a traceback. The client is gone, so
      the message is dropped, as Hypercorn does for a broken connection.
    """

    async def wrapped(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return

        async def sending(message: ASGISendEvent) -> None:
            try:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    with trio.CancelScope(shield=True):
                        await send(message)
                else:
                    await send(message)
            except trio.BusyResourceError:
                log.info("the client closed the connection while a message to it was sent")

        await app(scope, receive, sending)

    return wrapped


def track_requests(app: ASGIApp, state: ServerState) -> ASGIApp:
    """ASGI middleware: requests and streams in flight (shutdown waits for them), `Connection:
    close` on every response once shutdown began, and every response counted by status, with
    401, 408 and 5xx logged."""
    metrics = state.metrics

    def observe(
        scope: HTTPScope | WebsocketScope, status: int, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        metrics.http_responses.labels(str(status)).inc()
        if status in LOGGED_STATUSES or status >= 500:
            request_id = dict(headers).get(b"x-request-id", b"-").decode("ascii", "backslashreplace")
            path = scope["raw_path"].decode("ascii", "backslashreplace")
            method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
            log.warning("%s %s answered %d request_id=%s", method, path, status, request_id)

    async def wrapped(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return

        async def sending(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" or message["type"] == "websocket.http.response.start":
                observe(scope, message["status"], message.get("headers", []))
            if message["type"] == "http.response.start" and state.shutting_down.is_set():
                message = with_header(message, b"connection", b"close")
            await send(message)

        with state.in_flight.track():
            await app(scope, receive, sending)

    return wrapped


class _Config(Config):
    """Hypercorn's configuration, with `TCP_USER_TIMEOUT` on the listening sockets (accepted connections
    inherit it): data the client has not acknowledged for `STREAM_TIMEOUT_SECS`, such as results a
    client never reads, aborts the connection. Hypercorn shields its socket writes from cancellation,
    so no timeout in the application can end a send that a never-reading client has stalled; the
    kernel's can, and the stream then ends and frees its slot (`tests/test_admission.py`)."""

    send_timeout_ms: int = 0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and self.send_timeout_ms:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.send_timeout_ms)
        return sockets


def hypercorn_config(settings: Settings, listen_fd: int | None = None) -> Config:
    """Hypercorn's configuration; `listen_fd` is a socket to accept from instead of binding one
    (a worker process's, `amira.server.workers`)."""
    config = _Config()
    config.send_timeout_ms = round(settings.stream_timeout_secs * 1000)
    config.bind = [
        f"{settings.server_host}:{settings.server_port}" if listen_fd is None else f"fd://{listen_fd}"
    ]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through the application's logging, once
    # Streams get the drain time, then their final results: the last flush may take a few backend calls.
    config.graceful_timeout = (
        settings.shutdown_drain_secs + FINAL_FLUSH_CALLS * settings.inference_timeout_secs
    )
    config.websocket_max_message_size = HYPERCORN_FRAME_FACTOR * settings.max_frame_bytes
    config.keep_alive_timeout = settings.keep_alive_timeout_secs
    return config


def freeze_startup_objects() -> None:
    """Take every object alive once the server is ready (modules, sessions, the app) out of the
    garbage collector's view (`gc.freeze`, after one last collection). Otherwise each full
    collection walks all of them while holding the GIL: with 100 streams on 2 cores it stopped the
    event loop for 55 to 75 ms every few seconds (`bench.stream`, the stalls); with them frozen, at
    most about 20 ms. What the server makes from then on is collected as usual."""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    recognizer: Recognizer | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    seat: Seat | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (or the task is cancelled); reports the bound URLs.
    `seat`: a worker's (`amira.server.workers`): accept from its listening socket, in its turn,
    instead of binding `SERVER_HOST:PORT`.

    Shutdown is graceful and as short as the work in flight allows: `/ready` answers 503 at once
    and new batches and streams are refused (`shutting_down`); idle connections close at once;
    batch requests in flight complete; running streams may go on for `SHUTDOWN_DRAIN_SECS`, then
    each gets the final result for all the audio it sent and close code 1001; the server returns
    as soon as the last of them is done (`amira.server.connections`).

    A model set that does not fit the contract stops the start with `ModelSetError` when the
    backend can be asked at start-up; vocabularies are always checked before binding.
    """
    ensure_descriptors(settings.max_connections)
    sys.setswitchinterval(GIL_SWITCH_SECS)
    owns_backend = recognizer is None
    if recognizer is None:
        recognizer = Recognizer(Engine(create_backend(settings), settings))
    engine = recognizer.engine
    try:
        engine.load_vocabularies()
        state = ServerState.create(recognizer, settings)
        async with contextlib.AsyncExitStack() as stack:
            if not engine.running:  # a recogniser from `open_recognizer` runs its engine already
                await stack.enter_async_context(engine.serving())
            try:
                with trio.fail_after(max(10.0, 4 * settings.inference_timeout_secs)):
                    await engine.load()
            except (BackendFailure, trio.TooSlowError) as exc:
                log.warning("starting without the backend (%s); /ready reports 503 until it answers", exc)
            app = track_requests(guard_sends(close_when_body_unread(create_app(state))), state)
            freeze_startup_objects()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_loading, state)
                nursery.start_soon(state.drain_after_shutdown)
                nursery.start_soon(watch_event_loop, state.metrics)
                turn = None if seat is None else Turn.of(seat, settings.workers, lambda: engine.loaded)
                try:
                    await serve_connections(
                        app,
                        hypercorn_config(settings, None if seat is None else seat.listen_fd),
                        state,
                        shutdown_trigger or trio.sleep_forever,
                        turn=turn,
                        task_status=task_status,
                    )
                finally:
                    if turn is not None:
                        turn.close()
                nursery.cancel_scope.cancel()
    finally:
        if owns_backend:
            with trio.CancelScope(shield=True):
                await engine.backend.aclose()
