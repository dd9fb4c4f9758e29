"""Batch benchmark: the HTTP batch endpoint against the same recordings decoded in-process.

    python -m bench.batch [--backend embedded|triton|both] [--model small|parakeet|both]
                          [--json out.json] [--quick] [--repeat N]

For each subject (backend x model) and each concurrency c, one *round* sends a fixed list of
requests (the 11 test recordings, 1 to 7 s, cycled; at least 2c requests) from c concurrent
clients, each taking the next request when its last one is answered:

* `server`: `POST /v2/decode/batch/default` with raw s16le PCM, on keep-alive connections
  (`bench/http1.py`, h11: the client's own cost stays near 0.1 ms) to the AMIRA server in its own
  process on loopback;
* `direct`: `Recognizer.transcribe` on the same samples, in this process, on the same backend
  (same Triton, or onnxruntime sessions of the same model): the pipeline with no HTTP in between.

Both rounds run back to back (their order alternates between repetitions), `--repeat` times; each
figure is the median over repetitions of its value in one round. The server overhead ratio at p50
is the median, over requests, of each request's server latency over the direct latency of the same
request in the same repetition (paired, so that which recording lands on the median does not
matter); at p99 it is the ratio of the two p99s. At c = 1 the round trip of `GET /health` (a
request that does nothing: Hypercorn, Quart and loopback alone) gives the *floor*, 1 + health p50 /
direct p50: the lowest ratio any decode of that length could show on this stack. `decoder_joint`
calls are counted by the server (see bench/worker.py) against the tokens it emitted and the windows
it encoded.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable

import trio

from amira import open_recognizer
from amira.settings import Settings
from bench.common import (
    Recording,
    fmt,
    machine,
    median,
    open_subject,
    parser,
    percentile,
    print_table,
    running_server,
    subjects,
    test_recordings,
    write_json,
)
from bench.http1 import Http1Pool

CONCURRENCY = (1, 2, 5, 10, 25, 50)
QUICK_CONCURRENCY = (1, 5, 25)
TARGET_OVERHEAD = 1.15
KEYS = ("requests_per_s", "audio_s_per_s", "p50_ms", "p90_ms", "p99_ms", "errors")

Send = Callable[[Recording], Awaitable[tuple[int, ...]]]


async def run_round(send: Send, requests: list[Recording], concurrency: int) -> dict[str, object]:
    """`requests` from `concurrency` clients; latency percentiles in ms, throughput, errors, and each
    request's latency (NaN for an error) in `latencies`."""
    latencies = [math.nan] * len(requests)
    queue = iter(enumerate(requests))

    async def client() -> None:
        for index, item in queue:
            started = time.perf_counter()
            try:
                await send(item)
            except Exception:
                continue
            latencies[index] = (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    wall = time.perf_counter() - started
    done = [ms for ms in latencies if not math.isnan(ms)]
    return {
        "requests_per_s": len(done) / wall,
        "audio_s_per_s": sum(r.seconds for r in requests) / wall,
        "p50_ms": percentile(done, 50),
        "p90_ms": percentile(done, 90),
        "p99_ms": percentile(done, 99),
        "errors": float(len(requests) - len(done)),
        "latencies": latencies,
    }


def paired_overhead(server: dict[str, object], direct: dict[str, object]) -> float:
    """The median over requests of server latency / direct latency of the same request."""
    pairs = zip(server["latencies"], direct["latencies"], strict=True)  # type: ignore[call-overload]
    return median(s / d for s, d in pairs)


async def bench_subject(backend: str, model: str, args) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    recordings = test_recordings()
    levels = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    repeat = args.repeat or (1 if args.quick else 3)
    rows: list[dict[str, object]] = []
    async with open_subject(backend, model, args.workdir) as subject:
        settings = Settings.from_env(subject.env)
        async with (
            running_server(subject, args.workdir / "server.log") as server,
            open_recognizer(settings) as recognizer,
            Http1Pool(server.url) as http,
        ):
            headers = [("Content-Type", "application/octet-stream")]

            async def via_server(item: Recording) -> tuple[int, ...]:
                status, body = await http.request("POST", "/v2/decode/batch/default", item.pcm, headers)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                return tuple(json.loads(body)["metadata"]["tokens"])

            async def direct(item: Recording) -> tuple[int, ...]:
                return (await recognizer.transcribe(item.samples)).tokens

            async def health(_: Recording) -> tuple[int, ...]:
                status, _body = await http.request("GET", "/health")
                return (status,)

            same = [await via_server(r) == tuple(await direct(r)) for r in recordings]  # also warms up
            if not all(same):
                print(f"{subject.label}: server and direct tokens differ on {same.count(False)} recordings")
            for concurrency in levels:
                count = max(2 * concurrency, len(recordings))
                requests = [recordings[i % len(recordings)] for i in range(count)]
                runs: dict[str, list[dict[str, object]]] = {"server": [], "direct": []}
                before = await server.probe()
                for rep in range(repeat):
                    order = ("direct", "server") if rep % 2 == 0 else ("server", "direct")
                    for path in order:
                        send = via_server if path == "server" else direct
                        runs[path].append(await run_round(send, requests, concurrency))
                floor_ms = math.nan
                if concurrency == 1:  # the stack's fixed cost: a request that does nothing
                    floors = [(await run_round(health, requests, 1))["p50_ms"] for _ in range(3)]
                    floor_ms = median(floors)
                after = await server.probe()
                audio = repeat * sum(r.seconds for r in requests)
                calls = after["calls"].get("decoder_joint", 0) - before["calls"].get("decoder_joint", 0)
                windows = after["calls"].get("encoder", 0) - before["calls"].get("encoder", 0)
                emitted = after["emitted"] - before["emitted"]
                row: dict[str, object] = {
                    "backend": backend,
                    "model": model,
                    "concurrency": concurrency,
                    "requests": count,
                    "repeat": repeat,
                    "tokens_match": all(same),
                    "server": {k: median(run[k] for run in runs["server"]) for k in KEYS},
                    "direct": {k: median(run[k] for run in runs["direct"]) for k in KEYS},
                    "overhead_p50": median(
                        paired_overhead(s, d) for s, d in zip(runs["server"], runs["direct"], strict=True)
                    ),
                    "overhead_p99": median(
                        s["p99_ms"] / d["p99_ms"] for s, d in zip(runs["server"], runs["direct"], strict=True)
                    ),
                    "health_p50_ms": floor_ms,
                    "overhead_floor": 1 + floor_ms / median(run["p50_ms"] for run in runs["direct"]),
                    "joint_calls_per_audio_s": calls / audio,
                    "emitted_per_audio_s": emitted / audio,
                    "windows_per_audio_s": windows / audio,
                    "runs": runs,
                }
                rows.append(row)
                print(
                    f"  {subject.label} c={concurrency}: server p50 {fmt(row['server']['p50_ms'])} ms, "
                    f"direct p50 {fmt(row['direct']['p50_ms'])} ms, overhead {fmt(row['overhead_p50'], 2)}",
                    flush=True,
                )
    return rows


def report(rows: list[dict[str, object]]) -> dict[str, object]:
    columns = (
        "backend", "model", "c", "req/s", "audio s/s", "p50 ms", "p90 ms", "p99 ms",
        "direct p50", "direct p99", "overhead p50", "overhead p99", "errors",
    )  # fmt: skip
    table = print_table(
        columns,
        [
            (
                r["backend"],
                r["model"],
                r["concurrency"],
                r["server"]["requests_per_s"],
                r["server"]["audio_s_per_s"],
                r["server"]["p50_ms"],
                r["server"]["p90_ms"],
                r["server"]["p99_ms"],
                r["direct"]["p50_ms"],
                r["direct"]["p99_ms"],
                fmt(r["overhead_p50"], 2),
                fmt(r["overhead_p99"], 2),
                int(r["server"]["errors"]),
            )
            for r in rows
        ],
    )
    print()
    calls_table = print_table(
        ("backend", "model", "joint calls/audio s", "tokens/audio s", "windows/audio s", "bound met"),
        [
            (
                r["backend"],
                r["model"],
                fmt(r["joint_calls_per_audio_s"], 2),
                fmt(r["emitted_per_audio_s"], 2),
                fmt(r["windows_per_audio_s"], 3),
                _calls_ok(r),
            )
            for r in rows
            if r["concurrency"] == 1
        ],
    )
    targets = {}
    for r in rows:
        if r["concurrency"] == 1:
            label = f"{r['backend']}/{r['model']}"
            targets[label] = {
                "overhead_p50_c1": r["overhead_p50"],
                "overhead_met": r["overhead_p50"] <= TARGET_OVERHEAD,
                "overhead_floor": r["overhead_floor"],
                "joint_calls_met": _calls_ok(r),
                "tokens_match": r["tokens_match"],
            }
            print(
                f"{label}: overhead ratio at p50, c=1: {fmt(r['overhead_p50'], 2)} "
                f"(target <= {TARGET_OVERHEAD}: "
                f"{'met' if targets[label]['overhead_met'] else 'NOT met'}; GET /health alone "
                f"{fmt(r['health_p50_ms'], 2)} ms, a floor of {fmt(r['overhead_floor'], 2)}); "
                f"decoder_joint calls "
                f"{'within' if _calls_ok(r) else 'OVER'} tokens + windows; server tokens "
                f"{'equal' if r['tokens_match'] else 'DIFFER from'} direct"
            )
    return {"table": table, "calls_table": calls_table, "targets": targets}


def _calls_ok(row: dict[str, object]) -> bool:
    bound = row["emitted_per_audio_s"] + row["windows_per_audio_s"]  # type: ignore[operator]
    return not math.isnan(bound) and row["joint_calls_per_audio_s"] <= bound + 1e-9  # type: ignore[operator]


async def main(args) -> dict[str, object]:  # type: ignore[no-untyped-def]
    rows: list[dict[str, object]] = []
    async with subjects(args) as pairs:
        for backend, model in pairs:
            print(f"{backend}/{model} ...", flush=True)
            rows += await bench_subject(backend, model, args)
    summary = report(rows)
    return {"benchmark": "batch", "machine": machine(), "quick": args.quick, "rows": rows, **summary}


if __name__ == "__main__":
    arguments = parser(__doc__).parse_args()
    started = time.perf_counter()
    document = trio.run(main, arguments)
    document["elapsed_s"] = time.perf_counter() - started
    print(f"elapsed {document['elapsed_s']:.0f} s")
    write_json(arguments.json, document)
