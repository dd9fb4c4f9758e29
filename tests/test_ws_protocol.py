"""The wire-rule checker of `amira.testing.ws_protocol` fails on every broken rule it holds
(else the stream tests that rely on it could not fail)."""

from __future__ import annotations

import json

import pytest

from amira.testing.ws_protocol import ProtocolViolation, WireChecker, expect_complete, expect_error

pytestmark = pytest.mark.timeout(10)

SEGMENT = {"id": 0, "start": 0.0, "end": 1.0}


def active(committed: str, transcription: str | None = None, is_final: bool = False) -> dict:
    document = {"status": "ACTIVE", "is_final": is_final, "speech_final": is_final, "from_finalize": False}
    document |= {
        "committed": committed,
        "transcription": committed if transcription is None else transcription,
    }
    document["segment"] = SEGMENT
    document["metadata"] = {"audio_seconds": 1.0} | ({"tokens": [1], "words": []} if is_final else {})
    return document


def complete(text: str = "") -> dict:
    """The COMPLETE of a stream whose only segment final said `text` (none when `text` is empty)."""
    segments = [SEGMENT | {"text": text, "confidence": 1.0}] if text else []
    return {
        "status": "COMPLETE",
        "is_final": True,
        "speech_final": False,
        "from_finalize": False,
        "committed": text,
        "transcription": text,
        "metadata": {"audio_seconds": 1.0, "tokens": [1] if text else [], "words": [], "segments": segments},
    }


def error(error_type: str = "bad_request") -> dict:
    return {"status": "ERROR", "error_type": error_type, "message": "no (stream x)", "transcription": "a"}


def replay(messages: list[dict], code: int | None):
    checker = WireChecker()
    for message in messages:
        checker.feed(json.dumps(message))
    return checker.close(code)


def test_a_well_formed_stream_passes() -> None:
    record = replay([active("a", "a b"), active("a b", is_final=True), complete("a b")], 1000)
    assert expect_complete(record)["committed"] == "a b"
    assert expect_error(replay([active("a"), error()], 1008), "bad_request")["error_type"] == "bad_request"
    assert expect_complete(replay([complete()], 1001), close_code=1001)


@pytest.mark.parametrize(
    ("messages", "code", "broken"),
    [
        ([complete(), complete()], 1000, "after the stream ended"),
        ([complete(), active("a b")], 1000, "after the stream ended"),
        ([error(), complete()], 1008, "after the stream ended"),
        ([active("a")], 1000, "before a COMPLETE or an ERROR"),
        ([], 1011, "before a COMPLETE or an ERROR"),
        ([complete()], 1011, "after the COMPLETE"),
        ([error("bad_request")], 1011, r"expected \{1008\}"),
        ([error("too_large")], 1008, r"expected \{1009\}"),
        ([error("made_up")], 1008, "undocumented error_type"),
        ([{**error(), "message": "Traceback (most recent call last)"}], 1008, "clean message"),
        ([active("a b"), active("a"), active("a", is_final=True), complete("a")], 1000, "segment rules"),
        ([active("a", is_final=True), complete("b")], 1000, "segment rules"),
        ([active("a b", "a c")], 1000, "does not start with committed"),
        ([{**complete(), "is_final": False}], 1000, "is_final: true"),
        ([{**complete(), "metadata": {}}], 1000, "without tokens"),
        ([{**active("a", is_final=True), "metadata": {}}], 1000, "without tokens"),
        ([{"status": "PARTIAL"}], 1000, "unknown status"),
    ],
)
def test_every_broken_rule_is_a_violation(messages: list[dict], code: int, broken: str) -> None:
    with pytest.raises(ProtocolViolation, match=broken):
        replay(messages, code)


def test_the_close_code_and_outcome_are_what_the_test_expects() -> None:
    with pytest.raises(ProtocolViolation, match="expected 1000"):
        expect_complete(replay([complete()], 1001))
    with pytest.raises(ProtocolViolation, match="failed"):
        expect_complete(replay([error()], 1008))
    with pytest.raises(ProtocolViolation, match="expected an ERROR too_large"):
        expect_error(replay([error()], 1008), "too_large")


def test_binary_and_non_json_messages_are_violations() -> None:
    with pytest.raises(ProtocolViolation, match="binary"):
        WireChecker().feed(b"\x00")
    with pytest.raises(ProtocolViolation, match="not JSON"):
        WireChecker().feed("{")
    with pytest.raises(ProtocolViolation, match="not a JSON object"):
        WireChecker().feed("[1]")
