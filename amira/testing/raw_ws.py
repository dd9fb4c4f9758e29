"""A WebSocket client on a bare TCP socket, for what a well-behaved client library never does: drop the
TCP connection in the middle of a stream without a close frame, or never read what the server sends.

`receive_buffer` shrinks the socket's receive buffer before it connects, so that a client that does
not read stalls the server's sends after a few kilobytes rather than after the megabytes that
loopback buffers hold by default.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from urllib.parse import urlsplit

import numpy as np
import trio

OPCODE_TEXT, OPCODE_BINARY = 0x1, 0x2
HANDSHAKE_TIMEOUT_SECS = 10.0


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame (clients must mask, RFC 6455 5.3)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    key = np.frombuffer((mask * (length // 4 + 1))[:length], np.uint8)
    masked = np.bitwise_xor(np.frombuffer(payload, np.uint8), key).tobytes()
    return header + mask + masked


class RawStream:
    """An upgraded connection: send frames, or drop the TCP connection; it never reads after the upgrade."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def send_binary(self, payload: bytes) -> None:
        await self.stream.send_all(client_frame(OPCODE_BINARY, payload))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(client_frame(OPCODE_TEXT, text.encode()))

    async def drop(self) -> None:
        """Close the TCP connection at once: no close frame, as when a client's network goes away."""
        await self.stream.aclose()


async def open_raw_stream(url: str, receive_buffer: int | None = None) -> RawStream:
    """Connect to `ws://host:port/path?query` and complete the upgrade (101) on a bare socket."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stream = trio.SocketStream(sock)
    with trio.fail_after(HANDSHAKE_TIMEOUT_SECS):
        await sock.connect((host, port))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode("ascii"))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ConnectionError(f"the server closed the connection during the upgrade: {response!r}")
            response += chunk
    status_line = response.split(b"\r\n", 1)[0]
    if not status_line.startswith(b"HTTP/1.1 101"):
        await stream.aclose()
        raise ConnectionError(f"upgrade refused: {status_line!r}")
    return RawStream(stream)
