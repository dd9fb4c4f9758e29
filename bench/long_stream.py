"""Bounded cost per window: one long stream, in process, faster than real time.

    python -m bench.long_stream [--minutes 60] [--frame-ms 100] [--endpointing MS|false]

Streams `--minutes` of the demo model's held-out long recordings and the real recordings of
`tests/data` joined with pauses, over and over, through `recognizer.open_stream` on the embedded
backend (default settings: endpointing, interim refreshes), sending frames as fast as the stream
takes them. For every result it records where in the audio it came from, the processing time of
the window behind it (`processing_time_ms`: encoder, decoder and the segment's text, wall clock),
the CPU time the process and its event-loop thread spent since the result before (what another
job on a shared machine does not inflate as much; the loop thread's is where text is built), and
the size of its native-protocol JSON message; and, with `tracemalloc`, the memory AMIRA's code
holds. It
prints the medians and maxima for the first and the last five minutes side by side, and their
ratio (the target: at most 1.2). Only `COMPLETE` grows with the stream: it is built once, and its
size and build time are printed too. The machine may be shared: the ratio compares two stretches of
the same run. What grows is the list of finished segments that `COMPLETE` reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import numpy as np
import trio

from amira import open_recognizer
from amira.core.segments import SegmentOptions
from amira.protocols.native_stream import result_document
from amira.protocols.values import parse_endpointing
from amira.testing.long_audio import DOMAIN, held_out, joined_utterances
from amira.testing.servers import embedded_settings
from bench.common import print_table

SAMPLE_RATE = 16_000
STRETCH_SECS = 300.0


def held_by_amira() -> float:
    """MB allocated by AMIRA's code and still held: the stream's buffers, states, finished segments
    (the benchmark's own records are not counted)."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/amira/*")])
    return sum(stat.size for stat in snapshot.statistics("filename")) / 1e6


def long_audio(minutes: float) -> np.ndarray:
    pieces = [samples for _, samples, _ in held_out()] + [joined_utterances(DOMAIN)[0]]
    cycle = np.concatenate(pieces)
    total = round(minutes * 60 * SAMPLE_RATE)
    return np.tile(cycle, 1 + total // cycle.size)[:total]


async def main(args: argparse.Namespace) -> None:
    audio = long_audio(args.minutes)
    frame = round(args.frame_ms * SAMPLE_RATE / 1000)
    options = SegmentOptions(endpointing_ms=parse_endpointing(args.endpointing))
    rows: list[dict[str, float | str]] = []
    memory: dict[str, float] = {}
    tracemalloc.start()
    async with open_recognizer(embedded_settings()) as recognizer:
        started = time.perf_counter()
        async with recognizer.open_stream(options=options) as stream, trio.open_nursery() as nursery:

            async def send() -> None:
                for offset in range(0, audio.size, frame):
                    await stream.send_audio(audio[offset : offset + frame])
                    position = (offset + frame) / SAMPLE_RATE
                    if "first" not in memory and position >= STRETCH_SECS:
                        memory["first"] = held_by_amira()
                    if "last" not in memory and position >= audio.size / SAMPLE_RATE - 1:
                        memory["last"] = held_by_amira()
                await stream.end()

            nursery.start_soon(send)
            cpu, loop_cpu = time.process_time(), time.thread_time()
            async for result in stream:
                encoded = time.perf_counter()
                size = len(json.dumps(result_document(result)).encode())
                kind = "complete" if result.end_of_stream else "final" if result.is_final else "partial"
                rows.append(
                    {
                        "kind": kind,
                        "at": result.audio_seconds,
                        "ms": result.processing_time_ms,
                        "cpu_ms": (time.process_time() - cpu) * 1000,
                        "loop_cpu_ms": (time.thread_time() - loop_cpu) * 1000,
                        "bytes": size,
                        "document_ms": (time.perf_counter() - encoded) * 1000,
                    }
                )
                cpu, loop_cpu = time.process_time(), time.thread_time()
        elapsed = time.perf_counter() - started
    tracemalloc.stop()
    seconds = audio.size / SAMPLE_RATE
    complete = rows[-1]
    print(
        f"{seconds / 60:.0f} min of audio in {elapsed:.0f} s ({seconds / elapsed:.0f}x real time), "
        f"{sum(r['kind'] == 'final' for r in rows)} segments, {len(rows)} results"
    )

    def stretch(kind: str, key: str, last: bool) -> list[float]:
        low, high = (seconds - STRETCH_SECS, seconds) if last else (0.0, STRETCH_SECS)
        return [float(r[key]) for r in rows if r["kind"] == kind and low <= float(r["at"]) < high]

    table = []
    for kind, key, label in (
        ("partial", "ms", "processing ms per window (partials)"),
        ("partial", "cpu_ms", "process CPU ms per partial"),
        ("partial", "loop_cpu_ms", "event-loop thread CPU ms per partial"),
        ("final", "ms", "processing ms per segment final"),
        ("partial", "bytes", "partial message bytes"),
        ("final", "bytes", "segment final message bytes"),
    ):
        first, last = stretch(kind, key, False), stretch(kind, key, True)
        first_median, last_median = statistics.median(first), statistics.median(last)
        table.append(
            [
                label,
                len(first),
                f"{first_median:.2f}",
                f"{max(first):.1f}",
                len(last),
                f"{last_median:.2f}",
                f"{max(last):.1f}",
                f"{last_median / first_median:.2f}",
            ]
        )
    table.append(
        [
            "memory held by amira, MB (at 5 min, at the end)",
            "",
            f"{memory['first']:.2f}",
            "",
            "",
            f"{memory['last']:.2f}",
            "",
            f"{memory['last'] / memory['first']:.2f}",
        ]
    )
    print_table(
        [
            "",
            "n first",
            "first 5 min median",
            "max",
            "n last",
            "last 5 min median",
            "max",
            "ratio of medians",
        ],
        table,
    )
    print(
        f"COMPLETE: {complete['bytes'] / 1e3:.0f} kB, built in {complete['ms']:.1f} ms "
        f"(the flush included), written in {complete['document_ms']:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--frame-ms", type=float, default=100.0)
    parser.add_argument("--endpointing", default="640", help="milliseconds, or false")
    trio.run(main, parser.parse_args())
