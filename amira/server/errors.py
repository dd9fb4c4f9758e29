"""The API's error table: `error_type` -> HTTP status, and the JSON body every error has."""

from __future__ import annotations

from quart import Response, jsonify

from amira.backends.base import BackendFailure
from amira.core.errors import RequestError

HTTP_STATUS = {
    "bad_request": 400,
    "bad_audio": 400,
    "unauthorized": 401,
    "unknown_model": 404,
    "too_large": 413,
    "unsupported_media_type": 415,
    "backend_error": 502,
    "capacity_exceeded": 503,
    "backend_unavailable": 503,
    "timeout": 504,
}
RETRY_AFTER_SECS = 1


def error_response(error_type: str, message: str, status: int | None = None) -> Response:
    response = jsonify({"error": message, "error_type": error_type})
    response.status_code = status or HTTP_STATUS[error_type]
    if error_type == "capacity_exceeded":
        response.headers["Retry-After"] = str(RETRY_AFTER_SECS)
    return response


def exception_response(exc: RequestError | BackendFailure) -> Response:
    return error_response(exc.error_type, str(exc))
