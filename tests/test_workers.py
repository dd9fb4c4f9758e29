"""`WORKERS`: several `amira serve` processes on one port (`amira.server.workers`), as real
processes: the supervisor and its workers, reached over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import trio

from amira.cli import supervise_workers
from amira.client import open_stream_client
from amira.server.workers import ABSENT, NOT_READY, STALE_SECS, ConnectionShares
from amira.settings import Settings
from amira.testing.process import ServerProcess, running_server
from amira.testing.recordings import REAL_DOMAIN, pcm16, read_recording

WORKERS = {"WORKERS": "2"}
SPAWN_SECS = 30.0


def children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for_children(pid: int, count: int, other_than: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """The supervisor's `count` workers, once it has them, none of them in `other_than`."""
    deadline = time.monotonic() + SPAWN_SECS
    while time.monotonic() < deadline:
        found = children(pid)
        if len(found) == count and not found & other_than:
            return found
        time.sleep(0.1)
    raise AssertionError(f"the supervisor has workers {children(pid)}, expected {count} new ones")


def wait_until_serving(server: ServerProcess, count: int) -> None:
    """Until `count` workers have loaded their models and are accepting (each says so in the log):
    a worker still loading gets no connections, so the others would take them all."""
    deadline = time.monotonic() + SPAWN_SECS
    while server.log.count("Running on http://") < count:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)


def established_connections(pid: int, port: int) -> int:
    """TCP connections to `port` that process `pid` holds open (its sockets in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def dead(pid: int) -> bool:
    """Exited (a zombie, or reaped): its sockets are closed."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def healthy(url: str, timeout: float = 5) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


async def test_two_workers_share_the_port_and_their_streams_are_exact() -> None:
    """Streams opened at once land evenly on both workers (each accepts only in its turn), and
    every one gets its recording's transcript."""
    cases = REAL_DOMAIN * 3
    with running_server(WORKERS | {"MAX_CONCURRENT_STREAMS": str(len(cases))}) as server:
        workers = wait_for_children(server.pid, 2)
        wait_until_serving(server, 2)
        port = urlparse(server.url).port
        assert port is not None
        connected = trio.Semaphore(0)
        release = trio.Event()
        finals: list[str | None] = [None] * len(cases)

        async def stream(index: int, path: Path) -> None:
            async with open_stream_client(f"{server.ws_url}/v2/decode/stream/default") as client:
                await client.send_pcm(pcm16(read_recording(path)))
                connected.release()
                await release.wait()
                await client.end()
                async for result in client.results():
                    finals[index] = result["transcription"]

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index, (path, _) in enumerate(cases):
                    nursery.start_soon(stream, index, path)
                for _ in cases:
                    await connected.acquire()
                held = {pid: established_connections(pid, port) for pid in workers}
                release.set()
    assert sum(held.values()) == len(cases), held
    assert max(held.values()) - min(held.values()) <= 1, f"connections per worker: {held}"
    assert finals == [text for _, text in cases]


async def test_four_kept_alive_clients_are_two_on_each_worker() -> None:
    """Few long-lived connections are where a hash of the client's port (one `SO_REUSEPORT` socket
    per worker) went wrong: 3 or 4 of 4 on one worker in 5 cases of 8, that worker's single core
    the limit. Taken in turn, they are 2 and 2, every time (five rounds of fresh connections)."""
    with running_server(WORKERS) as server:
        workers = wait_for_children(server.pid, 2)
        wait_until_serving(server, 2)
        port = urlparse(server.url).port
        assert port is not None
        for _ in range(5):
            clients = [httpx.AsyncClient(base_url=server.url, timeout=10) for _ in range(4)]
            try:
                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        for client in clients:
                            nursery.start_soon(client.get, "/health")
                held = sorted(established_connections(pid, port) for pid in workers)
            finally:
                for client in clients:
                    await client.aclose()
            assert held == [2, 2], held
            with trio.fail_after(10):  # until the workers have seen them close
                while any(established_connections(pid, port) for pid in workers):
                    await trio.sleep(0.05)


