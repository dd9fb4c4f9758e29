"""Streaming benchmark: N concurrent WebSocket streams paced in real time.

    python -m bench.stream [--backend embedded|triton|triton2|both] [--model small|parakeet|demo|both]
                           [--json out.json] [--quick] [--repeat N] [--streams 1,2,5,10,20,50,100,200]
                           [--decode-modes per-call,batched] [--workers N]

The server runs in its own process (bench/worker.py) with the default streaming windows (chunk
C = 1.6 s, left context 4.0 s, look-ahead Rc = 1.2 s), one segment per stream and no interim
refreshes (`STREAM_ENDPOINTING_MS=false`, `STREAM_INTERIM_SECS=0`: the windows alone, as this
benchmark times them), and `MAX_CONCURRENT_STREAMS` raised to the largest N asked for
(`MAX_QUEUED_CALLS` too: the benchmark measures load, it does not shed it). By default N = 1, 2, 5,
10, 20, and 50, 100, 200 for the small models (not Parakeet-sized ones). `triton2` runs two Triton
processes on the same repository, both in `TRITON_ENDPOINT`; `demo` is the shipped demo model
instead of the random-weight TDT set. Stream j sends two LibriVox clips one after the other (8 to
11 s; which two rotates with j) in 100 ms frames against an absolute clock; stream j starts j/N of
a chunk after the first, so that their windows do not all fall due at the same instant. Per scenario
(N streams, one repetition):

* partial latency: the server cuts window i once it holds more than (i+1)·C + Rc seconds of audio,
  and every result says how much audio it had (`metadata.audio_seconds`), which names the window
  behind it. For each partial whose `committed` text grew, the latency runs from sending the 100 ms
  frame that completed that window's look-ahead to receiving the partial: inference, queueing and
  transport. (Counted from the chunk's last sample, add Rc = 1.2 s of look-ahead wait.)
* final latency: from sending the end-of-stream byte 0x00 to receiving the final result;
* CPU seconds of the server process per audio second (all its threads; with the embedded backend
  this includes inference), and of the Triton process tree per audio second with Triton;
* `decoder_joint` calls, emitted tokens (committed and look-ahead), windows (encoder calls) and
  decoder runs ("spans": two per window, the chunk and its look-ahead), per audio second;
* the largest event-loop stall in the server (a task that sleeps 10 ms and measures how late it
  wakes), and errors (streams without a normal final result);
* the load generator's own CPU (this process: clients, pacing, JSON), per audio second and as a
  share of the wall time (cores), since it shares the machine with the server.

With `--decode-modes per-call,batched` one server runs per decode path (`DECODE_MODE`; with Triton
the per-call server also has `TRITON_DECODE_MODEL=off`, the batched one uses the decode model) and
every scenario runs on each in turn, so that their CPU per audio second is compared in one run.
With `--workers N` the server runs N processes on one port (`WORKERS`), as `amira serve --workers`
does; its CPU and calls are then the sum over them, its stall the largest.

Figures are medians over `--repeat` repetitions of each scenario. Separately, each stream's final
`metadata.tokens` are compared with the batch endpoint's tokens for the same audio (token-level
Levenshtein distance), for the real-time streams and for longer recordings (25 s and 40 s, streamed
as fast as the server takes them: results do not depend on the frame size or pace).
"""

from __future__ import annotations

import math
import time
from contextlib import AsyncExitStack

import httpx
import trio

from amira.client import open_stream_client
from amira.settings import Settings
from amira.testing.recordings import CARDS, read_recording
from amira.testing.text import levenshtein
from amira.testing.ws_protocol import ProtocolViolation, expect_complete, read_until_closed
from bench.common import (
    SAMPLE_RATE,
    Recording,
    ServerProcess,
    Subject,
    fmt,
    librivox_concatenation,
    machine,
    median,
    open_subject,
    own_cpu,
    parser,
    percentile,
    print_table,
    process_tree_cpu,
    recording,
    running_server,
    subjects,
)
from bench.common import (
    write_json as save,
)

DEFAULTS = Settings()
CHUNK, LEFT, RIGHT = (
    DEFAULTS.stream_chunk_secs,
    DEFAULTS.stream_left_context_secs,
    DEFAULTS.stream_right_context_secs,
)
FRAME_SECONDS = 0.1
STREAMS = (1, 2, 5, 10, 20)
HUNDREDS = (50, 100, 200)  # by default for the small models; Parakeet-sized tensors saturate 2 cores at 20
QUICK_STREAMS = (1, 5)
TARGET_STALL_MS = 50.0
CPU_GROWTH_TOLERANCE = 1.10  # CPU per audio second at N = 10 over N = 1: linear growth, with 10 % for noise
# hundreds of streams: p99 final latency at most 1 s with 200 streams embedded, 100 through Triton
TARGET_FINAL_P99_MS = 1000.0
TARGET_STREAMS = {"embedded": 200, "triton": 100, "triton2": 100}


