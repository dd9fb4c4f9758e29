"""`multipart/form-data` bodies (RFC 7578), sans-IO: a whole body in, its parts out.

The body has been read whole, within the server's body limit, before it gets here, so the parts are
slices of it: no temporary files, no streaming state. Header parameters (`name`, `filename`, RFC 2231
`filename*`) are read by the standard library's MIME header parser.
"""

from __future__ import annotations

from email.message import Message

import attrs

from amira.core.errors import BadRequest

MAX_PARTS = 64  # a transcription form has a handful of fields; more is abuse
MAX_HEADER_BYTES = 8192


@attrs.frozen
class FormPart:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def _header_params(value: str, header: str = "content-type") -> Message:
    message = Message()
    message[header] = value
    return message


def boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type header."""
    message = _header_params(content_type)
    if message.get_content_type() != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data body, got Content-Type {content_type or '(none)'!r}"
        )
    value = message.get_param("boundary")
    if not isinstance(value, str) or not 1 <= len(value) <= 70:
        raise BadRequest("the multipart/form-data Content-Type has no valid boundary parameter")
    return value.encode("latin-1", "replace")


def _part(raw: bytes) -> FormPart:
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0 or head_end > MAX_HEADER_BYTES:
        raise BadRequest("a multipart part has no header block")
    headers: dict[str, str] = {}
    for line in raw[:head_end].decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"malformed multipart header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    disposition = _header_params(headers.get("content-disposition", ""), "content-disposition")
    field = disposition.get_param("name", header="content-disposition")
    if disposition.get_content_disposition() != "form-data" or not isinstance(field, str):
        raise BadRequest("a multipart part has no Content-Disposition: form-data; name=...")
    filename = disposition.get_filename()
    content_type = headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    return FormPart(field, filename, content_type, raw[head_end + 4 :])


def parse_form_data(content_type: str, body: bytes) -> list[FormPart]:
    """The parts of a body, in order; a malformed body is `bad_request`."""
    delimiter = b"--" + boundary(content_type)
    position = body.find(delimiter)
    if position < 0:
        raise BadRequest("the multipart body does not contain its boundary")
    parts: list[FormPart] = []
    position += len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts
        if not body.startswith(b"\r\n", position):
            raise BadRequest("malformed multipart body: a boundary is not followed by a line break")
        start = position + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise BadRequest("the multipart body ends before its closing boundary")
        if len(parts) == MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} parts in the multipart body")
        parts.append(_part(body[start:end]))
        position = end + 2 + len(delimiter)
