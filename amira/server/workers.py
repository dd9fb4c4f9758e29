"""Several server processes on one listening socket (`WORKERS`, `amira serve --workers N`).

One AMIRA process runs its Python on one core at a time (the GIL): its event loop, Hypercorn's and
wsproto's parsing of every frame, the decoders' walks. On a many-core machine that, and not the
model, is what limits it: with the demo model on 2 cores, 200 real-time streams in one process end
with a p99 final latency of 3.6 s, in two processes of 100 streams each of 0.2 s, for the same CPU
time (README "Hundreds of streams"). So `amira serve` can run N worker processes, each an ordinary
server (`amira.server.runner.serve`) with its own event loop, engine and models, accepting on one
listening socket that the supervising process bound and handed down (`--listen-fd`): the kernel
gives each new connection to one of them.

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


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to `host:port` and listening, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
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
    listener: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[None]],
    grace_secs: float,
) -> int:
    """Run `count` workers (`command(fd)`: a worker's argv given the listening socket's descriptor)
    until `shutdown_trigger` returns; 0, or `CONFIGURATION_ERROR` when a worker reported one."""
    stopping = trio.Event()
    failed = False
    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(
                    keep_running, index, command(listener.fileno()), listener, stopping, grace_secs
                )
            await shutdown_trigger()
            stopping.set()
    except* ConfigurationFailure:
        failed = True
    return CONFIGURATION_ERROR if failed else 0


async def keep_running(
    index: int, argv: Sequence[str], listener: socket.socket, stopping: trio.Event, grace_secs: float
) -> None:
    """Worker `index`: started, restarted with backoff when it dies, stopped when `stopping` is set."""
    delay = FIRST_RESTART_SECS
    while not stopping.is_set():
        process = await trio.lowlevel.open_process(
            list(argv), stdin=subprocess.PIPE, pass_fds=(listener.fileno(),)
        )
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
