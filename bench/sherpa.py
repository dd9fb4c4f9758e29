"""AMIRA against sherpa-onnx's C++ offline WebSocket server and onnx-asr, on identical weights.

    python -m bench.sherpa [--clients 1,4,8] [--rounds 3] [--requests 40] [--workers 2] [--json out.json]
                           [--systems 'amira,amira x2'] [--quick]

The weights are the random-weight RNN-T test set `rnnt` (RNN-T: sherpa-onnx caps TDT at 5 symbols
a frame where the contract says 10): AMIRA serves it as is, sherpa-onnx gets the same encoder with
NeMo metadata and `decoder_joint` split into its decoder and joiner by graph surgery
(`amira.testing.sherpa_models`, exact), onnx-asr loads the same files in this process. Requests are
the 5 LibriVox clips (4.95 s on average), cycled; `c` clients send them one after another over
kept-alive connections. Systems, measured in alternating rounds (every system once per round, in
rotating order), figures the median over rounds:

* `sherpa`: `sherpa-onnx-offline-websocket-server` (`--num-threads=1 --max-batch-size=1`: one
  onnxruntime thread per call like AMIRA, and no zero-padded batches, which change the output of an
  encoder without masking; `--num-work-threads` = cores);
* `amira`: the AMIRA server (`POST /v2/decode/batch/rnnt`, raw PCM) on the embedded backend, the
  default decode path (spans batched across requests); `amira per-call`: the same with
  `DECODE_MODE=per-call`, one worker-thread hand-off per `decoder_joint` call (how AMIRA worked
  before);
* `amira triton`: the AMIRA server on a CPU-flavour Triton with the decode model, one HTTP call per
  recording (the decode model runs the preprocessor and encoder by BLS); `amira triton spans`: the
  same with `TRITON_DECODE_MODEL=spans`, three calls per recording (preprocessor, encoder, the
  decode model on the encoder's frames); `amira triton per-call`: the same Triton without the
  decode model (`TRITON_DECODE_MODEL=off`, `DECODE_MODE=per-call`: one HTTP call per
  `decoder_joint` call);
* `amira xN`, `amira triton xN`: `amira` and `amira triton` with `--workers N` (default 2) server
  processes on one port (`WORKERS`, `amira.server.workers`), as `amira serve --workers N` runs;
* `onnx-asr`: onnx-asr's `recognize` in this process, one worker thread per client.

`--systems` measures sherpa-onnx and the named systems only, and starts nothing else: every idle
server on these two cores (its event-loop watch, its Triton health probes) takes a little from the
ones measured. CPU seconds per audio second come from /proc/<pid>/stat of every process involved (the server
process, the Triton process tree, this process for onnx-asr), over the requests of each measurement.

sherpa-onnx's server binds 0.0.0.0 with no option, so the whole benchmark re-runs itself in a
private network namespace (`unshare -n`, loopback up; it needs root): every server it starts is
reachable on loopback only, and each is stopped by PID.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from amira.models import shipped_repository
from amira.testing.reference import reference_decoder
from amira.testing.servers import write_model_sets
from amira.testing.sherpa_models import sherpa_model_dir
from bench.batch import run_round
from bench.common import (
    STARTUP_TIMEOUT,
    Recording,
    Subject,
    fmt,
    librivox_concatenation,
    machine,
    median,
    print_table,
    process_tree_cpu,
    running_server,
    write_json,
)
from bench.http1 import Http1Pool

NETNS_MARK = "AMIRA_BENCH_NETNS"
MODEL_SET = "rnnt"
RNNT = {"encoder": "encoder_rnnt", "decoder_joint": "decoder_joint_rnnt", "vocabulary": "vocab_test.txt"}
CLIENTS = (1, 4, 8)
SHERPA_MESSAGE_BYTES = 10240
# issue 16's targets: label -> (system, clients, figure, True for "at least", the bound)
TARGET_MEASURES = {
    "embedded throughput at c=4 / sherpa (>= 1.0)": ("amira", 4, "requests_per_s", True, 1.0),
    "embedded p50 at c=1 / sherpa (<= 1.2)": ("amira", 1, "p50_ms", False, 1.2),
    "embedded server CPU per audio s / sherpa, c=4 (<= 1.5)": ("amira", 4, "cpu_per_audio_s", False, 1.5),
    "two workers: throughput at c=4 / sherpa (>= 1.0)": ("amira x2", 4, "requests_per_s", True, 1.0),
    "two workers: p50 at c=1 / sherpa (<= 1.2)": ("amira x2", 1, "p50_ms", False, 1.2),
    "two workers: server CPU per audio s / sherpa, c=4 (<= 1.5)": (
        "amira x2",
        4,
        "cpu_per_audio_s",
        False,
        1.5,
    ),
    "Triton throughput at c=4 / sherpa (>= 0.5)": ("amira triton", 4, "requests_per_s", True, 0.5),
}

Send = Callable[[Recording], Awaitable[object]]


def in_private_network() -> None:
    """Re-run this command in a private network namespace with loopback up (once)."""
    if os.environ.get(NETNS_MARK) == "1":
        return
    command = [sys.executable, "-m", "bench.sherpa", *sys.argv[1:]]
    script = 'ip link set lo up && exec "$@"'
    env = os.environ | {NETNS_MARK: "1"}
    result = subprocess.run(["unshare", "--net", "--", "sh", "-c", script, "sh", *command], env=env)
    raise SystemExit(result.returncode)


def sherpa_binary() -> Path:
    return Path(sys.executable).with_name("sherpa-onnx-offline-websocket-server")


class SherpaPool:
    """Kept-alive WebSocket connections to sherpa-onnx's offline server; one utterance at a time each."""

    def __init__(self, nursery: trio.Nursery, url: str) -> None:
        self.nursery, self.url = nursery, url
        self._idle: list[WebSocketConnection] = []
        self._all: list[WebSocketConnection] = []

    async def transcribe(self, item: Recording) -> object:
        connection = self._idle.pop() if self._idle else await self._connect()
        samples = item.samples.astype("<f4").tobytes()
        message = struct.pack("<ii", 16_000, len(samples)) + samples
        with trio.fail_after(60):
            for start in range(0, len(message), SHERPA_MESSAGE_BYTES):
                await connection.send_message(message[start : start + SHERPA_MESSAGE_BYTES])
            reply = await connection.get_message()
        self._idle.append(connection)
        return json.loads(reply)

    async def _connect(self) -> WebSocketConnection:
        connection = await connect_websocket_url(self.nursery, self.url, message_queue_size=4)
        self._all.append(connection)
        return connection

    async def aclose(self) -> None:
        for connection in self._all:
            with trio.move_on_after(5):
                await connection.send_message("Done")
                await connection.aclose()


