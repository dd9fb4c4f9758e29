"""A real `amira serve` process on loopback, started from a command line the way a user (or a
container) starts it, and stopped by its process group whatever happens."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_python(argv: Sequence[str]) -> list[str]:
    """`amira ...` as `python -m amira.cli ...` of this interpreter, so the checkout's code runs."""
    if argv and Path(argv[0]).name == "amira":
        return [sys.executable, "-m", "amira.cli", *argv[1:]]
    return list(argv)


@contextmanager
def running_amira(
    command: str | Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None
) -> Iterator[str]:
    """Run an `amira serve` command line on a free loopback port until it answers `/health`;
    yields its base URL, then stops it with SIGTERM (SIGKILL after 20 s) on the way out."""
    argv = as_python(shlex.split(command) if isinstance(command, str) else command)
    port = free_port()
    environment = {**os.environ, **(env or {}), "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)}
    output = log.open("wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        argv, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv} exited with {process.returncode} before answering")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not answer /health within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if log:
            output.close()
