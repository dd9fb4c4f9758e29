"""The Quart-Trio application: health, readiness, metrics, model listing and the batch endpoint.

The app is a thin shell: request bodies are read and answers written by the sans-IO protocol
(`amira.protocols.native_batch`), recognition is the `Recognizer`'s, and every failure leaves as a
JSON error from the API's table, never a 500.

A batch request goes through its checks in order of cost, so that a request that will be refused
costs as little as possible: shutdown, model name and Content-Type (nothing read yet); the body
budget (`BODY_BUFFER_BYTES`); the body itself, within `BODY_TIMEOUT_SECS`; only then a batch slot
(`MAX_CONCURRENT_BATCHES`), so that slow uploads never hold slots; then parsing and decoding in a
worker thread, and recognition.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from functools import partial

import trio
from quart import Quart, Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import amira
from amira.core.errors import AmiraError, InternalError, RequestTimeout, ShuttingDown, TooLarge
from amira.protocols.native_batch import batch_document, check_media_type, parse_batch_body
from amira.protocols.values import parse_request_id
from amira.server import security
from amira.server.errors import error_response, exception_response
from amira.server.state import BodyHold, ServerState, new_id
from amira.server.stream_handler import add_stream_route
from amira.server.web import add_web_routes

log = logging.getLogger("amira.server")


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


def create_app(state: ServerState) -> Quart:
    app = QuartTrio(__name__)
    recognizer, engine, settings, metrics = state.recognizer, state.engine, state.settings, state.metrics
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = None  # `read_body` has its own, answered with `request_timeout`

    @app.before_request
    async def name_request() -> None:
        g.request_id = parse_request_id(request.headers.get("X-Request-Id")) or new_id()

    @app.after_request
    async def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id") or new_id()
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return error_response("too_large", f"the request body is larger than {limit} bytes")
        return error_response("bad_request", f"{exc.name}: {exc.description}", exc.code or 400)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error")
        metrics.errors.labels("internal").inc()
        return exception_response(InternalError("internal error; see the server log"))

    @app.get("/health")
    async def health() -> Response:
        return jsonify({"status": "healthy", "version": amira.__version__, "backend": engine.backend.kind})

    @app.get("/ready")
    async def ready() -> Response | tuple[Response, int]:
        is_ready, message = await state.readiness()
        if is_ready:
            return jsonify({"status": "ready", "models": sorted(engine.configs)})
        body = {"status": "not_ready", "error_type": "backend_unavailable", "message": message}
        return jsonify(body), 503

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v2/models")
    async def models() -> Response:
        described = []
        for name, config in sorted(engine.configs.items()):
            loaded = engine.model_sets.get(name)
            described.append(
                loaded.model_set.describe() if loaded else {"name": name, "models": config.models}
            )
        return jsonify({"models": described})

    @app.post("/v2/decode/batch/<model>")
    async def batch(model: str) -> Response:
        started = time.perf_counter()
        response = await _batch(model, started)
        log.info(
            "batch request_id=%s model=%s status=%d seconds=%.3f",
            g.request_id,
            model if model in engine.configs else "(unknown)",
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    async def _batch(model: str, started: float) -> Response:
        label = model if model in engine.configs else "(unknown)"
        try:
            response = await _transcribe_request(model, started)
        except AmiraError as exc:
            metrics.requests.labels(label, exc.error_type).inc()
            metrics.errors.labels(exc.error_type).inc()
            return exception_response(exc)
        metrics.requests.labels(model, "ok").inc()
        metrics.request_seconds.labels(model).observe(time.perf_counter() - started)
        return response

    async def _transcribe_request(model: str, started: float) -> Response:
        if state.shutting_down.is_set():
            raise ShuttingDown("the server is shutting down; retry shortly (another instance)")
        engine.check_known(model)
        mimetype = check_media_type(request.mimetype)
        declared = request.content_length
        if declared is not None and declared > settings.max_body_bytes:
            raise TooLarge(f"the request body is larger than {settings.max_body_bytes} bytes")
        with ExitStack() as body_held:
            hold = body_held.enter_context(state.bodies.hold())
            body = await read_body(hold, declared, settings.max_body_bytes, settings.body_timeout_secs)
            with state.batches.admit():
                parse = partial(
                    parse_batch_body,
                    mimetype,
                    body,
                    request.args.get("sample_rate"),
                    settings.max_batch_audio_secs,
                )
                parsed = await trio.to_thread.run_sync(parse, limiter=engine.batch_calls.limiter)
                del body, parse
                body_held.close()  # the body is parsed: its bytes go back to the budget
                transcript = await recognizer.transcribe(parsed.samples, model)
        metrics.audio_seconds.labels(model, "batch").inc(transcript.audio_seconds)
        processing_ms = (time.perf_counter() - started) * 1000
        return jsonify(batch_document(transcript, model, processing_ms, parsed.opaque))

    security.install(app, settings, metrics)
    add_stream_route(app, state)
    add_web_routes(app, state)
    return app
