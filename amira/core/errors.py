"""Errors that a client's input causes; each carries the API's `error_type`."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses; `error_type` names it in the API's error table."""

    error_type = "bad_request"


class BadRequest(RequestError):
    error_type = "bad_request"


class BadAudio(RequestError):
    error_type = "bad_audio"


class TooLarge(RequestError):
    error_type = "too_large"


class UnknownModel(RequestError):
    error_type = "unknown_model"


class UnsupportedMediaType(RequestError):
    error_type = "unsupported_media_type"


class CapacityExceeded(RequestError):
    error_type = "capacity_exceeded"
