"""Connections: Hypercorn's protocol stack (`TCPServer`, one per connection) under AMIRA's own
accept loop, because Hypercorn's `serve` can neither bound the number of open connections nor keep
answering while the server drains for shutdown.

* **At most `MAX_CONNECTIONS` open connections.** Past it a new connection is answered at once
  with `503 capacity_exceeded` (`Retry-After`, `Connection: close`) and closed, without reaching
  the application; at most `REFUSALS_AT_ONCE` are being answered at a time, and beyond that a
  connection is closed unanswered. The file descriptors the server may open are checked against
  the cap at start-up (raising the soft limit to the hard one when needed), so that the server
  never meets `EMFILE`, which Hypercorn's accept loop answers with a traceback per connection.
* **Shutdown in seconds.** When the trigger fires: connections that are idle at that moment close
  (Hypercorn's `terminated`), those with a request in progress close after its response; the
  listener stays open, so that load balancers read `/ready` 503 rather than a refused connection,
  and every response then says `Connection: close` (`amira.server.runner.track_requests`);
  connections accepted during the drain get a context of their own, whose idle timer is the
  ordinary keep-alive one (with the shared, terminated one, Hypercorn would close them before
  reading their request). The server stops as soon as no request or stream is in flight, or after
  Hypercorn's graceful timeout.
* **No `permessage-deflate`.** Hypercorn accepts the WebSocket compression every browser offers,
  and wsproto inflates a frame without a bound before the size limit is checked: a 130 KB frame
  became 128 MiB. Speech as 16-bit PCM deflates to 0.74-0.89 of its size (`tests/data`, 100 ms
  frames), so the extension is refused rather than bounded: `refuse_permessage_deflate`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
from collections.abc import Awaitable, Callable

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr
from wsproto.extensions import PerMessageDeflate

from amira.core.errors import RETRY_AFTER_SECS
from amira.server.state import ServerState
from amira.server.workers import Turn
from amira.settings import SettingsError

log = logging.getLogger("amira.server")

REFUSALS_AT_ONCE = 32
ACCEPT_CAPACITY_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)
ACCEPT_RETRY_SECS = 0.1
REFUSAL_SECS = 1.0  # to answer one refused connection, and read what it sent
FD_RESERVE = 256  # descriptors beside client connections: models, backend connections, the loop


class DeclinedDeflate(PerMessageDeflate):
    """`permessage-deflate` that declines every offer, so that no frame is ever inflated."""

    def accept(self, offer: str) -> None:
        return None


def refuse_permessage_deflate() -> None:
    """Make Hypercorn's WebSocket handshake decline compression (it offers no setting for it)."""
    ws_stream.PerMessageDeflate = DeclinedDeflate  # type: ignore[attr-defined]


def ensure_descriptors(max_connections: int) -> None:
    """Raise the soft limit on open files to fit `MAX_CONNECTIONS`, or refuse to start."""
    needed = max_connections + REFUSALS_AT_ONCE + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SettingsError(
                f"MAX_CONNECTIONS={max_connections}: needs {needed} file descriptors, and this process "
                f"may open {hard} (ulimit -n); lower MAX_CONNECTIONS or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        log.info("raised the open-files limit from %d to %d for MAX_CONNECTIONS", soft, needed)


def refusal(limit: int) -> bytes:
    body = json.dumps(
        {"error": f"more than {limit} connections at once; retry shortly", "error_type": "capacity_exceeded"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@attrs.define
class ConnectionGate:
    """Counts open connections; serves those under the cap, refuses the others. The accept loop
    counts a connection as it takes it (`admit`), before the next accept, so that a worker's turn
    (`amira.server.workers.Turn`) always sees every connection it holds."""

    state: ServerState
    limit: int
    turn: Turn | None = None
    open: int = 0
    refusing: int = 0

    def admit(self) -> bool:
        """Count a connection just accepted; False when it is over the cap (refuse it)."""
        if self.open >= self.limit:
            return False
        self._count(+1)
        return True

    async def serve(
        self, stream: trio.SocketStream, serve: Callable[[trio.SocketStream], Awaitable[None]]
    ) -> None:
        """Serve an admitted connection; it is counted until it closes."""
        try:
            await serve(stream)
        finally:
            self._count(-1)

    def _count(self, change: int) -> None:
        self.open += change
        self.state.metrics.connections.set(self.open)
        if self.turn is not None:
            self.turn.report(self.open)

    async def refuse(self, stream: trio.SocketStream) -> None:
        self.state.metrics.rejected.labels("connection").inc()
        if self.refusing >= REFUSALS_AT_ONCE:
            await trio.aclose_forcefully(stream)
            return
        self.refusing += 1
        try:
            with trio.move_on_after(REFUSAL_SECS):
                await stream.send_all(refusal(self.limit))
                await stream.send_eof()
                while await stream.receive_some(65_536):  # closing with unread data would reset the
                    pass  # connection, and the client might lose the answer
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)


async def accept_in_turn(
    listener: trio.SocketListener,
    gate: ConnectionGate,
    serve_one: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept connections (a worker of several only in its turn) and serve each in `nursery`. Out
    of descriptors or memory, wait a little and go on, as `trio.serve_listeners` does."""
    while True:
        if gate.turn is not None:
            await gate.turn.wait()
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("accepting a connection failed (%s); trying again in %.1f s", exc, ACCEPT_RETRY_SECS)
            with contextlib.nullcontext() if gate.turn is None else gate.turn.paused():
                await trio.sleep(ACCEPT_RETRY_SECS)
            continue
        if gate.admit():
            nursery.start_soon(gate.serve, stream, serve_one)
        else:
            nursery.start_soon(gate.refuse, stream)


async def serve_connections(
    app: ASGIFramework,
    config: Config,
    state: ServerState,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    turn: Turn | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `config.bind` until `shutdown_trigger` returns and the work in flight is done.

    `state.shutting_down` is set when the trigger fires; the caller's application refuses new
    work from then on. Call `ensure_descriptors` first, outside any nursery, so that its refusal
    reaches the command line as itself.
    """
    refuse_permessage_deflate()
    wrapped = ASGIWrapper(app)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context, draining_context = WorkerContext(None), WorkerContext(None)
    gate = ConnectionGate(state, state.settings.max_connections, turn)

    async def serve_one(stream: trio.SocketStream) -> None:
        worker = draining_context if state.shutting_down.is_set() else context
        state_copy = ConnectionState(lifespan_state.copy())
        await TCPServer(wrapped, config, worker, state_copy, stream)  # type: ignore[arg-type]

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners, binds = [], []
        for sock in config.create_sockets().insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            await config.log.info(f"Running on {binds[-1]} (CTRL + C to quit)")
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                if gate.turn is not None:  # in the table from now on, absent again once accepting stops
                    accepting.start_soon(gate.turn.beating)
                for listener in listeners:
                    accepting.start_soon(accept_in_turn, listener, gate, serve_one, connections)
                task_status.started(binds)
                await shutdown_trigger()
                state.shutting_down.set()
                await context.terminated.set()  # idle connections close now, busy ones after their response
                with trio.move_on_after(config.graceful_timeout):
                    await state.in_flight.wait_idle()
                accepting.cancel_scope.cancel()
            connections.cancel_scope.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