def test_a_killed_worker_is_replaced_and_sigterm_stops_them_all() -> None:
    with running_server(WORKERS) as server:
        first = wait_for_children(server.pid, 2)
        wait_until_serving(server, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        while not dead(victim):
            time.sleep(0.01)
        deadline = time.monotonic() + SPAWN_SECS
        answered = 0  # until the new worker listens (1 s of restart delay, then its start-up), the
        while server.log.count("Running on http://") < 3:  # survivor answers every new connection
            assert healthy(server.url, timeout=2) and time.monotonic() < deadline, server.log
            answered += 1
        assert answered > 0, server.log
        replaced = wait_for_children(server.pid, 2, other_than={victim})
        assert replaced - first and max(first) in replaced
        path, text = REAL_DOMAIN[0]
        for _ in range(6):  # new connections each, spread over both workers
            response = httpx.post(
                f"{server.url}/v2/decode/batch/default",
                content=path.read_bytes(),
                headers={"Content-Type": "audio/wav"},
                timeout=30,
            )
            assert response.status_code == 200 and response.json()["transcription"] == text
        os.kill(server.pid, signal.SIGTERM)  # the supervisor alone, as Docker or Kubernetes would
        assert server.process.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)  # stopped, and reaped
    assert "worker 0 started" in server.log and f"(pid {victim}) exited with status -9" in server.log


def serve_two_workers_until_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`amira serve --workers 2` on loopback, embedded, with `env` on top: a start that must fail."""
    full_env = os.environ | {"SERVER_HOST": "127.0.0.1"} | env
    full_env.pop("TRITON_ENDPOINT", None)
    return subprocess.run(
        [sys.executable, "-m", "amira.cli", "serve", "--workers", "2"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


def test_a_second_server_on_the_same_port_is_refused() -> None:
    """Its supervisor cannot listen where the first one's does: it exits with status 2, as a single
    process on a port in use does, and the first server goes on answering."""
    with running_server(WORKERS) as server:
        wait_until_serving(server, 2)
        port = urlparse(server.url).port
        done = serve_two_workers_until_exit({"SERVER_PORT": str(port)})
        assert done.returncode == 2, done.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
        assert healthy(server.url)


def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_2(tmp_path: Path) -> None:
    sets = tmp_path / "sets.toml"
    sets.write_text(
        '[model_sets.default]\npreprocessor = "preprocessor"\nencoder = "encoder"\n'
        'decoder_joint = "decoder_joint"\nvocabulary = "missing.txt"\n'
    )
    done = serve_two_workers_until_exit({"SERVER_PORT": "0", "MODEL_SETS_FILE": str(sets)})
    assert done.returncode == 2, done.stderr
    assert "missing.txt" in done.stderr and "configuration error: stopping" in done.stderr


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_worker_count_is_refused(value: str) -> None:
    env = os.environ | {"WORKERS": value}
    done = subprocess.run(
        [sys.executable, "-m", "amira.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and f"WORKERS={value!r}" in done.stderr


def test_workers_without_memfd_are_refused_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the OS has no `memfd_create` (not Linux), nothing listens and nothing starts."""
    monkeypatch.delattr(os, "memfd_create")
    settings = Settings.from_env({"WORKERS": "2", "SERVER_PORT": "0"})
    assert supervise_workers(settings, ["serve"]) == 2
    assert "WORKERS > 1 needs Linux" in capsys.readouterr().err


def test_a_worker_takes_its_turn_only_while_no_live_sibling_has_a_lower_load() -> None:
    shares = ConnectionShares.create(3)
    now = time.monotonic()
    try:
        assert all(shares.is_turn(i, now) for i in range(3))  # alone among the absent: take everything
        shares.set(0, 2, now)
        shares.set(1, 1, now)
        assert shares.is_turn(1, now) and not shares.is_turn(0, now)  # worker 2 is starting (absent)
        shares.set(2, 1, now)
        assert shares.is_turn(1, now) and shares.is_turn(2, now) and not shares.is_turn(0, now)  # ties
        shares.set(1, ABSENT, now)  # died: its connections went with it
        assert shares.is_turn(2, now) and not shares.is_turn(0, now)
        shares.set(2, 0 + NOT_READY, now)  # models not loaded (the backend away): the last to take any
        assert shares.is_turn(0, now) and not shares.is_turn(2, now)
        shares.set(2, 0, now)
        assert not shares.is_turn(0, now + STALE_SECS) and shares.is_turn(0, now + STALE_SECS + 0.01)
        other = ConnectionShares(os.dup(shares.fd), 3)  # a worker's view: the same memory
        try:
            other.set(2, 5, now)
            assert shares.is_turn(0, now)
        finally:
            other.close()
    finally:
        shares.close()
