"""The AMIRA server as a benchmark subject: `serve` in its own process, plus what the benchmarks measure.

    python -m bench.worker        # settings from the environment, as `amira serve` reads them

Binds a free loopback port and prints one JSON line `{"url": ...}` on stdout once it listens. Then
it answers each line on stdin with one JSON line of counters since it started:

* `cpu_s`: user + system CPU time of this process (every thread: Hypercorn, trio, the backend's
  worker threads, and with the embedded backend onnxruntime itself);
* `max_stall_ms`: the largest event-loop stall since the previous `reset` line: a trio task sleeps
  10 ms in a loop, and a stall is how late it wakes up;
* `calls`: backend calls per role (`Engine.calls`); `emitted`: tokens emitted by the greedy
  decoder (committed and tentative); `spans`: decoder runs (one per batch recording, two per
  streaming window: the chunk and its look-ahead, one per interim refresh); `encoded_s`: seconds of
  audio given to the preprocessor and encoder.

End of input (or `quit`) shuts the server down.

With `WORKERS` > 1 it runs the server as `amira serve` does then (`amira.server.workers`): it
listens on the port and starts that many worker processes, which accept from it in turn, each
this module with `--worker-seat`, and answers each line with their counters summed (`max_stall_ms`:
the largest of them; `time`: its own clock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import trio

from amira.engine import Engine, create_backend
from amira.recognizer import Recognizer
from amira.server.runner import serve
from amira.server.workers import Seat, worker_settings
from amira.settings import Settings

STALL_TICK = 0.010


class Probe:
    """Counters that the benchmarks read over stdin/stdout."""

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer
        self.max_stall = 0.0
        self.counts: Counter[str] = Counter()
        engine = recognizer.engine
        decode = engine.decode

        async def counting_decode(model_set, decoder, encoded, offset, limiter) -> None:  # type: ignore[no-untyped-def]
            await decode(model_set, decoder, encoded, offset, limiter)
            self.counts["emitted"] += len(decoder.emissions)
            self.counts["spans"] += 1

        engine.decode = counting_decode  # type: ignore[method-assign]
        encode = engine.encode

        async def counting_encode(model_set, samples, policy):  # type: ignore[no-untyped-def]
            self.counts["encoded_samples"] += samples.size
            return await encode(model_set, samples, policy)

        engine.encode = counting_encode  # type: ignore[method-assign]
        decode_recording = engine.decode_recording

        async def counting_decode_recording(model_set, samples, decoder, policy):  # type: ignore[no-untyped-def]
            self.counts["encoded_samples"] += samples.size  # one call: encoded and decoded in Triton
            lengths = await decode_recording(model_set, samples, decoder, policy)
            self.counts["emitted"] += len(decoder.emissions)
            self.counts["spans"] += 1
            return lengths

        engine.decode_recording = counting_decode_recording  # type: ignore[method-assign]

    async def watch_stalls(self) -> None:
        while True:
            due = trio.current_time() + STALL_TICK
            await trio.sleep_until(due)
            self.max_stall = max(self.max_stall, trio.current_time() - due)

    def report(self) -> dict[str, object]:
        times = os.times()
        return {
            "cpu_s": times.user + times.system,
            "max_stall_ms": self.max_stall * 1000,
            "calls": dict(self.recognizer.engine.calls),
            "emitted": self.counts["emitted"],
            "spans": self.counts["spans"],
            "encoded_s": self.counts["encoded_samples"] / 16_000,
            "time": time.monotonic(),
        }


def answer(document: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def stdin_lines() -> AsyncIterator[str]:
    """The lines of standard input, stripped, to its end."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stdin:
        while data := await stdin.receive_some():
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode().strip()


async def control(probe: Probe, done: trio.Event) -> None:
    async with aclosing(stdin_lines()) as lines:
        async for command in lines:
            if command == "quit":
                break
            if command == "reset":
                probe.max_stall = 0.0
            answer(probe.report())
    done.set()


def merged(reports: list[dict[str, Any]]) -> dict[str, object]:
    """The counters of several workers as one server's."""
    calls: Counter[str] = Counter()
    for report in reports:
        calls.update(report["calls"])
    summed = {key: sum(r[key] for r in reports) for key in ("cpu_s", "emitted", "spans", "encoded_s")}
    return {
        **summed,
        "max_stall_ms": max(r["max_stall_ms"] for r in reports),
        "calls": dict(calls),
        "time": time.monotonic(),
    }


async def supervise(settings: Settings) -> None:
    """`settings.workers` probing workers on one port; every stdin line goes to each of them."""
    from amira.server.runner import hypercorn_config
    from amira.server.workers import ConnectionShares, Seat, listen_on, start_worker
    from bench.common import ServerProcess

    def command(seat: Seat) -> list[str]:
        return [sys.executable, "-m", "bench.worker", "--worker-seat", seat.argument()]

    backlog = hypercorn_config(settings).backlog * settings.workers
    with listen_on(settings.server_host, 0, backlog) as listening:
        shares = ConnectionShares.create(settings.workers)
        workers = []
        try:
            for index in range(settings.workers):
                seat = Seat(listening.fileno(), shares.fd, index)
                process = await start_worker(command, seat, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                workers.append(ServerProcess(process))
            urls = [(await worker._line())["url"] for worker in workers]
            answer({"url": urls[0]})
            async with aclosing(stdin_lines()) as lines:
                async for command_line in lines:
                    if command_line == "quit":
                        break
                    answer(merged([await worker.probe(reset=command_line == "reset") for worker in workers]))
        finally:
            with trio.CancelScope(shield=True):
                for worker in workers:
                    assert worker.process.stdin is not None
                    await worker.process.stdin.aclose()
                with trio.move_on_after(60):
                    for worker in workers:
                        await worker.process.wait()
                for worker in workers:
                    if worker.process.poll() is None:
                        worker.process.kill()
                shares.close()


async def main() -> None:
    settings = Settings.from_env(server_host="127.0.0.1", server_port=0)
    seat = Seat.parse(sys.argv[2]) if sys.argv[1:2] == ["--worker-seat"] else None
    if seat is None and settings.workers > 1:
        await supervise(settings)
        return
    if seat is not None:
        settings = worker_settings(settings)
    recognizer = Recognizer(Engine(create_backend(settings), settings))
    probe = Probe(recognizer)
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve, settings, recognizer, shutdown_trigger=done.wait, seat=seat)
            )
            if not recognizer.engine.loaded:
                raise SystemExit("the backend did not answer at start-up")
            nursery.start_soon(probe.watch_stalls)
            nursery.start_soon(control, probe, done)
            answer({"url": binds[0]})
            await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await recognizer.engine.backend.aclose()


if __name__ == "__main__":
    trio.run(main)
