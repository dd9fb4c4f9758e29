"""Several server processes on one port (`WORKERS`, `amira serve --workers N`).

One AMIRA process runs its Python on one core at a time (the GIL): its event loop, Hypercorn's and
wsproto's parsing of every frame, the decoders' walks. On a many-core machine that, and not the
model, is what limits it: with the demo model on 2 cores, 200 real-time streams in one process end
with a p99 final latency of 1.9 to 3.6 s, in two processes of about 100 streams each of 41 to
386 ms, for the same CPU time (README "Hundreds of streams"). So `amira serve` can run N worker
processes, each an ordinary server (`amira.server.runner.serve`) with its own event loop, engine
and models.

How connections reach them: the supervisor listens on the port (`listen_on`, with one backlog for
all the workers; a second server on a port in use is refused like one process) and every worker
accepts from that one socket, in turn: before each accept a worker waits until no live sibling has
a lower load, its count of open connections (`ConnectionShares`, a table in memory the supervisor
shares with the workers; `Turn`). So connections are spread evenly whatever their number: 4
kept-alive clients are 2 and 2, where the kernel's hash of `SO_REUSEPORT` (a socket per worker,
session 6) puts 3 or 4 of them on one worker in 5 cases of 8, whose one core then limits them all;
and no worker drains the accept queue ahead of the others, which is what one plain shared socket
did (200 streams split 106 to 49). A worker takes nothing while it is starting, stopping, dead or
out of descriptors (absent from the table), nor while it is silent (it beats every 0.1 s; after
`STALE_SECS` without a beat, hung or stalled, it counts as absent); one whose models are not
loaded (the backend away) counts as loaded with `NOT_READY` connections more, so it takes
connections only when every live sibling is in the same state (its `/ready` answers 503 then,
which is the truth). Connections a worker had accepted die with it, as with any dying server.
While no worker accepts (at start-up, or all restarting), connections wait in the backlog.

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

import contextlib
import logging
import mmap
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
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


ABSENT = -1  # the load of a worker that is not accepting: dead, restarting, stopping, or out of descriptors
NOT_READY = 1 << 20  # added to the load of a worker whose models are not loaded: the last to take any
TURN_POLL_SECS = 0.005  # how often a worker that is not the least loaded looks again
BEAT_SECS = 0.1  # how often a worker says it is alive (and its load again)
STALE_SECS = 1.0  # a worker silent this long (hung, or its loop stalled) counts as absent


class ConnectionShares:
    """Each worker's load (its open connections; `NOT_READY` added while its models are not loaded;
    `ABSENT`) and the time of its last beat, in shared memory (a `memfd` the supervisor makes and
    passes to its workers): a worker writes its own, and reads the others' to know its turn. The
    entries are aligned 64-bit integers, so no read sees half a write; a worker's are written by it,
    and by the supervisor only while it is not running."""

    def __init__(self, fd: int, workers: int) -> None:
        self.fd = fd
        self._memory = mmap.mmap(fd, 16 * workers)
        self._entries = memoryview(self._memory).cast("q")  # load, beat (ms of CLOCK_MONOTONIC), per worker

    @classmethod
    def create(cls, workers: int) -> ConnectionShares:
        """A table of `workers` workers, all absent."""
        fd = os.memfd_create("amira-connection-shares")
        os.ftruncate(fd, 16 * workers)
        shares = cls(fd, workers)
        for index in range(workers):
            shares.set(index, ABSENT)
        return shares

    def set(self, index: int, load: int, now: float | None = None) -> None:
        """Worker `index`'s load, and its beat at `now` (`time.monotonic()`, the system's clock)."""
        self._entries[2 * index + 1] = round(1000 * (time.monotonic() if now is None else now))
        self._entries[2 * index] = load

    def is_turn(self, index: int, now: float | None = None) -> bool:
        """Whether worker `index` may accept: no live sibling (present, and heard from within
        `STALE_SECS`) has a lower load."""
        oldest = round(1000 * ((time.monotonic() if now is None else now) - STALE_SECS))
        entries, mine = self._entries, self._entries[2 * index]
        return all(
            entries[2 * other] < 0 or entries[2 * other + 1] < oldest or mine <= entries[2 * other]
            for other in range(len(entries) // 2)
            if other != index
        )

    def close(self) -> None:
        self._entries.release()
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
    """A worker's place in the table: it reports its load, beats while it accepts, and waits for
    its turn. `ready` says whether its models are loaded."""

    shares: ConnectionShares
    index: int
    ready: Callable[[], bool]
    connections: int = 0
    accepting: bool = False

    @classmethod
    def of(cls, seat: Seat, workers: int, ready: Callable[[], bool]) -> Turn:
        return cls(ConnectionShares(seat.shares_fd, workers), seat.index, ready)

    def report(self, connections: int) -> None:
        self.connections = connections
        self._write()

    def _write(self) -> None:
        load = self.connections + (0 if self.ready() else NOT_READY)
        self.shares.set(self.index, load if self.accepting else ABSENT)

    async def beating(self) -> None:
        """Accepting until cancelled: the load and a beat every `BEAT_SECS`, `ABSENT` at the end
        (the worker stops accepting before its last connections close)."""
        self.accepting = True
        try:
            while True:
                self._write()
                await trio.sleep(BEAT_SECS)
        finally:
            self.accepting = False
            self._write()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Absent for a while (out of descriptors: the others take the connections meanwhile)."""
        accepting, self.accepting = self.accepting, False
        self._write()
        try:
            yield
        finally:
            self.accepting = accepting
            self._write()

    async def wait(self) -> None:
        """Until no live sibling has a lower load than this worker (the loads change in other
        processes, which no event of this one reports: it looks again every few ms)."""
        while not self.shares.is_turn(self.index):  # noqa: ASYNC110
            await trio.sleep(TURN_POLL_SECS)

    def close(self) -> None:
        self.shares.close()


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
    is set; absent from the shares while it is not running (it enters them once it accepts, and a
    worker that dies without a word is absent after `STALE_SECS` anyway)."""
    index = seat.index
    delay = FIRST_RESTART_SECS
    while not stopping.is_set():
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
