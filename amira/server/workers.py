"""Several server processes on one port (`WORKERS`, `amira serve --workers N`).

One AMIRA process runs its Python on one core at a time (the GIL): its event loop, Hypercorn's and
wsproto's parsing of every frame, the decoders' walks. On a many-core machine that, and not the
model, is what limits it: with the demo model on 2 cores, 200 real-time streams in one process end
with a p99 final latency of 1.9 to 3.6 s, in two processes of about 100 streams each of 41 to
386 ms, for the same CPU time (README "Hundreds of streams"). So `amira serve` can run N worker
processes, each an ordinary server (`amira.server.runner.serve`) with its own event loop, engine
and models.

How connections reach them: the supervisor holds the port with a socket that is bound and never
listens (`reserve_port`; it also turns port 0 into a real one), and gives each worker a socket of
its own bound to the same port with `SO_REUSEPORT` (`worker_socket`, `--listen-fd`), which the
worker's Hypercorn starts listening on once its models are loaded. Linux spreads new connections
over the listening sockets by a hash of the client's address and port, so the workers get even
shares. One socket shared by all of them was measured first and dropped: whichever worker woke
first drained the accept queue, and 200 streams split 106 to 49 (p99 final latency up to 1.5 s
where an even split keeps it within 0.4 s). A worker's socket dies with it: while it restarts, new
connections go to the others and none waits for a process that is not there (connections it had
not yet accepted when it died are reset, as they would be by any dying server); a worker still
loading its models gets none.

What is per worker: the caps (`MAX_CONCURRENT_STREAMS`, `MAX_CONCURRENT_BATCHES`,
`MAX_QUEUED_CALLS`, ...; a machine takes up to N times as many), the loaded models (N times the
memory), `INFERENCE_THREADS` (the usable cores divided among the workers, unless set), and what
`/ready` and `/metrics` report (the worker that accepted the connection answers). So under
Kubernetes run one worker per pod and scale with replicas, where each pod is scraped and probed on
its own; `WORKERS` is for one server on a machine of several cores.

The supervisor (`supervise`) starts the workers, restarts one that dies (after 1 s, doubling to
30 s while it keeps dying within a minute of its start) and stops when a worker exits with status 2
(a configuration error: every worker would fail alike). A worker ignores SIGINT and SIGTERM, which
a terminal or `kill` of the process group also sends it: it stops when its standard input, a pipe
from the supervisor, closes. On SIGINT or SIGTERM the supervisor closes them all, each worker
shuts down gracefully (`serve`), and a worker still running after its grace period is killed. A
supervisor that is killed closes the pipes too, so no worker outlives it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from amira.backends.embedded import usable_cores
from amira.settings import Settings

log = logging.getLogger("amira.server")

CONFIGURATION_ERROR = 2  # the exit status of `amira serve` for bad settings or model sets
FIRST_RESTART_SECS = 1.0
MAX_RESTART_SECS = 30.0
STABLE_SECS = 60.0  # a worker that ran this long before dying is restarted after FIRST_RESTART_SECS
KILL_MARGIN_SECS = 10.0  # beyond a worker's own graceful shutdown


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (port 0: a free one) that never listens: it keeps the port for
    the workers' sockets, also while none of them is listening.

    A server already listening there (another `amira serve`, whose workers' sockets would accept a
    newcomer into their `SO_REUSEPORT` group and share its connections) is refused with `OSError`
    (address in use), as one server process is: a plain bind is tried first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    return _reuse_port_socket(family, (host, port))


def worker_socket(reserved: socket.socket) -> socket.socket:
    """A worker's socket, bound to the reserved port and not listening yet (its Hypercorn listens
    once the app has started)."""
    return _reuse_port_socket(reserved.family, reserved.getsockname())


def _reuse_port_socket(family: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def worker_settings(settings: Settings) -> Settings:
    """A worker's settings: unless `INFERENCE_THREADS` is set, the usable cores shared among them."""
    if settings.inference_threads is not None:
        return settings
    return attrs.evolve(settings, inference_threads=max(1, usable_cores() // settings.workers))


async def stdin_closed() -> None:
    """Return when this process's standard input ends: a worker's shutdown trigger."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some():
            pass


class ConfigurationFailure(Exception):
    """A worker exited with `CONFIGURATION_ERROR`: the supervisor stops with it."""


async def supervise(
    count: int,
    command: Callable[[int], Sequence[str]],
    reserved: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[None]],
    grace_secs: float,
) -> int:
    """Run `count` workers (`command(fd)`: a worker's argv given its socket's descriptor) on the port
    of `reserved` until `shutdown_trigger` returns; 0, or `CONFIGURATION_ERROR` when a worker
    reported one."""
    stopping = trio.Event()
    failed = False
    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(keep_running, index, command, reserved, stopping, grace_secs)
            await shutdown_trigger()
            stopping.set()
    except* ConfigurationFailure:
        failed = True
    return CONFIGURATION_ERROR if failed else 0


async def start_worker(
    command: Callable[[int], Sequence[str]], reserved: socket.socket, **kwargs: Any
) -> trio.Process:
    """A worker process on a socket of its own (`worker_socket`), which this process does not keep:
    it closes when the worker ends. `kwargs` go to `trio.lowlevel.open_process` (stdin, stdout)."""
    with worker_socket(reserved) as sock:
        return await trio.lowlevel.open_process(
            list(command(sock.fileno())), pass_fds=(sock.fileno(),), **kwargs
        )


async def keep_running(
    index: int,
    command: Callable[[int], Sequence[str]],
    reserved: socket.socket,
    stopping: trio.Event,
    grace_secs: float,
) -> None:
    """Worker `index`: started, restarted with backoff when it dies, stopped when `stopping` is set."""
    delay = FIRST_RESTART_SECS
    while not stopping.is_set():
        try:
            process = await start_worker(command, reserved, stdin=subprocess.PIPE)
        except OSError as exc:  # no socket or process (descriptors, memory, the address gone)
            log.error("worker %d could not start: %s; retrying in %.0f s", index, exc, delay)
            with trio.move_on_after(delay):
                await stopping.wait()
            delay = min(2 * delay, MAX_RESTART_SECS)
            continue
        started = trio.current_time()
        log.info("worker %d started (pid %d)", index, process.pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_asked, process, stopping, grace_secs)
            status = await process.wait()
            nursery.cancel_scope.cancel()
        if stopping.is_set():
            log.info("worker %d (pid %d) stopped", index, process.pid)
            return
        if status == CONFIGURATION_ERROR:
            log.error("worker %d (pid %d) exited with a configuration error: stopping", index, process.pid)
            raise ConfigurationFailure
        delay = FIRST_RESTART_SECS if trio.current_time() - started > STABLE_SECS else delay
        log.error(
            "worker %d (pid %d) exited with status %d; restarting in %.0f s",
            index,
            process.pid,
            status,
            delay,
        )
        with trio.move_on_after(delay):
            await stopping.wait()
        delay = min(2 * delay, MAX_RESTART_SECS)


async def stop_when_asked(process: trio.Process, stopping: trio.Event, grace_secs: float) -> None:
    """Once `stopping` is set: close the worker's standard input (its shutdown trigger), wait for it
    for its grace period, then kill it."""
    await stopping.wait()
    assert process.stdin is not None
    with trio.CancelScope(shield=True):
        await process.stdin.aclose()
        with trio.move_on_after(grace_secs + KILL_MARGIN_SECS):
            await process.wait()
        if process.poll() is None:
            log.warning("worker (pid %d) did not stop in time: killed", process.pid)
            process.kill()
            await process.wait()