def stream_recordings(quick: bool) -> list[Recording]:
    if quick:
        return [librivox_concatenation([i]) for i in range(5)]
    return [librivox_concatenation([i, i + 1]) for i in range(5)]


def long_recordings(quick: bool) -> list[Recording]:
    """A card (1.1 s: one window, so it must equal the batch result), the LibriVox clips alone, all five
    (25 s), and a 40 s run of them (not in --quick)."""
    singles = [recording("card 001", [read_recording(CARDS[0])])]
    singles += [librivox_concatenation([i]) for i in range(5)]
    if quick:
        return [*singles, librivox_concatenation(range(5), "all five (25 s)")]
    return [
        *singles,
        librivox_concatenation(range(5), "all five (25 s)"),
        librivox_concatenation([0, 1, 2, 3, 4, 0, 2, 1], "40 s"),
    ]


def window_index(received_samples: int) -> int:
    """The window that a result with `received_samples` of audio came from (-1: none yet)."""
    chunk, right = round(CHUNK * SAMPLE_RATE), round(RIGHT * SAMPLE_RATE)
    return math.ceil((received_samples - right) / chunk) - 2


async def one_stream(url: str, item: Recording, *, realtime: bool, delay: float = 0.0) -> dict[str, object]:
    """Send `item` over one stream; latencies in ms, the final tokens, or the error."""
    await trio.sleep(delay)
    frame_samples = round(FRAME_SECONDS * SAMPLE_RATE)
    sent: list[float] = []
    ended = math.nan
    partial_ms: list[float] = []
    final_ms = math.nan
    tokens: list[int] | None = None
    error = None
    try:
        async with open_stream_client(url) as client, trio.open_nursery() as nursery:

            async def sender() -> None:
                nonlocal ended
                started = trio.current_time()
                for index, offset in enumerate(range(0, len(item.pcm), 2 * frame_samples)):
                    if realtime:
                        await trio.sleep_until(started + index * FRAME_SECONDS)
                    await client.send_pcm(item.pcm[offset : offset + 2 * frame_samples])
                    sent.append(trio.current_time())
                await client.end()
                ended = trio.current_time()

            nursery.start_soon(sender)
            committed = ""

            def timed(result: dict) -> None:
                nonlocal final_ms, committed
                now = trio.current_time()
                if result["status"] == "COMPLETE":
                    final_ms = (now - ended) * 1000
                    return
                if not result["is_final"] and len(result["committed"]) > len(committed):
                    window = window_index(round(result["metadata"]["audio_seconds"] * SAMPLE_RATE))
                    chunk, right = round(CHUNK * SAMPLE_RATE), round(RIGHT * SAMPLE_RATE)
                    # the frame that holds the look-ahead's last sample
                    frame = ((window + 1) * chunk + right) // frame_samples
                    if window >= 0 and frame < len(sent):
                        partial_ms.append((now - sent[frame]) * 1000)
                committed = result["committed"]

            # every message, to the close, through the wire checker: a broken rule is an error here too
            record = await read_until_closed(client.connection, seconds=600, on_message=timed)
            tokens = expect_complete(record)["metadata"]["tokens"]
    except (ProtocolViolation, OSError, trio.TooSlowError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # e.g. trio-websocket's handshake errors: count it, keep the benchmark going
        error = f"{type(exc).__name__}: {exc}"
    if tokens is None and error is None:
        error = "no final result"
    return {"partial_ms": partial_ms, "final_ms": final_ms, "tokens": tokens, "error": error}


async def scenario(
    server: ServerProcess, subject: Subject, streams: int, recordings: list[Recording]
) -> dict[str, object]:
    """`streams` concurrent real-time streams; every figure of one repetition."""
    url = server.url.replace("http://", "ws://") + "/v2/decode/stream/default"
    chosen = [recordings[j % len(recordings)] for j in range(streams)]
    before = await server.probe(reset=True)
    triton_before = process_tree_cpu(*subject.triton_pids)
    client_before, began = own_cpu(), trio.current_time()
    results: list[dict[str, object]] = [{}] * streams

    async def run(j: int) -> None:
        results[j] = await one_stream(url, chosen[j], realtime=True, delay=j * CHUNK / streams)

    async with trio.open_nursery() as nursery:
        for j in range(streams):
            nursery.start_soon(run, j)
    client_cpu, wall = own_cpu() - client_before, trio.current_time() - began
    after = await server.probe()
    triton_cpu = process_tree_cpu(*subject.triton_pids) - triton_before
    audio = sum(r.seconds for r in chosen)
    partials = [ms for r in results for ms in r["partial_ms"]]  # type: ignore[attr-defined]
    finals = [r["final_ms"] for r in results if r["error"] is None]

    def per_audio_second(key: str, role: str | None = None) -> float:
        if role is not None:
            return (after["calls"].get(role, 0) - before["calls"].get(role, 0)) / audio
        return (after[key] - before[key]) / audio

    return {
        "streams": streams,
        "audio_s": audio,
        "partial_p50_ms": percentile(partials, 50),
        "partial_p90_ms": percentile(partials, 90),
        "partial_p99_ms": percentile(partials, 99),
        "final_p50_ms": percentile(finals, 50),
        "final_p99_ms": percentile(finals, 99),
        "server_cpu_per_audio_s": per_audio_second("cpu_s"),
        "triton_cpu_per_audio_s": triton_cpu / audio if subject.triton_pids else math.nan,
        "client_cpu_per_audio_s": client_cpu / audio,
        "client_cores": client_cpu / wall,  # the load generator's share of the machine
        "joint_calls_per_audio_s": per_audio_second("", "decoder_joint"),
        "emitted_per_audio_s": per_audio_second("emitted"),
        "windows_per_audio_s": per_audio_second("", "encoder"),
        "spans_per_audio_s": per_audio_second("spans"),
        "max_stall_ms": after["max_stall_ms"],
        "errors": float(sum(r["error"] is not None for r in results)),
        "error_messages": [r["error"] for r in results if r["error"] is not None],
        "streamed_tokens": [r["tokens"] for r in results],
        "recordings": [r.name for r in chosen],
    }


async def idle_cpu(server: ServerProcess, seconds: float = 3.0) -> float:
    """CPU seconds per wall second of the idle server (Hypercorn, the stall watcher, the backend)."""
    before = await server.probe()
    await trio.sleep(seconds)
    after = await server.probe()
    return (after["cpu_s"] - before["cpu_s"]) / (after["time"] - before["time"])


async def batch_tokens(http: httpx.AsyncClient, server: ServerProcess, item: Recording) -> list[int]:
    response = await http.post(
        f"{server.url}/v2/decode/batch/default",
        content=item.pcm,
        headers={"Content-Type": "application/octet-stream"},
    )
    response.raise_for_status()
    return response.json()["metadata"]["tokens"]


def mode_settings(mode: str) -> dict[str, object]:
    """The server settings of one decode path: per-call also turns Triton's decode model off."""
    if mode == "per-call":
        return {"decode_mode": mode, "triton_decode_model": "off"}
    return {"decode_mode": mode}


async def bench_subject(backend: str, model: str, args) -> dict[str, object]:  # type: ignore[no-untyped-def]
    levels = tuple(args.streams) if args.streams else (QUICK_STREAMS if args.quick else STREAMS)
    if not args.streams and not args.quick and model != "parakeet":
        levels += HUNDREDS
    repeat = args.repeat or (1 if args.quick else 2)
    recordings = stream_recordings(args.quick)
    modes = args.decode_modes
    settings = {
        "max_concurrent_streams": max(max(levels), 10),
        "max_queued_calls": max(max(levels), 100),  # measure the load, do not shed it
        "max_batch_audio_secs": 60,
        "stream_chunk_secs": CHUNK,
        "stream_left_context_secs": LEFT,
        "stream_right_context_secs": RIGHT,
        # one segment per stream, so that a result's audio names its window (bench.partials and
        # bench.endpointing measure segments and interim refreshes)
        "stream_endpointing_ms": "false",
        "stream_interim_secs": 0,
        "workers": args.workers,
    }
    async with (
        open_subject(backend, model, args.workdir) as subject,
        AsyncExitStack() as stack,
        httpx.AsyncClient(timeout=120) as http,
    ):
        servers = {
            mode: await stack.enter_async_context(
                running_server(
                    subject, args.workdir / f"server-{mode}.log", **settings, **mode_settings(mode)
                )
            )
            for mode in modes
        }
        server = servers[modes[0]]
        idle = await idle_cpu(server)
        reference = {r.name: await batch_tokens(http, server, r) for r in recordings}
        # edit distance on longer audio, streamed as fast as the server takes it (also a warm-up)
        distances = []
        for item in long_recordings(args.quick):
            batch = await batch_tokens(http, server, item)
            streamed = await one_stream(
                server.url.replace("http://", "ws://") + "/v2/decode/stream/default", item, realtime=False
            )
            distance = levenshtein(streamed["tokens"] or [], batch)  # type: ignore[arg-type]
            distances.append(
                {
                    "recording": item.name,
                    "seconds": item.seconds,
                    "batch_tokens": len(batch),
                    "edit_distance": distance,
                    "rate": distance / max(1, len(batch)),
                    "error": streamed["error"],
                }
            )
        runs: dict[tuple[str, int], list[dict[str, object]]] = {(m, n): [] for m in modes for n in levels}
        for rep in range(repeat):
            for n in levels:
                for mode in modes if rep % 2 == 0 else modes[::-1]:  # alternate which path goes first
                    run = await scenario(servers[mode], subject, n, recordings)
                    run["edit_rates"] = [
                        levenshtein(tokens, reference[name]) / max(1, len(reference[name]))
                        for tokens, name in zip(run["streamed_tokens"], run["recordings"], strict=True)
                        if tokens is not None
                    ]
                    runs[mode, n].append(run)
                    print(
                        f"  {subject.label} {mode} N={n} rep {rep + 1}: partial p50 "
                        f"{fmt(run['partial_p50_ms'])} ms, final p99 {fmt(run['final_p99_ms'])} ms, "
                        f"CPU {fmt(run['server_cpu_per_audio_s'], 4)} s/audio s, "
                        f"stall {fmt(run['max_stall_ms'])} ms, errors {int(run['errors'])}",  # type: ignore[call-overload]
                        flush=True,
                    )
    numeric = [k for k, v in runs[modes[0], levels[0]][0].items() if isinstance(v, float)]
    rows = []
    for mode in modes:
        for n in levels:
            found = runs[mode, n]
            row: dict[str, object] = {
                "backend": backend, "model": model, "mode": mode, "workers": args.workers, "streams": n,
                "repeat": repeat,
            }  # fmt: skip
            row.update({k: median(run[k] for run in found) for k in numeric})  # type: ignore[misc]
            row["errors"] = sum(run["errors"] for run in found)  # type: ignore[misc]
            row["worst_stall_ms"] = max(run["max_stall_ms"] for run in found)  # type: ignore[type-var]
            row["edit_rate_median"] = median(rate for run in found for rate in run["edit_rates"])  # type: ignore[attr-defined]
            row["error_messages"] = [m for run in found for m in run["error_messages"]]  # type: ignore[attr-defined]
            rows.append(row)
    return {
        "backend": backend,
        "model": model,
        "idle_cpu_per_s": idle,
        "rows": rows,
        "edit_distance": distances,
        "runs": {f"{mode} N={n}": found for (mode, n), found in runs.items()},
    }


def targets(subject: dict[str, object], mode: str) -> dict[str, object]:
    rows = {row["streams"]: row for row in subject["rows"] if row["mode"] == mode}  # type: ignore[attr-defined]
    out: dict[str, object] = {
        "joint_calls_within_tokens_plus_windows": all(
            r["joint_calls_per_audio_s"] <= r["emitted_per_audio_s"] + r["windows_per_audio_s"] + 1e-9
            for r in rows.values()
        ),
        "joint_calls_within_tokens_plus_spans": all(
            r["joint_calls_per_audio_s"] <= r["emitted_per_audio_s"] + r["spans_per_audio_s"] + 1e-9
            for r in rows.values()
        ),
    }
    many = TARGET_STREAMS.get(subject["backend"])  # type: ignore[call-overload]
    if many in rows:
        row = rows[many]
        out[f"final_p99_ms_{many}"] = row["final_p99_ms"]
        out[f"met_{many}_streams"] = {
            "no_errors": row["errors"] == 0,
            "final_p99_within_1s": row["final_p99_ms"] <= TARGET_FINAL_P99_MS,
            "stall_under_50ms": row["worst_stall_ms"] < TARGET_STALL_MS,
        }
    if 1 in rows and 10 in rows:
        one, ten = rows[1], rows[10]
        out["errors_10"] = ten["errors"]
        out["final_p99_10_over_median_1"] = ten["final_p99_ms"] / one["final_p50_ms"]
        out["stall_10_ms"] = ten["max_stall_ms"]
        out["cpu_growth_1_to_10"] = ten["server_cpu_per_audio_s"] / one["server_cpu_per_audio_s"]
        out["met"] = {
            "no_errors_10": ten["errors"] == 0,
            "final_p99_within_2x": out["final_p99_10_over_median_1"] <= 2.0,
            "stall_under_50ms": ten["max_stall_ms"] < TARGET_STALL_MS,
            "cpu_at_most_linear": out["cpu_growth_1_to_10"] <= CPU_GROWTH_TOLERANCE,
        }
    return out


def report(results: list[dict[str, object]]) -> dict[str, object]:
    columns = (
        "backend", "model", "decode", "workers", "N", "partial p50", "p90", "p99", "final p50", "final p99",
        "CPU s/audio s", "Triton CPU", "load-gen CPU", "load-gen cores", "joint calls/s", "tokens/s",
        "windows/s", "stall ms", "errors", "edit rate",
    )  # fmt: skip
    rows = [row for result in results for row in result["rows"]]  # type: ignore[attr-defined]
    table = print_table(
        columns,
        [
            (
                r["backend"],
                r["model"],
                r["mode"],
                r["workers"],
                r["streams"],
                r["partial_p50_ms"],
                r["partial_p90_ms"],
                r["partial_p99_ms"],
                r["final_p50_ms"],
                r["final_p99_ms"],
                fmt(r["server_cpu_per_audio_s"], 3),
                fmt(r["triton_cpu_per_audio_s"], 3),
                fmt(r["client_cpu_per_audio_s"], 3),
                fmt(r["client_cores"], 2),
                fmt(r["joint_calls_per_audio_s"], 2),
                fmt(r["emitted_per_audio_s"], 2),
                fmt(r["windows_per_audio_s"], 3),
                r["max_stall_ms"],
                int(r["errors"]),
                fmt(r["edit_rate_median"], 3),
            )
            for r in rows
        ],
    )
    print()
    distance_rows = [
        (
            result["backend"],
            result["model"],
            d["recording"],
            d["seconds"],
            d["batch_tokens"],
            d["edit_distance"],
            fmt(d["rate"], 3),
        )
        for result in results
        for d in result["edit_distance"]  # type: ignore[attr-defined]
    ]
    distance_table = print_table(
        ("backend", "model", "recording", "seconds", "batch tokens", "edit distance", "rate"), distance_rows
    )
    print()
    summary: dict[str, object] = {}
    for result in results:
        modes = list(dict.fromkeys(row["mode"] for row in result["rows"]))  # type: ignore[attr-defined]
        for mode in modes:
            label = f"{result['backend']}/{result['model']}/{mode}"
            summary[label] = found = targets(result, mode)
            print(f"{label}: {found}")
        if {"per-call", "batched"} <= set(modes):
            cpu = {
                row["mode"]: row["server_cpu_per_audio_s"]
                + (  # type: ignore[operator]
                    0.0 if math.isnan(row["triton_cpu_per_audio_s"]) else row["triton_cpu_per_audio_s"]  # type: ignore[arg-type]
                )
                for row in result["rows"]  # type: ignore[attr-defined]
                if row["streams"] == 10
            }
            if cpu:
                ratio = cpu["batched"] / cpu["per-call"]
                label = f"{result['backend']}/{result['model']}: CPU per audio s at N=10, batched / per-call"
                summary[label] = {"ratio": ratio, "met": ratio <= 0.5}
                print(f"{label}: {ratio:.2f} (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    return {"table": table, "edit_distance_table": distance_table, "targets": summary}


async def main(args) -> dict[str, object]:  # type: ignore[no-untyped-def]
    results = []
    async with subjects(args) as pairs:
        for backend, model in pairs:
            print(f"{backend}/{model} ...", flush=True)
            results.append(await bench_subject(backend, model, args))
    summary = report(results)
    return {"benchmark": "stream", "machine": machine(), "quick": args.quick, "subjects": results, **summary}


if __name__ == "__main__":
    command_line = parser(__doc__)
    command_line.add_argument(
        "--streams", type=lambda text: [int(n) for n in text.split(",")], help="e.g. 1,2,5,10,20"
    )
    command_line.add_argument(
        "--decode-modes",
        type=lambda text: text.split(","),
        default=["batched"],
        help="decode paths to compare side by side (DECODE_MODE), e.g. per-call,batched",
    )
    command_line.add_argument(
        "--workers", type=int, default=1, help="server processes (WORKERS; amira.server.workers)"
    )
    arguments = command_line.parse_args()
    started = time.perf_counter()
    document = trio.run(main, arguments)
    document["elapsed_s"] = time.perf_counter() - started
    print(f"elapsed {document['elapsed_s']:.0f} s")
    save(arguments.json, document)
