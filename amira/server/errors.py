"""Errors as HTTP responses: the JSON body every error has, with its status from `ERROR_TABLE`.

The compatible dialects answer in their own shape (`dialect_error_response`): every path under
`/v1/listen` is Deepgram's, every other path under `/v1/` OpenAI's, the rest the native API's.
"""

from __future__ import annotations

import uuid

from quart import Response, jsonify

from amira.core.errors import ERROR_TABLE, RETRY_AFTER_SECS, AmiraError
from amira.protocols import deepgram, openai_audio

DEEPGRAM_PREFIX = "/v1/listen"
OPENAI_PREFIX = "/v1/"


def _with_status(response: Response, error_type: str, status: int | None) -> Response:
    kind = ERROR_TABLE[error_type]
    response.status_code = status or kind.http_status
    if kind.retry_after:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECS)
    return response


def error_response(error_type: str, message: str, status: int | None = None) -> Response:
    return _with_status(jsonify({"error": message, "error_type": error_type}), error_type, status)


def exception_response(exc: AmiraError) -> Response:
    return error_response(exc.error_type, str(exc))


def dialect_of(path: str) -> str:
    """The protocol a path belongs to: `deepgram`, `openai` or `native` (also the metrics' label)."""
    if path == DEEPGRAM_PREFIX or path.startswith(DEEPGRAM_PREFIX + "/"):
        return "deepgram"
    return "openai" if path.startswith(OPENAI_PREFIX) else "native"


def dialect_error_response(path: str, error: AmiraError, status: int | None = None) -> Response:
    """`error` in the shape of the dialect that `path` belongs to."""
    dialect = dialect_of(path)
    if dialect == "native":
        return error_response(error.error_type, str(error), status)
    if dialect == "deepgram":
        request_id = str(uuid.uuid4())
        response = jsonify(deepgram.error_document(error, request_id))
        response.headers["dg-request-id"] = request_id
    else:
        response = jsonify(openai_audio.error_document(error))
    return _with_status(response, error.error_type, status)
