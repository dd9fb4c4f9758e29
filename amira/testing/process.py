"""A real `amira serve` process, and what abuse tests and benchmarks measure on it.

* `running_server`: `python -m amira.cli serve` in a process group of its own (stopped by its
  id), on a free loopback port, on the embedded backend unless the environment says otherwise;
  its log is collected.
* `ServerProcess.rss_mb`, `peak_mb`, `reset_peak`: resident memory from `/proc/<pid>/status`
  (`VmRSS`, and `VmHWM`, whose high-water mark `clear_refs` resets), so that a test reads the
  peak growth of a burst without sampling.
* `HealthPoller`: `GET /health` over and over from a process of its own (`python -m
  amira.testing.health_poller`), so that the test's own threads cannot delay it; the longest
  round trip is the event-loop stall a client sees.
* `loop_histograms`, `ticks_over`: the same stall as the server sees it (`/metrics`): how many
  10 ms ticks of its event loop came late by more than a bound (`lag`), and how many did once the
  time the OS kept the loop's thread waiting for a CPU is taken off (`stall`). On a shared,
  loaded machine the server may wait tens of milliseconds to be scheduled, which the poller and
  the lag count as stalls; the stall counts only the loop's own work and its waits for the GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import attrs
import httpx

STARTUP_SECS = 60.0


@attrs.define
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    lines: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def _status_kb(self, field: str) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        """The highest resident memory since the last `reset_peak`."""
        return self._status_kb("VmHWM") / 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, signum: int) -> None:
        os.killpg(self.pid, signum)


def limit_open_files(count: int) -> None:
    """`ulimit -n count`, soft and hard: a `preexec_fn` for a server process."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@contextlib.contextmanager
def running_server(
    env: Mapping[str, str] | None = None, *, open_files: int | None = None
) -> Iterator[ServerProcess]:
    """`amira serve` on a free loopback port with `env` on top of this environment (the embedded
    backend unless `env` names `TRITON_ENDPOINT`); `open_files` sets its `ulimit -n`. The process
    group is killed on exit if the server has not ended by then."""
    full_env = os.environ | {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0"}
    full_env.pop("TRITON_ENDPOINT", None)
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "amira.cli", "serve"],
        env=full_env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=None if open_files is None else partial(limit_open_files, open_files),
    )
    lines: list[str] = []
    bound = threading.Event()

    def collect() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "Running on http://" in line:
                bound.set()
        bound.set()  # the server exited

    threading.Thread(target=collect, daemon=True).start()
    try:
        bound.wait(STARTUP_SECS)
        match = re.search(r"Running on (http://\S+)", "".join(lines))
        assert match, f"the server did not start: {''.join(lines)}"
        yield ServerProcess(process, match.group(1), lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class HealthPoller:
    """`GET /health` in a loop from a process of its own while the `with` block runs; then `max_ms`
    is the longest round trip, `count` the number of requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.max_ms = 0.0
        self.count = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthPoller:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "amira.testing.health_poller", self.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "polling"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        try:
            output, _ = self._process.communicate(input="", timeout=30)
            result = json.loads(output)
            self.max_ms, self.count = result["max_ms"], result["count"]
        finally:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)


def loop_histograms(url: str, headers: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """The server's event-loop histograms, `lag` and `stall` (`amira_event_loop_*_seconds`), each as
    upper bound (`le`) -> count."""
    text = httpx.get(f"{url}/metrics", headers=dict(headers or {}), timeout=10).text
    histograms: dict[str, dict[str, float]] = {}
    pattern = r'^amira_event_loop_(lag|stall)_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    for name, le, count in re.findall(pattern, text, re.MULTILINE):
        histograms.setdefault(name, {})[le] = float(count)
    return histograms


def ticks_over(before: Mapping[str, float], after: Mapping[str, float], bound: str) -> float:
    """Ticks of a histogram of `loop_histograms` over `bound` seconds (a bucket bound, e.g. "0.05")
    between two readings."""
    return (after["+Inf"] - after[bound]) - (before["+Inf"] - before[bound])
