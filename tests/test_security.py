"""API keys and CORS through a real server."""

from __future__ import annotations

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from amira.client import to_pcm16
from amira.protocols.native_stream import END_OF_STREAM
from amira.server.security import key_is_valid, origin_allowed, same_origin
from amira.testing.recordings import CARDS, read_recording
from amira.testing.servers import embedded_settings, start_server
from amira.testing.ws_protocol import expect_complete, read_until_closed

KEYS = ("first-key", "second-key")
PCM = to_pcm16(read_recording(CARDS[0]))


@pytest.fixture
async def secured(nursery: trio.Nursery) -> str:
    settings = embedded_settings(api_keys=KEYS, cors_allow_origins=("https://tutor.example",))
    return await start_server(nursery, settings)


ENDPOINTS = [
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/v2/models"),
    ("POST", "/v2/decode/batch/default"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_but_health_needs_a_key(
    http: httpx.AsyncClient, secured: str, method: str, path: str
) -> None:
    body = {"content": PCM, "headers": {"Content-Type": "audio/pcm"}} if method == "POST" else {}
    refused = await http.request(method, f"{secured}{path}", **body)
    assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"
    assert "API key" in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="amira"'  # RFC 7235: how to authenticate
    wrong = await http.request(method, f"{secured}{path}", **body | {"params": {"api_key": "nope"}})
    assert wrong.status_code == 401
    for extra in (
        {"headers": {**body.get("headers", {}), "Authorization": "Bearer second-key"}},
        {"headers": {**body.get("headers", {}), "Authorization": "bearer  first-key"}},  # RFC 7235: 1*SP
        {"headers": {**body.get("headers", {}), "X-API-Key": "first-key"}},
        {"params": {"api_key": "first-key"}},
    ):
        accepted = await http.request(method, f"{secured}{path}", **body | extra)
        assert accepted.status_code == 200, (extra, accepted.text)
    assert (await http.get(f"{secured}/health")).status_code == 200


async def test_only_health_and_the_browser_page_are_open(http: httpx.AsyncClient, secured: str) -> None:
    """Views marked `public` hold no data: the page and its files load from an address bar."""
    for path in ("/health", "/", "/web/app.js"):
        assert (await http.get(f"{secured}{path}")).status_code == 200, path
    assert (await http.get(f"{secured}/web/nothing.js")).status_code == 404  # public, and still checked
    for path in ("/ready", "/metrics", "/v2/models", "/nothing"):
        assert (await http.get(f"{secured}{path}")).status_code == 401, path


async def test_streams_need_a_key_too(secured: str) -> None:
    url = secured.replace("http://", "ws://") + "/v2/decode/stream/default"
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url):
            pass
    assert rejected.value.status_code == 401
    for query, headers in (("?api_key=second-key", []), ("", [("Authorization", "Bearer first-key")])):
        async with open_websocket_url(url + query, extra_headers=headers) as ws:
            await ws.send_message(PCM)
            await ws.send_message(END_OF_STREAM)
            assert expect_complete(await read_until_closed(ws))["transcription"]


async def test_cors_is_closed_except_for_configured_origins(http: httpx.AsyncClient, secured: str) -> None:
    headers = {"X-API-Key": "first-key"}
    allowed = await http.get(f"{secured}/v2/models", headers=headers | {"Origin": "https://tutor.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://tutor.example"
    other = await http.get(f"{secured}/v2/models", headers=headers | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    url = secured.replace("http://", "ws://") + "/v2/decode/stream/default?api_key=first-key"
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url, extra_headers=[("Origin", "https://evil.example")]):
            pass
    assert rejected.value.status_code == 403


REFUSED_CREDENTIALS = [
    {"headers": {"Authorization": "Bearer first-key-and-more"}},  # a valid key is a prefix of it
    {"headers": {"Authorization": "Bearer second-keyX"}},
    {"headers": {"Authorization": "Bearer first-ke"}},  # it is a prefix of a valid key
    {"headers": {"X-API-Key": "first-key2"}},
    {"params": {"api_key": "second-key-"}},
    {"headers": {"Authorization": "Basic first-key"}},  # schemes other than Bearer
    {"headers": {"Authorization": "Digest first-key"}},
    {"headers": {"Authorization": "ApiKey second-key"}},
    {"headers": {"Authorization": "first-key"}},  # no scheme at all
    {"headers": {"Authorization": "Bearerfirst-key"}},
]


@pytest.mark.parametrize("credentials", REFUSED_CREDENTIALS)
async def test_key_prefixes_and_other_schemes_are_refused(
    http: httpx.AsyncClient, secured: str, credentials: dict
) -> None:
    response = await http.get(f"{secured}/v2/models", **credentials)
    assert response.status_code == 401 and response.json()["error_type"] == "unauthorized"
    query = "?" + "&".join(f"{k}={v}" for k, v in credentials.get("params", {}).items())
    url = secured.replace("http://", "ws://") + "/v2/decode/stream/default" + query
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url, extra_headers=list(credentials.get("headers", {}).items())):
            pass
    assert rejected.value.status_code == 401


def test_same_origin_compares_the_origins_host_and_port_with_the_host_header() -> None:
    assert same_origin("http://Amira.example:8057", "amira.example:8057")
    assert same_origin("https://amira.example", "AMIRA.example")
    assert not same_origin("http://amira.example:8058", "amira.example:8057")
    assert not same_origin("http://evil.example", "amira.example")
    assert not same_origin("http://amira.example", None)


def test_a_wildcard_origin_allows_every_origin() -> None:
    settings = embedded_settings(cors_allow_origins=("*",))
    assert origin_allowed("https://anywhere.example", settings)
    assert not origin_allowed(
        "https://anywhere.example", embedded_settings(cors_allow_origins=("https://a",))
    )


def test_key_comparison_checks_every_key() -> None:
    assert key_is_valid("second-key", KEYS) and not key_is_valid("second-ke", KEYS)
    assert not key_is_valid(None, KEYS) and not key_is_valid("", KEYS)
    assert not key_is_valid("second-key2", KEYS) and not key_is_valid("first-keyfirst-key", KEYS)