@asynccontextmanager
async def sherpa_server(model_dir: Path, log: Path) -> AsyncIterator[tuple[str, int]]:
    """sherpa-onnx's offline WebSocket server on `model_dir`: (URL, PID); stopped by PID on the way out."""
    port = 6006
    command = [
        str(sherpa_binary()),
        f"--port={port}",
        f"--encoder={model_dir / 'encoder.onnx'}",
        f"--decoder={model_dir / 'decoder.onnx'}",
        f"--joiner={model_dir / 'joiner.onnx'}",
        f"--tokens={model_dir / 'tokens.txt'}",
        "--feat-dim=128",
        "--num-threads=1",
        "--max-batch-size=1",
        f"--num-work-threads={os.cpu_count() or 2}",
        "--num-io-threads=1",
        f"--log-file={log}",
    ]
    with log.open("ab") as output:
        process = await trio.lowlevel.open_process(command, stdout=output, stderr=output)
    try:
        url = f"ws://127.0.0.1:{port}"
        with trio.fail_after(STARTUP_TIMEOUT):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"sherpa-onnx's server exited ({process.returncode}); see {log}")
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
        yield url, process.pid
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()


def amira_env(repository: Path, sets: Path, **settings: str) -> dict[str, str]:
    return {
        "MODEL_REPOSITORY": str(repository),
        "MODEL_SETS_FILE": str(sets),
        "MAX_CONCURRENT_BATCHES": "64",
    } | settings


