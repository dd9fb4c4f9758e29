"""Several server processes on one port (`WORKERS`, `amira serve --workers N`).

One AMIRA process runs its Python on one core at a time (the GIL): its event loop, Hypercorn's and
wsproto's parsing of every frame, the decoders' walks. On a many-core machine that, and not the
model, is what limits it: with the demo model on 2 cores, 200 real-time streams in one process end
with a p99 final latency of 1.9 to 3.6 s, in two processes of about 100 streams each of 41 to
386 ms, for the same CPU time (README "Hundreds of streams"). So `amira serve` can run N worker
processes, each an ordinary server (`amira.server.runner.serve`) with its own event loop, engine
and models.

How connections reach them: the supervisor listens on the port (`listen_on`; a second server on a
port in use is refused like one process) and every worker accepts from that one socket, in turn:
a worker takes the next connection only while no live sibling holds fewer open connections than
it does (`ConnectionShares`, a table of open connections per worker in memory the supervisor
shares with them; `Turn`). So connections are spread evenly whatever their number: 4 kept-alive
clients are 2 and 2, where the kernel's hash of `SO_REUSEPORT` (a socket per worker, session 6)
puts 3 or 4 of them on one worker in 5 cases of 8, whose one core then limits them all; and no
worker drains the accept queue ahead of the others, which is what one plain shared socket did
(200 streams split 106 to 49). A worker that died or is still loading its models has no count in
the table and takes nothing: new connections go to the others, and none waits for a process that
is not there (connections it had accepted die with it, as they would with any dying server). While
no worker is ready (at start-up), connections wait in the listening socket's backlog.

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
import mmap
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


def listen_on(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket every worker accepts from, bound to `host:port` (port 0: a free one);
    `OSError` (address in use) when a server listens there already."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


ABSENT = -1  # the count of a worker that is not accepting: dead, restarting or still loading
TURN_POLL_SECS = 0.005  # how often a worker that has more connections than a sibling looks again


class ConnectionShares:
    """Open connections per worker, in shared memory (a `memfd` the supervisor makes and passes to
    its workers): each worker writes its own count, and reads the others' to know its turn. Counts
    are aligned 32-bit integers, each written by one process only, so no read sees half a write."""

    def __init__(self, fd: int, count: int) -> None:
        self.fd, self.count = fd, count
        self._memory = mmap.mmap(fd, 4 * count)
        self._slots = memoryview(self._memory).cast("i")

    @classmethod
    def create(cls, count: int) -> ConnectionShares:
        """A table of `count` workers, all absent."""
        fd = os.memfd_create("amira-connection-shares")
        os.ftruncate(fd, 4 * count)
        shares = cls(fd, count)
        for index in range(count):
            shares.set(index, ABSENT)
        return shares

    def set(self, index: int, connections: int) -> None:
        self._slots[index] = connections

    def get(self, index: int) -> int:
        return int(self._slots[index])

    def is_turn(self, index: int) -> bool:
        """Whether worker `index` may accept: no live sibling has fewer open connections."""
        mine = self._slots[index]
        return all(other < 0 or mine <= other for i, other in enumerate(self._slots) if i != index)

    def close(self) -> None:
        self._slots.release()
        self._memory.close()
        os.close(self.fd)


@attrs.frozen
class Seat:
    """What a worker is given: the listening socket's descriptor, the shares' descriptor, its index.
    On the command line: `--worker-seat LISTEN_FD:SHARES_FD:INDEX`."""

    listen_fd: int
    shares_fd: int
    index: int

    def argument(self) -> str:
        return f"{self.listen_fd}:{self.shares_fd}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> Seat:
        listen_fd, shares_fd, index = (int(part) for part in text.split(":"))
        return cls(listen_fd, shares_fd, index)


@attrs.define
class Turn:
    """A worker's place in the table: it reports its open connections and waits for its turn."""

    shares: ConnectionShares
    index: int

    @classmethod
    def of(cls, seat: Seat, workers: int) -> Turn:
        return cls(ConnectionShares(seat.shares_fd, workers), seat.index)

    def report(self, connections: int) -> None:
        self.shares.set(self.index, connections)

    async def wait(self) -> None:
        """Until no live sibling holds fewer open connections than this worker (the counts change in
        other processes, which no event of this one reports: it looks again every few ms)."""
        while not self.shares.is_turn(self.index):  # noqa: ASYNC110
            await trio.sleep(TURN_POLL_SECS)


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
    command: Callable[[Seat], Sequence[str]],
    listening: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[None]],
    grace_secs: float,
) -> int:
    """Run `count` workers (`command(seat)`: a worker's argv) on `listening` until
    `shutdown_trigger` returns; 0, or `CONFIGURATION_ERROR` when a worker reported one."""
    stopping = trio.Event()
    failed = False
    shares = ConnectionShares.create(count)
    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                seat = Seat(listening.fileno(), shares.fd, index)
                nursery.start_soon(keep_running, seat, command, shares, stopping, grace_secs)
            await shutdown_trigger()
            stopping.set()
    except* ConfigurationFailure:
        failed = True
    finally:
        shares.close()
    return CONFIGURATION_ERROR if failed else 0


async def start_worker(command: Callable[[Seat], Sequence[str]], seat: Seat, **kwargs: Any) -> trio.Process:
    """A worker process in `seat`; `kwargs` go to `trio.lowlevel.open_process` (stdin, stdout)."""
    return await trio.lowlevel.open_process(
        list(command(seat)), pass_fds=(seat.listen_fd, seat.shares_fd), **kwargs
    )


async def keep_running(
    seat: Seat,
    command: Callable[[Seat], Sequence[str]],
    shares: ConnectionShares,
    stopping: trio.Event,
    grace_secs: float,
) -> None:
    """The worker in `seat`: started, restarted with backoff when it dies, stopped when `stopping`
    is set; absent from the shares while it is not running (it enters them once it accepts)."""
    index = seat.index
    delay = FIRST_RESTART_SECS
    while not stopping.is_set():
        shares.set(index, ABSENT)
        try:
            process = await start_worker(command, seat, stdin=subprocess.PIPE)
        except OSError as exc:  # no process (descriptors, memory)
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
            shares.set(index, ABSENT)  # its connections are gone with it; the others take the new ones
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
