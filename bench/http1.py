"""A lean keep-alive HTTP/1.1 client (h11 over trio sockets) for the batch benchmark's load generator.

The benchmark measures what the *server* adds to a decode, so the client's own cost must stay small:
httpx spends about 1.5 ms of Python per request on this class of machine, as much as Hypercorn and
Quart together, while h11 on a plain socket spends about 0.1 ms. Connections are pooled, one per
concurrent request, and reopened when the server closes them (after an error, or when Hypercorn's
per-connection request limit is reached); a request that finds its idle connection closed by the
server (its keep-alive timeout, between two measurements) goes again on a fresh one.
"""

from __future__ import annotations

import h11
import trio


class _Connection:
    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream, self.host = stream, host
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, bytes]:
        headers = [("Host", self.host), ("Content-Length", str(len(body))), *headers]
        data = self.h11.send(h11.Request(method=method, target=target, headers=headers))
        data += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, chunks = 0, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65_536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection mid-response")

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


class Http1Pool:
    """`request` on a pooled connection to one host; leaving the `async with` closes the idle ones."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        host_port = url.split("://", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port, self.timeout = int(port), timeout
        self._idle: list[_Connection] = []

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of one request; raises on a transport error or after `timeout`."""
        with trio.fail_after(self.timeout):
            while True:
                reused = bool(self._idle)
                if reused:
                    connection = self._idle.pop()
                else:
                    connection = _Connection(await trio.open_tcp_stream(self.host, self.port), self.host)
                try:
                    result = await connection.request(method, target, body, headers or [])
                except (trio.BrokenResourceError, ConnectionError, h11.RemoteProtocolError):
                    await trio.aclose_forcefully(connection.stream)
                    if reused:  # the server closed it while it was idle (keep-alive timeout): afresh
                        continue
                    raise
                except BaseException:
                    await trio.aclose_forcefully(connection.stream)
                    raise
                break
        if connection.reusable:
            connection.h11.start_next_cycle()
            self._idle.append(connection)
        else:
            await trio.aclose_forcefully(connection.stream)
        return result

    async def __aenter__(self) -> Http1Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop().stream)
