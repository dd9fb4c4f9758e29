"""Word-to-partial latency on the demo model: how soon after a word is spoken a result shows it.

    python -m bench.partials [--streams 1,10] [--interim 0,0.2,0.4,0.8] [--seconds 30] [--json out.json]

The server runs in its own process (bench/worker.py, embedded backend, the shipped demo model as
the `default` set) with `STREAM_INTERIM_SECS` set per scenario (0: no interim refreshes, the tail
comes only from each window's look-ahead) and default windows and endpointing. N concurrent streams
each send about `--seconds` of the held-out long recordings of `tests/data/held_out` (utterances
joined with pauses), in 100 ms frames paced in real time against an absolute clock; stream j starts
j/N of a second after the first.

Per word of the batch transcript of the same audio (decoded in this process), the latency runs
from the word's end in the audio (its `end` in the batch transcript, on the real-time clock of its
stream) to receiving the first result whose text shows it: the stream's text at a result is its
segment finals so far followed by the open segment's partial, and a batch word is shown when a
minimal edit script from that text to the batch words keeps it. Words that no result ever shows are
counted apart. Word ends come from the frames of their last token, and this model emits a word's
token near its start, so the figures are upper bounds on what a listener would feel.

Also per scenario: the encoder's work (seconds of audio encoded per audio second, from the server's
counters: each window encodes its left context, chunk and look-ahead; each refresh its left context
and the uncommitted audio), its increase over the same N without refreshes, and the server's CPU
seconds per audio second. The machine is shared: read the figures side by side, not on their own.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import trio

from amira import open_recognizer
from amira.client import open_stream_client
from amira.models import shipped_repository
from amira.testing.long_audio import held_out
from amira.testing.recordings import pcm16
from amira.testing.servers import embedded_settings
from amira.testing.text import matched_positions
from bench.common import Subject, percentile, print_table, running_server, write_json

FRAME_SECONDS = 0.1
SAMPLE_RATE = 16_000
DEMO = Subject("embedded", "demo", {"MODEL_REPOSITORY": str(shipped_repository())})


async def one_stream(
    url: str, samples: np.ndarray, words: list[str], starts: list[float], delay: float
) -> dict[str, object]:
    """Stream `samples` in real time; per batch word (by position), when a result first showed it.

    A result received at `now` is matched against the batch words that began before `now`: the
    audio sent by then (a word cannot be shown before it is spoken; this keeps a repeated word from
    matching a later one)."""
    await trio.sleep(delay)
    words_shown: dict[int, float] = {}
    pcm = pcm16(samples)
    frame_bytes = 2 * round(FRAME_SECONDS * SAMPLE_RATE)
    async with open_stream_client(url) as client, trio.open_nursery() as nursery:
        started = trio.current_time()

        async def sender() -> None:
            for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
                await trio.sleep_until(started + index * FRAME_SECONDS)
                await client.send_pcm(pcm[offset : offset + frame_bytes])
            await client.end()

        nursery.start_soon(sender)
        finished: list[str] = []
        final_text = ""
        async for result in client.results():
            now = trio.current_time() - started
            if result["status"] == "COMPLETE":
                final_text = result["transcription"]
                shown = final_text.split()
            elif result["is_final"]:
                finished.append(result["transcription"])
                shown = " ".join(finished).split()
            else:
                shown = " ".join([*finished, result["transcription"]]).split()
            spoken = sum(start < now for start in starts)
            for position in matched_positions(shown, words[:spoken]):
                words_shown.setdefault(position, now)
    return {"shown": words_shown, "final": final_text}


Audio = tuple[np.ndarray, list[str], list[float], list[float]]  # samples, batch words, starts, ends


async def scenario(url: str, streams: int, audio: list[Audio]) -> dict[str, object]:
    results: list[dict[str, object]] = [{}] * streams

    async def run(j: int) -> None:
        samples, words, starts, _ = audio[j % len(audio)]
        results[j] = await one_stream(url, samples, words, starts, j / streams)

    async with trio.open_nursery() as nursery:
        for j in range(streams):
            nursery.start_soon(run, j)
    latencies, missed = [], 0
    for j, result in enumerate(results):
        *_, ends = audio[j % len(audio)]
        shown: dict[int, float] = result["shown"]  # type: ignore[assignment]
        for position, end in enumerate(ends):
            if position in shown:
                latencies.append(shown[position] - end)
            else:
                missed += 1
    return {"latencies": latencies, "missed": missed, "finals": [r["final"] for r in results]}


def stream_audio(seconds: float) -> list[np.ndarray]:
    """Held-out recordings joined into pieces of about `seconds` (each stream takes one)."""
    recordings = [samples for _, samples, _ in held_out()]
    pieces, current = [], []
    for samples in recordings:
        current.append(samples)
        if sum(s.size for s in current) >= seconds * SAMPLE_RATE:
            pieces.append(np.concatenate(current))
            current = []
    return pieces or [np.concatenate(current)]


async def main(args: argparse.Namespace) -> None:
    streams = [int(n) for n in args.streams.split(",")]
    interims = [float(x) for x in args.interim.split(",")]
    pieces = stream_audio(args.seconds)
    audio: list[Audio] = []
    async with open_recognizer(embedded_settings(max_batch_audio_secs=600.0)) as recognizer:
        for samples in pieces:
            words = (await recognizer.transcribe(samples)).words
            audio.append((samples, [w.word for w in words], [w.start for w in words], [w.end for w in words]))
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="amira-bench-") as workdir:
        for interim in interims:
            settings = {"max_concurrent_streams": max(streams), "stream_interim_secs": interim}
            async with running_server(DEMO, Path(workdir) / "server.log", **settings) as server:
                url = server.url.replace("http://", "ws://") + "/v2/decode/stream/default"
                for n in streams:
                    before = await server.probe(reset=True)
                    outcome = await scenario(url, n, audio)
                    after = await server.probe()
                    audio_s = sum(audio[j % len(audio)][0].size for j in range(n)) / SAMPLE_RATE
                    latencies = outcome["latencies"]
                    figure = {
                        "interim_s": interim,
                        "streams": n,
                        "words": len(latencies),
                        "missed": outcome["missed"],
                        "p50_s": percentile(latencies, 50),
                        "p90_s": percentile(latencies, 90),
                        "p99_s": percentile(latencies, 99),
                        "encoded_s_per_audio_s": (after["encoded_s"] - before["encoded_s"]) / audio_s,
                        "cpu_s_per_audio_s": (after["cpu_s"] - before["cpu_s"]) / audio_s,
                        "max_stall_ms": after["max_stall_ms"],
                    }
                    figures.append(figure)
                    print(figure, flush=True)
    baseline = {f["streams"]: f["encoded_s_per_audio_s"] for f in figures if f["interim_s"] == 0}
    for f in figures:
        extra = f["encoded_s_per_audio_s"] - baseline.get(f["streams"], math.nan)
        rows.append(
            [
                "off" if f["interim_s"] == 0 else f"{f['interim_s']:g} s",
                f["streams"],
                f["words"],
                f["missed"],
                *(f"{f[key]:.2f}" for key in ("p50_s", "p90_s", "p99_s", "encoded_s_per_audio_s")),
                f"{extra:.2f}",
                f"{f['cpu_s_per_audio_s']:.3f}",
                f["max_stall_ms"],
            ]
        )
    print_table(
        [
            "interim",
            "streams",
            "words",
            "never shown",
            "p50 s",
            "p90 s",
            "p99 s",
            "encoder s/audio s",
            "extra",
            "CPU s/audio s",
            "stall ms",
        ],
        rows,
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,10")
    parser.add_argument("--interim", default="0,0.2,0.4,0.8", help="STREAM_INTERIM_SECS values (0: off)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    parser.add_argument("--json", type=Path)
    trio.run(main, parser.parse_args())
