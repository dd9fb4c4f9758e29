"""The native batch protocol's JSON reader (`amira.protocols.native_batch`), sans-IO: it must read
every well-formed body exactly as `json.loads` does, in any layout, and refuse the rest with
`bad_request`; long values are cut off before the JSON decoder sees them."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amira.core.errors import AmiraError, BadRequest, TooLarge
from amira.protocols import native_batch
from amira.protocols.native_batch import MAX_FIELD_BYTES, parse_batch_body, parse_json_body
from tests.test_native_protocols import rate_options

FIELDS = ("audio_buffer", "opaque", "sample_rate")
opaques = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
layouts = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"separators": (",", ":")},
        {"separators": (" ,\n ", " :\t")},
        {"ensure_ascii": False},
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    pcm=st.binary(min_size=2, max_size=400).filter(lambda data: len(data) % 2 == 0),
    as_base64=st.booleans(),
    opaque=opaques,
    rate=st.sampled_from([None, 8000, 16000, 44100]),
    layout=layouts,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda key: key not in FIELDS), opaques, max_size=3),
)
def test_well_formed_bodies_read_as_json_loads_reads_them(
    pcm: bytes, as_base64: bool, opaque: object, rate: int | None, layout: dict, extra: dict
) -> None:
    document: dict[str, object] = {"audio_buffer": base64.b64encode(pcm).decode() if as_base64 else list(pcm)}
    document |= extra | {"opaque": opaque} | ({"sample_rate": rate} if rate else {})
    keys = list(document)
    body = json.dumps({key: document[key] for key in reversed(keys)}, **layout).encode()
    try:
        parsed = parse_json_body(body, max_seconds=60)
    except AmiraError as exc:  # the same audio as raw PCM fails the same way (one sample, resampled)
        with pytest.raises(type(exc)):
            parse_batch_body("application/octet-stream", pcm, rate_options(str(rate or 16000)), 60)
        return
    reference = parse_batch_body("application/octet-stream", pcm, rate_options(str(rate or 16000)), 60)
    assert np.array_equal(parsed.samples, reference.samples)
    assert parsed.opaque == json.loads(body)["opaque"]


A = b'{"audio_buffer": '  # the start of most bodies below
SILENCE = A + b"[0,0], "


@pytest.mark.parametrize(
    "body",
    [
        A + b"[1,2,]}", A + b"[1,,2]}", A + b"[,1]}", A + b"[01,2]}", A + b"[1 2]}", A + b"[256,2]}",
        A + b"[1000,2]}", A + b"[-1,2]}", A + b"[1.0,2]}", A + b"[[0],[0]]}", A + b'["]"]}', A + b"[0,0]",
        A + b'"AA=A"}', A + b'"AA\\"A"}', A + b"[0,0]} x", b"[0, 0]", b"", b"\xef\xbb\xbf{}",
        SILENCE + b'"audio_buffer": [0,0]}', b'{"audio_buffer" [0,0]}', A + b'[0,0] "a": 1}',
        SILENCE + b'"opaque": NaN}', SILENCE + b'"opaque": "\xff"}', SILENCE + b'"sample_rate": 16000.0}',
        SILENCE + b'"sample_rate": "\xc2\xb2"}', SILENCE + b'"opaque": ' + b"[" * 33 + b"]" * 33 + b"}",
        SILENCE + b'"opaque": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        SILENCE + b'"sample_rate": ' + b"9" * 5000 + b"}",
        SILENCE + b'"opaque": "' + b"x" * MAX_FIELD_BYTES + b'"}',
        SILENCE + b",".join(b'"k%d": 1' % i for i in range(70)) + b"}",
    ],
)  # fmt: skip
def test_malformed_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json_body(body, max_seconds=60)


def test_the_duration_is_checked_before_the_audio_is_converted() -> None:
    """The last element is out of range: converting would find it; the length alone is too long."""
    body = b'{"audio_buffer": [' + b",".join([b"0"] * 3200) + b', 256], "sample_rate": 8000}'
    with pytest.raises(TooLarge, match=r"limit is 0\.1 s"):
        parse_json_body(body, max_seconds=0.1)
    with pytest.raises(BadRequest, match="from 0 to 255"):
        parse_json_body(body, max_seconds=1)


def test_json_escapes_of_slashes_in_base64_are_read() -> None:
    pcm = bytes(range(256)) * 4
    text = base64.b64encode(pcm).decode().replace("/", "\\/")
    parsed = parse_json_body(b'{"audio_buffer": "' + text.encode() + b'"}', max_seconds=60)
    assert np.array_equal(parsed.samples, parse_batch_body("audio/pcm", pcm, rate_options(None), 60).samples)


def test_long_arrays_are_read_in_chunks_with_the_same_result() -> None:
    pcm = np.random.default_rng(0).integers(0, 256, 3 * native_batch.CHUNK_BYTES // 4 * 2, np.uint8).tobytes()
    parsed = parse_json_body(json.dumps({"audio_buffer": list(pcm)}).encode(), max_seconds=600)
    assert np.array_equal(parsed.samples, parse_batch_body("audio/pcm", pcm, rate_options(None), 600).samples)
