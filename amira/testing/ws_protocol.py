"""The native stream's wire rules (`api.md`), checked on everything a client really receives.

A client that stops reading at the first `COMPLETE` (as `amira.client.StreamClient.results` does)
cannot see a second one, a message after it, or a wrong close code. `read_until_closed` reads a
WebSocket until the server closes it and feeds every message to `WireChecker`, a small state
machine that holds the rules spanning messages:

* every message is one JSON object with `status` `ACTIVE`, `COMPLETE` or `ERROR`;
* `transcription` starts with `committed`; finals carry tokens and words;
* exactly one `COMPLETE` (`is_final: true`) ends a stream that ends normally, and nothing follows
  it but the close, with 1000 (or 1001 when the server shuts down); the stream's results then
  keep the segment rules of `api.md` (`amira.testing.conversation.check_segment_rules`: ids,
  `committed` growing within a segment, one final per segment, the `COMPLETE` made of them);
* an `ERROR` (a documented `error_type`, a message) is the last message, no `COMPLETE` comes
  before or after it, and the close code is the one `ERROR_TABLE` gives its `error_type` (or 1013
  for `backend_unavailable` right after the upgrade: refused, no endpoint being healthy);
* a close with neither, or an unknown close code, is a violation.

Tests and benchmarks share it (`expect_complete`, `expect_error`); `check_results` runs the same
machine over an in-process stream's results. Rules for single messages live in `WireChecker`'s
handlers, rules across a stream's segments in the one function it calls at the `COMPLETE`'s close.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from amira.core.errors import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER, ERROR_TABLE
from amira.core.transcript import StreamResult
from amira.protocols.native_stream import result_document
from amira.testing.conversation import check_segment_rules

READ_TIMEOUT_SECS = 60.0


class ProtocolViolation(AssertionError):
    """What the server sent breaks the wire contract."""


class WirePhase(enum.Enum):
    """Where the stream stands, as the client sees it."""

    STREAMING = "streaming"  # results may come
    COMPLETE = "complete"  # the one COMPLETE came: only the close may follow
    FAILED = "failed"  # an ERROR came: only the close may follow
    CLOSED = "closed"


@attrs.frozen
class StreamRecord:
    """Everything one stream received, in order, and how it was closed."""

    messages: tuple[dict[str, Any], ...]
    close_code: int | None

    @property
    def results(self) -> list[dict[str, Any]]:
        """The `ACTIVE` and `COMPLETE` results (no `ERROR`)."""
        return [m for m in self.messages if m["status"] != "ERROR"]

    @property
    def final(self) -> dict[str, Any]:
        """The `COMPLETE` result."""
        finals = [m for m in self.messages if m["status"] == "COMPLETE"]
        if len(finals) != 1:
            raise ProtocolViolation(f"expected one COMPLETE, got {len(finals)}: {self.statuses}")
        return finals[0]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.messages[-1] if self.messages and self.messages[-1]["status"] == "ERROR" else None

    @property
    def statuses(self) -> list[str]:
        return [m["status"] for m in self.messages]


@attrs.define
class WireChecker:
    """Feed it every message the server sent, then the close code; it raises at the first broken rule."""

    phase: WirePhase = WirePhase.STREAMING
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    close_code: int | None = None

    def feed(self, message: str | bytes) -> dict[str, Any]:
        """One WebSocket message from the server."""
        if not isinstance(message, str):
            self._violation(f"a binary message ({len(message)} bytes); the server sends text only")
        try:
            document = json.loads(message)
        except json.JSONDecodeError:
            self._violation(f"not JSON: {message[:200]!r}")
        return self.feed_document(document)

    def feed_document(self, document: object) -> dict[str, Any]:
        """One message, already parsed."""
        if not isinstance(document, dict):
            self._violation(f"not a JSON object: {document!r:.200}")
        if self.phase is not WirePhase.STREAMING:
            self._violation(f"a message after the stream ended ({self.phase.value}): {document!r:.300}")
        self.messages.append(document)
        match document.get("status"):
            case "ACTIVE":
                self._active(document)
            case "COMPLETE":
                self._complete(document)
            case "ERROR":
                self._error(document)
            case other:
                self._violation(f"unknown status {other!r}")
        return document

    def close(self, code: int | None) -> StreamRecord:
        """The server closed the connection with `code`; the stream's record."""
        self.close_code = code
        match self.phase:
            case WirePhase.STREAMING:
                self._violation(f"closed with {code} before a COMPLETE or an ERROR")
            case WirePhase.COMPLETE if code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
                self._violation(f"closed with {code} after the COMPLETE; expected 1000 or 1001")
            case WirePhase.COMPLETE:
                try:
                    check_segment_rules(self.messages)
                except (AssertionError, KeyError) as broken:
                    self._violation(f"the segment rules are broken: {broken!r:.500}")
            case WirePhase.FAILED:
                error_type = self.messages[-1]["error_type"]
                expected = {ERROR_TABLE[error_type].close_code}
                if error_type == "backend_unavailable" and len(self.messages) == 1:
                    expected.add(CLOSE_TRY_AGAIN_LATER)  # refused at the upgrade: no endpoint is healthy
                if code not in expected:
                    self._violation(f"closed with {code} after an ERROR {error_type}; expected {expected}")
            case WirePhase.CLOSED:
                self._violation("closed twice")
        self.phase = WirePhase.CLOSED
        return self.record()

    def record(self) -> StreamRecord:
        return StreamRecord(tuple(self.messages), self.close_code)

    def _active(self, document: dict[str, Any]) -> None:
        self._transcript(document)
        if not isinstance(document.get("is_final"), bool):
            self._violation("ACTIVE without a boolean is_final")
        if document["is_final"]:
            self._final_metadata(document)

    def _complete(self, document: dict[str, Any]) -> None:
        self._transcript(document)
        if document.get("is_final") is not True:
            self._violation("COMPLETE without is_final: true")
        self._final_metadata(document)
        self.phase = WirePhase.COMPLETE

    def _error(self, document: dict[str, Any]) -> None:
        if document.get("error_type") not in ERROR_TABLE:
            self._violation(f"ERROR with an undocumented error_type {document.get('error_type')!r}")
        if not isinstance(document.get("message"), str) or "Traceback" in document["message"]:
            self._violation(f"ERROR without a clean message: {document.get('message')!r:.300}")
        if not isinstance(document.get("transcription"), str):
            self._violation("ERROR without the transcription so far")
        self.phase = WirePhase.FAILED

    def _transcript(self, document: dict[str, Any]) -> None:
        committed, transcription = document.get("committed"), document.get("transcription")
        if not isinstance(committed, str) or not isinstance(transcription, str):
            self._violation("a result without committed and transcription strings")
        if not transcription.startswith(committed):
            self._violation(f"transcription {transcription!r} does not start with committed {committed!r}")

    def _final_metadata(self, document: dict[str, Any]) -> None:
        metadata = document.get("metadata")
        if not isinstance(metadata, dict) or not {"tokens", "words", "audio_seconds"} <= set(metadata):
            self._violation(f"a final result without tokens, words and audio_seconds: {metadata!r:.300}")

    def _violation(self, what: str) -> NoReturn:
        history = [m.get("status") for m in self.messages]
        raise ProtocolViolation(f"{what} (messages so far: {history})")


