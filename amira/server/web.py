"""The browser page at `/`: a microphone and a file upload in front of the server's own API.

The page is static (HTML, a JavaScript module and an AudioWorklet shipped in `amira/web/`, no build
step, nothing from a CDN) and talks to the same endpoints as every other client, so it proves the
wire contract rather than a private one. Its files are served without an API key, since a page
that needs a key to load cannot be opened from an address bar and holds no data; every call it
makes (`/v2/models`, the batch endpoint, the stream) needs the key like any other client's.
"""

from __future__ import annotations

import mimetypes
import re
from importlib.resources import files
from pathlib import Path

from quart import Quart, Response, request

from amira.server import security
from amira.server.errors import error_response
from amira.server.state import ServerState

WEB_FILES = ("index.html", "app.js", "pcm-worklet.js", "style.css")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
HOST_PATTERN = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def web_directory() -> Path:
    """The page's files inside the installed package."""
    return Path(str(files("amira").joinpath("web")))


def content_security_policy(host: str) -> str:
    """Only this server's own scripts and connections (its WebSocket included): the page holds an
    API key, so no other origin may run code in it or receive anything from it."""
    sockets = f" ws://{host} wss://{host}" if HOST_PATTERN.fullmatch(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; media-src 'self' blob:; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def add_web_routes(app: Quart, state: ServerState) -> None:
    """Register `/` and `/web/<file>` when `WEB_UI` is on; without it both are plain 404s."""
    if not state.settings.web_ui_enabled:
        return
    directory = web_directory()
    contents = {name: (directory / name).read_bytes() for name in WEB_FILES}

    def page_file(name: str) -> Response:
        suffix = Path(name).suffix
        content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "text/plain"
        response = Response(contents[name], content_type=f"{content_type}; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = content_security_policy(request.host)
        return response

    @app.get("/")
    @security.public
    async def web_index() -> Response:
        return page_file("index.html")

    @app.get("/web/<name>")
    @security.public
    async def web_file(name: str) -> Response:
        if name not in contents:
            return error_response("bad_request", f"no page file {name!r}", 404)
        return page_file(name)
