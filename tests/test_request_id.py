"""`X-Request-Id` on batch responses: the client's id echoed (on errors too), or a fresh one."""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from amira.client import to_pcm16
from amira.testing.recordings import CARDS, read_recording
from amira.testing.servers import embedded_settings, start_server

PCM = to_pcm16(read_recording(CARDS[0]))
PCM_HEADERS = {"Content-Type": "audio/pcm"}


@pytest.fixture
async def base(nursery: trio.Nursery) -> str:
    return await start_server(nursery, embedded_settings())


@pytest.mark.parametrize(
    ("model", "body", "status"),
    [("default", PCM, 200), ("nope", PCM, 404), ("default", PCM[:3], 400)],
    ids=["ok", "unknown_model", "bad_request"],
)
async def test_the_clients_request_id_is_echoed(
    http: httpx.AsyncClient, base: str, model: str, body: bytes, status: int
) -> None:
    headers = PCM_HEADERS | {"X-Request-Id": "client-42.retry_1"}
    response = await http.post(f"{base}/v2/decode/batch/{model}", content=body, headers=headers)
    assert response.status_code == status
    assert response.headers["X-Request-Id"] == "client-42.retry_1"


async def test_without_one_each_response_gets_a_fresh_id(http: httpx.AsyncClient, base: str) -> None:
    ids = set()
    for _ in range(3):
        response = await http.post(f"{base}/v2/decode/batch/default", content=PCM, headers=PCM_HEADERS)
        assert response.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{10}", response.headers["X-Request-Id"])
        ids.add(response.headers["X-Request-Id"])
    assert len(ids) == 3


@pytest.mark.parametrize("presented", ["x" * 65, 'id with spaces, "quotes" and <markup>', "a/b", "a:b", ""])
async def test_an_id_outside_the_rule_is_replaced_by_a_fresh_one(
    http: httpx.AsyncClient, base: str, presented: str
) -> None:
    """README: the client's id is echoed when it is 1 to 64 of `[A-Za-z0-9._-]`; any other (too long,
    spaces, quotes, markup, non-ASCII, empty) is replaced, never cut or echoed into headers and logs."""
    headers = PCM_HEADERS | {"X-Request-Id": presented}
    response = await http.post(f"{base}/v2/decode/batch/default", content=PCM, headers=headers)
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{10}", response.headers["X-Request-Id"])
    exact = PCM_HEADERS | {"X-Request-Id": "A.b-c_" + "9" * 58}  # 64: the longest kept
    kept = await http.post(f"{base}/v2/decode/batch/default", content=PCM, headers=exact)
    assert kept.headers["X-Request-Id"] == exact["X-Request-Id"]
