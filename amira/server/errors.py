"""Errors as HTTP responses: the JSON body every error has, with its status from `ERROR_TABLE`."""

from __future__ import annotations

from quart import Response, jsonify

from amira.core.errors import ERROR_TABLE, RETRY_AFTER_SECS, AmiraError


def error_response(error_type: str, message: str, status: int | None = None) -> Response:
    response = jsonify({"error": message, "error_type": error_type})
    kind = ERROR_TABLE[error_type]
    response.status_code = status or kind.http_status
    if kind.retry_after:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECS)
    return response


def exception_response(exc: AmiraError) -> Response:
    return error_response(exc.error_type, str(exc))