async def measure(
    send: Send, requests: list[Recording], clients: int, pids: tuple[int | None, ...] = (), own: bool = False
) -> dict[str, float]:
    """One measurement: throughput, latency, and CPU seconds per audio second of `pids` (or this
    process), and of the first of them alone (the server, without the Triton behind it)."""

    def cpu() -> tuple[float, float]:
        if own:
            times = os.times()
            return times.user + times.system, times.user + times.system
        each = [process_tree_cpu(pid) for pid in pids]
        return sum(each), each[0]

    before = cpu()
    result = await run_round(send, requests, clients)
    after = cpu()
    audio = sum(r.seconds for r in requests)
    return {
        "requests_per_s": float(result["requests_per_s"]),  # type: ignore[arg-type]
        "p50_ms": float(result["p50_ms"]),  # type: ignore[arg-type]
        "errors": float(result["errors"]),  # type: ignore[arg-type]
        "cpu_per_audio_s": (after[0] - before[0]) / audio,
        "server_cpu_per_audio_s": (after[1] - before[1]) / audio,
    }


async def main(args) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from amira.tooling.triton_launcher import local_triton
    from amira.tooling.triton_repository import build_repository

    clips = [librivox_concatenation([i]) for i in range(5)]
    count = args.requests or (10 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 3)
    clients = tuple(int(c) for c in args.clients.split(","))
    work = args.workdir
    source = shipped_repository()
    model_dir = sherpa_model_dir(
        source, RNNT["encoder"], RNNT["decoder_joint"], RNNT["vocabulary"], work / "sherpa"
    )
    sets = write_model_sets(
        work / "sets.toml",
        {MODEL_SET: ("preprocessor", RNNT["encoder"], RNNT["decoder_joint"], RNNT["vocabulary"])},
    )
    local = Subject("embedded", "rnnt", amira_env(source, sets))
    path = f"/v2/decode/batch/{MODEL_SET}"
    headers = [("Content-Type", "application/octet-stream")]
    workers = f"x{args.workers}"
    # the AMIRA systems: name -> (on Triton, server settings)
    servers: dict[str, tuple[bool, dict[str, object]]] = {
        "amira": (False, {}),
        "amira per-call": (False, {"decode_mode": "per-call"}),
        "amira triton": (True, {}),
        "amira triton spans": (True, {"triton_decode_model": "spans"}),
        "amira triton per-call": (True, {"decode_mode": "per-call", "triton_decode_model": "off"}),
        f"amira {workers}": (False, {"workers": args.workers}),
        f"amira triton {workers}": (True, {"workers": args.workers}),
    }
    names = ["sherpa", "onnx-asr", *servers]
    if args.systems:  # sherpa-onnx (the reference of every ratio) and the chosen ones; nothing else runs
        chosen = {"sherpa", *(name.strip() for name in args.systems.split(","))}
        if unknown := chosen - set(names):
            raise SystemExit(f"--systems: unknown {', '.join(sorted(unknown))}; known: {', '.join(names)}")
        names = [name for name in names if name in chosen]

    async with (
        trio.open_nursery() as nursery,
        AsyncExitStack() as stack,
        sherpa_server(model_dir, work / "sherpa.log") as (sherpa_url, sherpa_pid),
    ):
        sherpa = SherpaPool(nursery, sherpa_url)
        systems: dict[str, tuple[Send, tuple[int | None, ...], bool]] = {
            "sherpa": (sherpa.transcribe, (sherpa_pid,), False)
        }
        if "onnx-asr" in names:
            onnx_asr = reference_decoder(source, MODEL_SET, work)

            async def in_process(item: Recording) -> object:
                return await trio.to_thread.run_sync(onnx_asr.text, item.samples)

            systems["onnx-asr"] = (in_process, (), True)
        triton_pid: int | None = None
        on_triton = local
        if any(servers[name][0] for name in names if name in servers):
            triton_repo = build_repository(
                source,
                work / "triton",
                "cpu",
                models=("preprocessor", RNNT["encoder"], RNNT["decoder_joint"]),
                clean=True,
            )
            triton = await stack.enter_async_context(
                local_triton(triton_repo, log_path=work / "triton.log", startup_timeout=STARTUP_TIMEOUT)
            )
            triton_pid = triton.pid
            on_triton = Subject("triton", "rnnt", amira_env(triton_repo, sets, TRITON_ENDPOINT=triton.url))

        def http_send(pool: Http1Pool) -> Send:
            async def send(item: Recording) -> object:
                status, body = await pool.request("POST", path, item.pcm, headers)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                return json.loads(body)["metadata"]["tokens"]

            return send

        pools = []
        for name in names:
            if name not in servers:
                continue
            uses_triton, settings = servers[name]
            log = work / f"{name.replace(' ', '-')}.log"
            server = await stack.enter_async_context(
                running_server(on_triton if uses_triton else local, log, **settings)
            )
            pool = Http1Pool(server.url)
            pools.append(pool)
            pids = (server.process.pid, triton_pid) if uses_triton else (server.process.pid,)
            systems[name] = (http_send(pool), pids, False)
        for send, _, _ in systems.values():  # warm up every system on every clip
            for clip in clips:
                await send(clip)
        requests = [clips[i % len(clips)] for i in range(count)]
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_index in range(rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for c in clients:
                for name in order:
                    send, pids, own = systems[name]
                    result = await measure(send, requests, c, pids, own)
                    runs.setdefault((name, c), []).append(result)
                    print(
                        f"round {round_index + 1} c={c} {name}: {fmt(result['requests_per_s'])} req/s, "
                        f"p50 {fmt(result['p50_ms'])} ms, CPU {result['cpu_per_audio_s']:.4f} s/audio s",
                        flush=True,
                    )
        for pool in pools:
            await pool.__aexit__()
        await sherpa.aclose()
        nursery.cancel_scope.cancel()
    return report(runs, names, clients, rounds, count)


def report(
    runs: dict[tuple[str, int], list[dict[str, float]]],
    names: list[str],
    clients: tuple[int, ...],
    rounds: int,
    count: int,
) -> dict[str, object]:
    figures = {
        f"{name} c={c}": {k: median(r[k] for r in runs[name, c]) for k in runs[name, c][0]}
        for name, c in runs
    }
    rows = []
    for name in names:
        for c in clients:
            f = figures[f"{name} c={c}"]
            sherpa = figures[f"sherpa c={c}"]
            rows.append(
                [
                    name,
                    c,
                    f["requests_per_s"],
                    f["requests_per_s"] / sherpa["requests_per_s"],
                    f["p50_ms"],
                    f["p50_ms"] / sherpa["p50_ms"],
                    f"{f['cpu_per_audio_s']:.4f}",
                    f"{f['cpu_per_audio_s'] / sherpa['cpu_per_audio_s']:.2f}",
                    f"{f['server_cpu_per_audio_s']:.4f}",
                    int(f["errors"]),
                ]
            )
    table = print_table(
        [
            "system",
            "c",
            "req/s",
            "x sherpa",
            "p50 ms",
            "p50 / sherpa",
            "CPU s/audio s",
            "CPU / sherpa",
            "of it the server's",
            "errors",
        ],
        rows,
    )

    def ratio(name: str, c: int, key: str) -> float:
        return figures[f"{name} c={c}"][key] / figures[f"sherpa c={c}"][key]

    targets: dict[str, float] = {}
    met = []
    for label, (name, c, key, at_least, bound) in TARGET_MEASURES.items():
        if f"{name} c={c}" in figures:  # measured in this run (`--systems`, `--clients`)
            targets[label] = ratio(name, c, key)
            met.append(targets[label] >= bound if at_least else targets[label] <= bound)
    print_table(
        ["target", "measured", "met"],
        [[k, f"{v:.2f}", "yes" if ok else "**no**"] for (k, v), ok in zip(targets.items(), met, strict=True)],
    )
    return {
        "machine": machine(),
        "rounds": rounds,
        "requests": count,
        "figures": figures,
        "runs": {f"{name} c={c}": r for (name, c), r in runs.items()},
        "targets": targets,
        "table": table,
    }


def cli() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int, help="requests per measurement (default 40)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--systems", help="measure only these (comma-separated names, e.g. 'amira triton,amira triton spans')"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="server processes of the `amira xN` systems (WORKERS)"
    )
    args = parser.parse_args()
    in_private_network()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amira-sherpa-") as workdir:
        args.workdir = Path(workdir)
        document = trio.run(main, args)
    document["wall_s"] = time.monotonic() - started
    write_json(args.json, document)


if __name__ == "__main__":
    cli()