async def read_until_closed(
    connection: WebSocketConnection,
    seconds: float = READ_TIMEOUT_SECS,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    checker: WireChecker | None = None,
) -> StreamRecord:
    """Read and check every message until the server closes the connection (within `seconds`);
    `on_message` sees each checked message as it arrives (for tests and benchmarks that time them);
    `checker` goes on from messages a test already fed it one by one."""
    checker = checker or WireChecker()
    with trio.fail_after(seconds):
        try:
            while True:
                document = checker.feed(await connection.get_message())
                if on_message is not None:
                    on_message(document)
        except ConnectionClosed as closed:
            return checker.close(closed.reason.code if closed.reason is not None else None)


def expect_complete(record: StreamRecord, close_code: int = CLOSE_NORMAL) -> dict[str, Any]:
    """The stream ended with its one `COMPLETE` and `close_code`; returns the `COMPLETE`."""
    if record.error is not None:
        raise ProtocolViolation(f"the stream failed: {record.error}")
    if record.close_code != close_code:
        raise ProtocolViolation(f"closed with {record.close_code}, expected {close_code}")
    return record.final


def expect_error(record: StreamRecord, error_type: str) -> dict[str, Any]:
    """The stream ended with an `ERROR` of `error_type` (and its close code); returns the `ERROR`."""
    if record.error is None or record.error["error_type"] != error_type:
        raise ProtocolViolation(f"expected an ERROR {error_type}, got {record.statuses}: {record.error}")
    return record.error


def check_results(results: Iterable[StreamResult]) -> StreamRecord:
    """An in-process stream's results, in order, by the same rules (they end with one `COMPLETE`)."""
    checker = WireChecker()
    for result in results:
        checker.feed_document(result_document(result))
    return checker.close(CLOSE_NORMAL)
