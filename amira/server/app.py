"""The Quart-Trio application: health, readiness, metrics, model listing and the batch endpoint.

The app is a thin shell: request bodies are read by `batch_body`, recognition is the
`Recognizer`'s, and every failure leaves as a JSON error from the API's table, never a 500.
"""

from __future__ import annotations

import logging
import time

import trio
from quart import Quart, Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

import amira
from amira.backends.base import BackendFailure, BackendUnavailable
from amira.core.errors import CapacityExceeded, RequestError, UnknownModel
from amira.server import security
from amira.server.batch_body import NO_OPAQUE, parse_batch_body
from amira.server.errors import error_response, exception_response
from amira.server.state import ServerState, new_id
from amira.server.stream import add_stream_route
from amira.server.web import add_web_routes

log = logging.getLogger("amira.server")

BODY_LIMIT_FRAMES = 16


def create_app(state: ServerState) -> Quart:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = BODY_LIMIT_FRAMES * state.settings.max_frame_bytes
    app.extensions["amira"] = state
    recognizer, settings, metrics = state.recognizer, state.settings, state.metrics

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            return error_response("too_large", f"the request body is larger than {limit} bytes")
        return error_response("bad_request", f"{exc.name}: {exc.description}", exc.code or 400)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return jsonify({"error": "internal error; see the server log", "error_type": "internal"}), 500

    @app.get("/health")
    async def health() -> Response:
        return jsonify(
            {"status": "healthy", "version": amira.__version__, "backend": recognizer.backend.kind}
        )

    @app.get("/ready")
    async def ready() -> Response | tuple[Response, int]:
        is_ready, message = await state.readiness()
        if is_ready:
            return jsonify({"status": "ready", "models": sorted(recognizer.configs)})
        body = {"status": "not_ready", "error_type": "backend_unavailable", "message": message}
        return jsonify(body), 503

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v2/models")
    async def models() -> Response:
        described = []
        for name, config in sorted(recognizer.configs.items()):
            model_set = recognizer.model_sets.get(name)
            described.append(model_set.describe() if model_set else {"name": name, "models": config.models})
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
            model if model in recognizer.configs else "(unknown)",
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    async def _batch(model: str, started: float) -> Response:
        label = model if model in recognizer.configs else "(unknown)"
        try:
            if model not in recognizer.configs:
                raise UnknownModel(
                    f"unknown model {model!r}; configured: {', '.join(sorted(recognizer.configs))}"
                )
            try:
                state.batch_admission.acquire_nowait()
            except trio.WouldBlock:
                metrics.rejected.labels("batch").inc()
                raise CapacityExceeded(
                    f"more than {settings.max_concurrent_batches} batch requests at once; retry shortly"
                ) from None
            try:
                metrics.active_batches.inc()
                response = await _transcribe_request(model, started)
            finally:
                metrics.active_batches.dec()
                state.batch_admission.release()
        except (RequestError, BackendFailure) as exc:
            metrics.requests.labels(label, exc.error_type).inc()
            metrics.errors.labels(exc.error_type).inc()
            return exception_response(exc)
        metrics.requests.labels(model, "ok").inc()
        metrics.request_seconds.labels(model).observe(time.perf_counter() - started)
        return response

    async def _transcribe_request(model: str, started: float) -> Response:
        body = await request.get_data(cache=False)
        parsed = parse_batch_body(
            request.mimetype, body, request.args.get("sample_rate"), settings.max_batch_audio_secs
        )
        if not recognizer.loaded:
            raise BackendUnavailable(
                "the inference backend has not answered yet; the model sets are not loaded"
            )
        transcript = await recognizer.transcribe(parsed.samples, model)
        metrics.audio_seconds.labels(model, "batch").inc(transcript.audio_seconds)
        document = transcript.to_json(model, (time.perf_counter() - started) * 1000)
        if parsed.opaque is not NO_OPAQUE:
            document["opaque"] = parsed.opaque
        return jsonify(document)

    security.install(app, settings)
    add_stream_route(app, state)
    add_web_routes(app, state)
    return app
