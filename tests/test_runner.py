"""The ASGI-level fix of `amira.server.runner.guard_sends`, on a minimal Quart-Trio app without
AMIRA code served by Hypercorn: without it a connection is never closed, neither after
`Connection: close` or an HTTP/1.0 request nor after the keep-alive timeout; with it, it is.

The first test asserts the fault itself: when it fails, Hypercorn or Quart-Trio fixed it, and the
shield can go."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Quart
from quart_trio import QuartTrio

from amira.server.runner import guard_sends

KEEP_ALIVE_SECS = 0.5
REQUESTS = {
    "connection-close": b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http-1.0": b"GET /ping HTTP/1.0\r\n\r\n",
    "keep-alive": b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
}


def minimal_app() -> Quart:
    app = QuartTrio(__name__)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app


async def closing_times(guarded: bool) -> dict[str, float]:
    """Seconds from each request until the server closed its connection (inf: open after 2 s)."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = KEEP_ALIVE_SECS
    app = minimal_app()
    closed: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, guard_sends(app) if guarded else app, config)
        port = int(binds[0].rsplit(":", 1)[1])
        for name, request in REQUESTS.items():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(request)
                sent, received = trio.current_time(), b""
                closed[name] = float("inf")
                with trio.move_on_after(2):
                    while chunk := await stream.receive_some(4096):
                        received += chunk
                    closed[name] = trio.current_time() - sent
                assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"pong")
        nursery.cancel_scope.cancel()
    return closed


async def test_without_the_guard_quart_trio_connections_are_never_closed() -> None:
    assert await closing_times(guarded=False) == dict.fromkeys(REQUESTS, float("inf"))


async def test_with_the_guard_connections_close_after_the_response_or_the_keep_alive_timeout() -> None:
    closed = await closing_times(guarded=True)
    assert closed["connection-close"] < 0.5 and closed["http-1.0"] < 0.5
    assert KEEP_ALIVE_SECS - 0.05 <= closed["keep-alive"] < KEEP_ALIVE_SECS + 0.5
