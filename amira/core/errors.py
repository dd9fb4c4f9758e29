"""The one error family of AMIRA, and the one table that maps each `error_type` onto the wire.

Every failure a client can be told about is an `AmiraError`. Its class names the API's
`error_type` (api.md, "Errors"); `ERROR_TABLE` says how each type leaves the server: the HTTP
status of a request, and the WebSocket close code of a stream. Client mistakes (`RequestError`)
and inference-engine failures (`BackendFailure`) are two branches of the same tree, so a shell
catches `AmiraError` once and looks the answer up here.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


@attrs.frozen
class ErrorKind:
    """How one `error_type` is answered: HTTP status, WebSocket close code, and whether the HTTP
    answer tells the client when to retry (`Retry-After: RETRY_AFTER_SECS`)."""

    http_status: int
    close_code: int
    retry_after: bool = False


ERROR_TABLE: dict[str, ErrorKind] = {
    "bad_request": ErrorKind(400, CLOSE_PROTOCOL_ERROR),
    "bad_audio": ErrorKind(400, CLOSE_PROTOCOL_ERROR),
    "unauthorized": ErrorKind(401, CLOSE_PROTOCOL_ERROR),
    "unknown_model": ErrorKind(404, CLOSE_PROTOCOL_ERROR),
    "request_timeout": ErrorKind(408, CLOSE_PROTOCOL_ERROR),
    "too_large": ErrorKind(413, CLOSE_TOO_BIG),
    "unsupported_media_type": ErrorKind(415, CLOSE_PROTOCOL_ERROR),
    "backend_error": ErrorKind(502, CLOSE_INTERNAL_ERROR),
    "capacity_exceeded": ErrorKind(503, CLOSE_TRY_AGAIN_LATER, retry_after=True),
    "shutting_down": ErrorKind(503, CLOSE_GOING_AWAY, retry_after=True),
    "backend_unavailable": ErrorKind(503, CLOSE_INTERNAL_ERROR, retry_after=True),
    "timeout": ErrorKind(504, CLOSE_INTERNAL_ERROR),
    "internal": ErrorKind(500, CLOSE_INTERNAL_ERROR),
}
RETRY_AFTER_SECS = 1  # what an answer whose kind has `retry_after` tells the client to wait


class AmiraError(Exception):
    """Base of every error a client is told about; `error_type` is its name in `ERROR_TABLE`."""

    error_type: ClassVar[str] = "internal"

    @property
    def kind(self) -> ErrorKind:
        return ERROR_TABLE[self.error_type]


class RequestError(AmiraError):
    """A request the server refuses because of what the client sent or asked for."""

    error_type: ClassVar[str] = "bad_request"


class BadRequest(RequestError):
    error_type: ClassVar[str] = "bad_request"


class BadAudio(RequestError):
    error_type: ClassVar[str] = "bad_audio"


class TooLarge(RequestError):
    error_type: ClassVar[str] = "too_large"


class UnknownModel(RequestError):
    error_type: ClassVar[str] = "unknown_model"


class UnsupportedMediaType(RequestError):
    error_type: ClassVar[str] = "unsupported_media_type"


class CapacityExceeded(RequestError):
    error_type: ClassVar[str] = "capacity_exceeded"


class Unauthorized(RequestError):
    error_type: ClassVar[str] = "unauthorized"


class RequestTimeout(RequestError):
    """The request body did not arrive in full within `BODY_TIMEOUT_SECS`."""

    error_type: ClassVar[str] = "request_timeout"


class ShuttingDown(RequestError):
    """New work that arrives while the server drains for shutdown: retry on another instance."""

    error_type: ClassVar[str] = "shutting_down"


class BackendFailure(AmiraError):
    """A failure of the inference engine: the request was fine, the engine could not serve it."""

    error_type: ClassVar[str] = "backend_error"


class BackendUnavailable(BackendFailure):
    """The engine cannot be reached, or the model is not loaded or not ready."""

    error_type: ClassVar[str] = "backend_unavailable"


class NoHealthyEndpoint(BackendUnavailable):
    """New work refused before it starts because no inference endpoint is healthy (load shedding).

    Its `error_type` is `backend_unavailable`, but a stream refused this way closes with 1013 (try
    again later), like one over capacity: nothing failed under it. A stream whose backend fails in
    the middle still closes with the table's 1011.
    """

    @property
    def kind(self) -> ErrorKind:
        return attrs.evolve(super().kind, close_code=CLOSE_TRY_AGAIN_LATER)


class BackendError(BackendFailure):
    """The engine answered, with an error."""

    error_type: ClassVar[str] = "backend_error"


class BackendTimeout(BackendFailure):
    """The call took longer than the inference timeout."""

    error_type: ClassVar[str] = "timeout"


class InternalError(AmiraError):
    """A bug: logged with its traceback, answered without one."""

    error_type: ClassVar[str] = "internal"
