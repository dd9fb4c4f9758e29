"""The Quart-Trio application: health, readiness, metrics, model listing and the batch endpoint.

The app is a thin shell: request bodies are read and answers written by the sans-IO protocol
(`amira.protocols.native_batch`), recognition is the `Recognizer`'s, and every failure leaves as a
JSON error from the API's table, never a 500. Every batch request, whatever its dialect, goes
through `amira.server.batch_requests.answer_batch`: its body arrives before it takes a slot, and is
parsed in a worker thread.
"""

from __future__ import annotations

import logging
import time

import trio
from quart import Quart, Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

import amira
from amira.core.errors import BadRequest, InternalError, TooLarge
from amira.protocols.native_batch import (
    TEXT_TYPES,
    BatchInput,
    BatchOptions,
    batch_document,
    check_media_type,
    multichannel_document,
    parse_batch_body,
    text_body,
)
from amira.protocols.values import parse_request_id
from amira.server import security
from amira.server.batch_requests import UNKNOWN, BatchCall, answer_batch, transcribe_channels
from amira.server.deepgram_routes import add_deepgram_routes
from amira.server.errors import dialect_error_response, dialect_of
from amira.server.openai_routes import add_openai_routes
from amira.server.state import ServerState, new_id
from amira.server.stream_handler import add_stream_route
from amira.server.web import add_web_routes

log = logging.getLogger("amira.server")


def create_app(state: ServerState) -> Quart:
    app = QuartTrio(__name__)
    recognizer, engine, settings, metrics = state.recognizer, state.engine, state.settings, state.metrics
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = None  # `answer_batch` has its own, answered with `request_timeout`

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
            limit = settings.max_body_bytes
            return dialect_error_response(
                request.path, TooLarge(f"the request body is larger than {limit} bytes")
            )
        error = BadRequest(f"{exc.name}: {exc.description}")
        return dialect_error_response(request.path, error, exc.code or 400)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error")
        metrics.errors.labels(dialect_of(request.path), "internal").inc()
        return dialect_error_response(request.path, InternalError("internal error; see the server log"))

    @app.get("/health")
    async def health() -> Response:
        return jsonify({"status": "healthy", "version": amira.__version__, "backend": engine.backend.kind})

    @app.get("/ready")
    async def ready() -> Response | tuple[Response, int]:
        is_ready, message = await state.readiness()
        body: dict[str, object] = {"status": "ready", "models": sorted(engine.configs)}
        if not is_ready:
            body = {"status": "not_ready", "error_type": "backend_unavailable", "message": message}
        if engine.pool is not None:
            body["endpoints"] = engine.pool.health()
        return jsonify(body), 200 if is_ready else 503

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v2/models")
    async def models() -> Response:
        described = []
        for name, config in sorted(engine.configs.items()):
            loaded = engine.model_sets.get(name)
            described.append(loaded.describe() if loaded else {"name": name, "models": config.models})
        return jsonify({"models": described})

    @app.post("/v2/decode/batch/<model>")
    async def batch(model: str) -> Response:
        started = time.perf_counter()
        response = await _batch(model, started)
        log.info(
            "batch request_id=%s model=%s status=%d seconds=%.3f",
            g.request_id,
            model if model in engine.configs else UNKNOWN,
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    async def _batch(model: str, started: float) -> Response:
        mimetype, query = request.mimetype, request.args
        chosen: list[BatchOptions] = []  # the query's options, read before the body

        def check() -> None:
            check_media_type(mimetype)
            chosen.append(BatchOptions.from_query(query))

        def parse(body: bytearray) -> BatchInput:
            return parse_batch_body(mimetype, body, chosen[0], settings.max_batch_audio_secs)

        async def transcribe(call: BatchCall, parsed: BatchInput) -> Response:
            options = chosen[0]
            transcripts = await transcribe_channels(recognizer, parsed.channels, model)
            call.audio_seconds = sum(t.audio_seconds for t in transcripts)
            processing_ms = (time.perf_counter() - started) * 1000
            if options.format in TEXT_TYPES:
                text = await trio.to_thread.run_sync(
                    text_body, transcripts, options.format, options.multichannel
                )
                return Response(text, content_type=TEXT_TYPES[options.format] + "; charset=utf-8")
            if options.multichannel:
                return jsonify(multichannel_document(transcripts, model, processing_ms, parsed.opaque))
            return jsonify(batch_document(transcripts[0], model, processing_ms, parsed.opaque))

        call = BatchCall(state, "native")
        return await answer_batch(call, request.path, parse, transcribe, model, check=check)

    security.install(app, settings, metrics)
    add_stream_route(app, state)
    add_openai_routes(app, state)
    add_deepgram_routes(app, state)
    add_web_routes(app, state)
    return app
