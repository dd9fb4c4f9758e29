"""API keys and CORS: the checks every request passes before it reaches a handler.

Keys come in `Authorization: Bearer <key>`, `Authorization: Token <key>` (as Deepgram's SDKs send
them), `X-API-Key: <key>`, or, for browsers, which cannot set headers on a WebSocket, the query
parameter `api_key` or a WebSocket subprotocol: Deepgram's `token, <key>` or OpenAI's
`openai-insecure-api-key.<key>`. They are compared in constant time, and
against every configured key, so that timing tells nothing about which key nearly matched.
`/health` stays open for liveness probes, and so do views marked `public` (the browser page: static
files that hold no data, which must load from an address bar); everything else, `/metrics`
included, needs a key.

CORS is closed by default: no `Access-Control-Allow-Origin` unless the origin is configured. A
WebSocket upgrade that carries an `Origin` header not in the list is refused (403), which stops
other sites' pages from opening streams with a visitor's credentials; a same-origin upgrade (the
`Origin` names the `Host` the request was sent to: the server's own page) is always allowed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from quart import Quart, Response, request, websocket
from werkzeug.datastructures import Headers

from amira.core.errors import Unauthorized
from amira.server.errors import dialect_error_response, dialect_of
from amira.server.metrics import Metrics
from amira.settings import Settings

OPEN_PATHS = ("/health",)
CORS_HEADERS = "Authorization, Content-Type, X-API-Key"

View = TypeVar("View", bound=Callable[..., object])


def public(view: View) -> View:
    """Mark a view as open without an API key (its content must hold no data)."""
    view.amira_public = True  # type: ignore[attr-defined]
    return view


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `Origin` names the host the request was sent to: the server's own page."""
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


OPENAI_KEY_SUBPROTOCOL = "openai-insecure-api-key."
DEEPGRAM_KEY_SUBPROTOCOL = "token"


def subprotocol_key(headers: Headers) -> str | None:
    """A key in `Sec-WebSocket-Protocol`: `token, <key>` (Deepgram) or `openai-insecure-api-key.<key>`."""
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",")]
    for index, protocol in enumerate(offered):
        if protocol.startswith(OPENAI_KEY_SUBPROTOCOL):
            return protocol.removeprefix(OPENAI_KEY_SUBPROTOCOL) or None
        if protocol == DEEPGRAM_KEY_SUBPROTOCOL and index + 1 < len(offered):
            return offered[index + 1] or None
    return None


def presented_key(headers: Headers, args: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and token.strip():
        return token.strip()
    return headers.get("X-API-Key") or args.get("api_key") or subprotocol_key(headers)


def matching_key(presented: str | None, keys: tuple[str, ...]) -> int | None:
    """The position in `keys` of the presented key, or None; every key is compared, in constant time."""
    if presented is None:
        return None
    candidate = presented.encode()
    matched = None
    for index, key in enumerate(keys):
        if hmac.compare_digest(candidate, key.encode()):
            matched = index
    return matched


def key_is_valid(presented: str | None, keys: tuple[str, ...]) -> bool:
    return matching_key(presented, keys) is not None


def origin_allowed(origin: str, settings: Settings) -> bool:
    return "*" in settings.cors_allow_origins or origin in settings.cors_allow_origins


def install(app: Quart, settings: Settings, metrics: Metrics) -> None:
    def refusal(
        path: str, headers: Headers, args: Mapping[str, str], endpoint: str | None
    ) -> Response | None:
        if not settings.api_keys or path in OPEN_PATHS:
            return None
        if getattr(app.view_functions.get(endpoint or ""), "amira_public", False):
            return None
        if key_is_valid(presented_key(headers, args), settings.api_keys):
            return None
        metrics.errors.labels(dialect_of(path), "unauthorized").inc()
        response = dialect_error_response(
            path, Unauthorized("a valid API key is required (Authorization: Bearer or Token, X-API-Key)")
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="amira"'
        return response

    @app.before_request
    async def check_request() -> Response | None:
        if request.method == "OPTIONS":  # CORS preflights carry no credentials
            return None
        return refusal(request.path, request.headers, request.args, request.endpoint)

    @app.before_websocket
    async def check_websocket() -> Response | None:
        origin = websocket.headers.get("Origin")
        host = websocket.headers.get("Host")
        if origin is not None and not (same_origin(origin, host) or origin_allowed(origin, settings)):
            metrics.errors.labels(dialect_of(websocket.path), "unauthorized").inc()
            refused = Unauthorized(f"origin {origin!r} may not open streams")
            return dialect_error_response(websocket.path, refused, 403)
        return refusal(websocket.path, websocket.headers, websocket.args, websocket.endpoint)

    @app.after_request
    async def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin_allowed(origin, settings):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return response
