"""The Quart-Trio application: health, readiness, metrics, model listing and the batch endpoint.

The app is a thin shell: request bodies are read and answers written by the sans-IO protocol
(`amira.protocols.native_batch`), recognition is the `Recognizer`'s, and every failure leaves as a
JSON error from the API's table, never a 500.
"""

from __future__ import annotations

import logging
import time

from quart import Quart, Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

import amira
from amira.core.errors import AmiraError, InternalError
from amira.protocols.native_batch import batch_document, parse_batch_body
from amira.server import security
from amira.server.errors import error_response, exception_response
from amira.server.state import ServerState, new_id
from amira.server.stream_handler import add_stream_route
from amira.server.web import add_web_routes

log = logging.getLogger("amira.server")

BODY_LIMIT_FRAMES = 16


def create_app(state: ServerState) -> Quart:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = BODY_LIMIT_FRAMES * state.settings.max_frame_bytes
    recognizer, engine, settings, metrics = state.recognizer, state.engine, state.settings, state.metrics

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return error_response("too_large", f"the request body is larger than {limit} bytes")
        return error_response("bad_request", f"{exc.name}: {exc.description}", exc.code or 400)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error")
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
            described.append(loaded.describe() if loaded else {"name": name, "models": config.models})
        return jsonify({"models": described})

    @app.post("/v2/decode/batch/<model>")
    async def batch(model: str) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id", "")[:64] or new_id()
        response = await _batch(model, started)
        response.headers["X-Request-Id"] = request_id
        log.info(
            "batch request_id=%s model=%s status=%d seconds=%.3f",
            request_id,
            model if model in engine.configs else "(unknown)",
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    async def _batch(model: str, started: float) -> Response:
        label = model if model in engine.configs else "(unknown)"
        try:
            engine.check_known(model)
            with state.batches.admit():
                response = await _transcribe_request(model, started)
        except AmiraError as exc:
            metrics.requests.labels(label, exc.error_type).inc()
            metrics.errors.labels(exc.error_type).inc()
            return exception_response(exc)
        metrics.requests.labels(model, "ok").inc()
        metrics.request_seconds.labels(model).observe(time.perf_counter() - started)
        return response

    async def _transcribe_request(model: str, started: float) -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        parsed = parse_batch_body(
            request.mimetype, body, request.args.get("sample_rate"), settings.max_batch_audio_secs
        )
        transcript = await recognizer.transcribe(parsed.samples, model)
        metrics.audio_seconds.labels(model, "batch").inc(transcript.audio_seconds)
        processing_ms = (time.perf_counter() - started) * 1000
        return jsonify(batch_document(transcript, model, processing_ms, parsed.opaque))

    security.install(app, settings)
    add_stream_route(app, state)
    add_web_routes(app, state)
    return app
