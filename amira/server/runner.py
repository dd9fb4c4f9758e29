"""Running the server: Hypercorn's trio worker, inside the caller's nursery if they like.

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, settings)

The recogniser is loaded before the first bind when the backend answers; when it does not
(Triton still starting, or down), the server starts anyway, reports it on `/ready`, and keeps
trying in the background until the backend comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from amira.core.errors import BackendFailure
from amira.core.model_set import ModelSetError
from amira.engine import Engine, create_backend
from amira.recognizer import Recognizer
from amira.server.app import create_app
from amira.server.state import ServerState
from amira.server.stream_handler import HYPERCORN_FRAME_FACTOR
from amira.settings import Settings

log = logging.getLogger("amira.server")

ASGIReceive = ASGIReceiveCallable
ASGISend = ASGISendCallable
ASGIApp = ASGIFramework

LOAD_RETRY_SECS = 1.0
INVALID_MODEL_RETRY_SECS = 10.0
FINAL_FLUSH_CALLS = 4


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
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receiving, sending)

    return wrapped


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.server_host}:{settings.server_port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through the application's logging, once
    # Streams get the drain time, then their final results: the last flush may take a few backend calls.
    config.graceful_timeout = (
        settings.shutdown_drain_secs + FINAL_FLUSH_CALLS * settings.inference_timeout_secs
    )
    config.websocket_max_message_size = HYPERCORN_FRAME_FACTOR * settings.max_frame_bytes
    return config


async def serve(
    settings: Settings,
    recognizer: Recognizer | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (or the task is cancelled); reports the bound URLs.

    Shutdown is graceful: no new connections; running streams may go on for `SHUTDOWN_DRAIN_SECS`,
    then each gets the final result for all the audio it sent and close code 1001; batch requests
    in flight complete.

    A model set that does not fit the contract stops the start with `ModelSetError` when the
    backend can be asked at start-up; vocabularies are always checked before binding.
    """
    owns_backend = recognizer is None
    if recognizer is None:
        recognizer = Recognizer(Engine(create_backend(settings), settings))
    engine = recognizer.engine
    try:
        engine.load_vocabularies()
        state = ServerState.create(recognizer, settings)
        try:
            with trio.fail_after(max(10.0, 4 * settings.inference_timeout_secs)):
                await engine.load()
        except (BackendFailure, trio.TooSlowError) as exc:
            log.warning("starting without the backend (%s); /ready reports 503 until it answers", exc)
        app = create_app(state)

        async def begin_shutdown() -> None:
            await (shutdown_trigger or trio.sleep_forever)()
            state.shutting_down.set()

        async with trio.open_nursery() as nursery:
            if not engine.running:
                await nursery.start(engine.run)
            nursery.start_soon(keep_loading, state)
            nursery.start_soon(state.drain_after_shutdown)
            await hypercorn_serve(
                close_when_body_unread(app),
                hypercorn_config(settings),
                shutdown_trigger=begin_shutdown,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()
    finally:
        if owns_backend:
            with trio.CancelScope(shield=True):
                await engine.backend.aclose()
