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


async def test_a_long_request_id_is_cut_to_64_characters(http: httpx.AsyncClient, base: str) -> None:
    headers = PCM_HEADERS | {"X-Request-Id": "x" * 200}
    response = await http.post(f"{base}/v2/decode/batch/default", content=PCM, headers=headers)
    assert response.headers["X-Request-Id"] == "x" * 64


async def test_a_request_id_is_sanitised_before_it_is_echoed_or_logged(
    http: httpx.AsyncClient, base: str
) -> None:
    headers = PCM_HEADERS | {"X-Request-Id": 'id with spaces, "quotes" and <markup>'}
    response = await http.post(f"{base}/v2/decode/batch/default", content=PCM, headers=headers)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", response.headers["X-Request-Id"])
