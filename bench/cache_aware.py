"""Cache-aware streaming: what a chunk costs on the wire, and what the encoder costs per audio second.

    python -m bench.cache_aware [--transport] [--cost] [--latency] [--seconds 20] [--json out.json]
                                [--streams 1,10,50] [--frame-ms 100] [--workers 1]

**Transport** (`--transport`): random cache-aware models with the tensor sizes of Nemotron Speech
Streaming 0.6B (24 layers, C = 70, K = 8, D = 1024, 56 mel frames a chunk; generated into a temporary
directory), served by a real CPU-flavour Triton twice: once keeping the caches in Triton per
sequence (`encoder_cache_aware`, the stateful Python model that stands in for implicit state) and
once as a plain model whose caches travel with every call (`keep_caches=False`). One stream of
LibriVox audio goes through AMIRA's engine in this process; per encoder call it counts the bytes of
the tensors sent and received (the binary payload of Triton's HTTP protocol; its JSON header adds
a few hundred bytes) and the call's wall time.

**Cost** (`--cost`): the encoder's work per audio second, in process on the embedded backend, for a
windowed set and a cache-aware set side by side (default: the demo models `default` and
`default-streaming`), streamed in process with the default segment options: seconds of audio given
to the encoder per second of audio, counted call by call (each window encodes its left context,
chunk and look-ahead, each interim refresh its left context and the uncommitted audio; each chunk
its own audio, plus the pre-encode cache's mel frames, shown apart), and the encoder calls' wall
seconds per audio second (`--seconds` of LibriVox streamed).

**Latency** (`--latency`): word-to-partial latency of a cache-aware set (default
`default-streaming`) at its default chunk: N concurrent streams (`--streams 1,10,50`; the stream cap
raised to N) each send the held-out long recordings of `tests/data/held_out` (utterances of the
demo domain joined with pauses) in 100 ms frames (`--frame-ms`) paced in real time against an
absolute clock, each frame sent once its last sample has been spoken (the clock's 0 is the stream's
first sample spoken; until session 5 a frame went out when its first sample was, which made every
figure 100 ms too small), stream j starting j/N s after the first, to an AMIRA server in its own
process (`bench/worker.py`; `--workers N` processes, `WORKERS`) on the embedded backend and on a
CPU Triton that keeps the caches (`--backend embedded,triton`).
Per word of the stream's final transcript, the latency runs from the word's end (its `end` in the
final's words, on the stream's real-time clock) to the first result whose text shows it. A
cache-aware stream commits every token it decodes, so its text only grows and the final is the
batch transcript: a word is shown once the results' text holds the final's words up to it. Word ends
come from the frame of a word's last token, that is when the model emitted it: a causal model emits
a word some frames after it was spoken, which that figure leaves out. So, second, per utterance
(a stretch of speech followed by a pause of 250 ms or more; 10 ms frames within 35 dB of the loudest
are speech), the latency from the end of its speech in the audio to the first result showing its
last word (the last word emitted before the next stretch began): what the speaker waits for.
Errors and streams that did not complete are counted.

The machine is shared: read the figures side by side, not on their own.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from amira.backends.embedded import EmbeddedBackend
from amira.backends.triton import TritonBackend
from amira.core.cache_aware import HOP, Chunk
from amira.core.model_set import ModelSet
from amira.core.tensors import SequenceFlags
from amira.engine import Engine
from amira.models import shipped_repository
from amira.recognizer import Recognizer
from amira.testing.long_audio import streamed_final
from amira.testing.servers import embedded_settings, write_model_sets
from bench.common import Subject, librivox_concatenation, machine, print_table, write_json

PAUSE_SECONDS = 0.25  # a pause after a word: where an utterance's speech ends


class CountingTriton(TritonBackend):
    """A Triton backend that counts, per model, the calls and the tensor bytes each way."""

    def __init__(self, url: str) -> None:
        super().__init__(url, inference_timeout=30.0)
        self.sent: defaultdict[str, list[int]] = defaultdict(list)
        self.received: defaultdict[str, list[int]] = defaultdict(list)
        self.seconds: defaultdict[str, list[float]] = defaultdict(list)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        limiter: trio.CapacityLimiter,
        sequence: SequenceFlags | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        started = time.perf_counter()
        result = await super().infer(model, inputs, outputs, limiter, sequence, parameters)
        self.seconds[model].append(time.perf_counter() - started)
        self.sent[model].append(sum(np.asarray(value).nbytes for value in inputs.values()))
        self.received[model].append(sum(value.nbytes for value in result.values()))
        return result


async def transport(seconds: float) -> list[dict[str, object]]:
    from amira.models import model_file
    from amira.tooling.test_models import CACHE_AWARE_PARAKEET, PARAKEET_SHAPED, generate_repository
    from amira.tooling.triton_launcher import local_triton
    from amira.tooling.triton_repository import build_repository, write_model

    audio = librivox_concatenation(range(5)).samples[: round(seconds * 16_000)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="amira-bench-") as workdir:
        source = Path(workdir) / "parakeet-sized"
        generate_repository(source, sizes=PARAKEET_SHAPED, cache_sizes=CACHE_AWARE_PARAKEET)
        models = ["preprocessor_streaming", "encoder_cache_aware", "decoder_joint_rnnt"]
        repository = build_repository(source, Path(workdir) / "triton", "cpu", models=models)
        write_model(
            model_file(source, "encoder_cache_aware"), repository, "encoder_plain", "cpu", keep_caches=False
        )
        sets = write_model_sets(
            Path(workdir) / "sets.toml",
            {
                "in_triton": (
                    "preprocessor_streaming",
                    "encoder_cache_aware",
                    "decoder_joint_rnnt",
                    "vocab_test.txt",
                ),
                "in_amira": (
                    "preprocessor_streaming",
                    "encoder_plain",
                    "decoder_joint_rnnt",
                    "vocab_test.txt",
                ),
            },
        )
        log = Path(workdir) / "triton.log"
        async with local_triton(repository, log_path=log, startup_timeout=300) as triton:
            settings = embedded_settings(
                triton_endpoint=triton.url, model_sets_file=sets, model_repository=repository
            )
            for name, encoder in (("in_triton", "encoder_cache_aware"), ("in_amira", "encoder_plain")):
                backend = CountingTriton(triton.url)
                engine = Engine(backend, settings)
                await engine.load()
                for table in (backend.sent, backend.received, backend.seconds):
                    table.clear()
                final = await streamed_final(Recognizer(engine), audio, name)
                await backend.aclose()
                sent, received = backend.sent[encoder], backend.received[encoder]
                rows.append(
                    {
                        "caches": name.replace("_", " "),
                        "encoder_calls": len(sent),
                        "sent_bytes_per_chunk": float(np.median(sent)),
                        "received_bytes_per_chunk": float(np.median(received)),
                        "call_ms_p50": 1000 * float(np.median(backend.seconds[encoder])),
                        "tokens": len(final.tokens),
                    }
                )
    print_table(
        ["caches", "encoder calls", "sent B/chunk", "received B/chunk", "call p50 ms"],
        [
            [
                r["caches"],
                r["encoder_calls"],
                f"{r['sent_bytes_per_chunk']:,.0f}",
                f"{r['received_bytes_per_chunk']:,.0f}",
                r["call_ms_p50"],
            ]
            for r in rows
        ],
    )
    return rows


async def cost(windowed: str, cache_aware: str, seconds: float) -> list[dict[str, Any]]:
    audio = librivox_concatenation(range(5)).samples[: round(seconds * 16_000)]
    settings = embedded_settings()
    engine = Engine(EmbeddedBackend(settings.model_repository), settings)
    await engine.load()
    encoder_seconds: defaultdict[str, float] = defaultdict(float)
    encoded: defaultdict[str, float] = defaultdict(float)  # seconds of audio the encoder was given
    fresh: defaultdict[str, float] = defaultdict(float)  # of it, audio no earlier call was given
    encode, encode_chunk = engine.encode, engine.encode_chunk

    def on_call(model_set: str, role: str, elapsed: float) -> None:
        if role == "encoder":
            encoder_seconds[model_set] += elapsed

    async def counting_encode(model_set: ModelSet, samples: Any, policy: Any) -> Any:
        encoded[model_set.name] += samples.size / 16_000
        return await encode(model_set, samples, policy)

    async def counting_encode_chunk(model_set: ModelSet, encoding: Any, chunk: Chunk, policy: Any) -> Any:
        encoded[model_set.name] += chunk.length * HOP / 16_000
        fresh[model_set.name] += (chunk.length - encoding.spec.pre_encode_frames) * HOP / 16_000
        return await encode_chunk(model_set, encoding, chunk, policy)

    engine.on_call = on_call
    engine.encode = counting_encode  # type: ignore[method-assign]
    engine.encode_chunk = counting_encode_chunk  # type: ignore[method-assign]
    recognizer = Recognizer(engine)
    rows: list[dict[str, Any]] = []
    for name in (windowed, cache_aware):
        final = await streamed_final(recognizer, audio, name)
        audio_seconds = audio.size / 16_000
        rows.append(
            {
                "model_set": name,
                "kind": engine.model_sets[name].model_set.encoder_kind,
                "encoded_audio_per_audio_second": encoded[name] / audio_seconds,
                "new_audio_per_audio_second": (fresh[name] or encoded[name]) / audio_seconds,
                "encoder_wall_seconds_per_audio_second": encoder_seconds[name] / audio_seconds,
                "words": len(final.transcription.split()),
            }
        )
    print_table(
        [
            "model set",
            "encoder",
            "encoded s / audio s",
            "of which pre-encode cache",
            "encoder wall s / audio s",
        ],
        [
            [
                r["model_set"],
                r["kind"],
                f"{r['encoded_audio_per_audio_second']:.2f}",
                f"{r['encoded_audio_per_audio_second'] - r['new_audio_per_audio_second']:.2f}",
                f"{r['encoder_wall_seconds_per_audio_second']:.4f}",
            ]
            for r in rows
        ],
    )
    return rows


async def one_stream(
    url: str, samples: npt.NDArray[np.float32], delay: float, frame_seconds: float
) -> dict[str, Any]:
    """Stream `samples` in real time after `delay`, in frames of `frame_seconds` each sent when its
    last sample has been spoken; (received time, text) of every result, and the final's words with
    their ends, on the stream's clock (its first sample spoken at 0)."""
    from amira.client import StreamError, open_stream_client
    from amira.testing.recordings import pcm16

    await trio.sleep(delay)
    step = round(frame_seconds * 16_000)
    shown: list[tuple[float, str]] = []
    try:
        async with open_stream_client(url) as client, trio.open_nursery() as nursery:
            start = trio.current_time()

            async def send() -> None:
                for index, offset in enumerate(range(0, samples.size, step)):
                    await trio.sleep_until(start + (index + 1) * frame_seconds)
                    await client.send_pcm(pcm16(samples[offset : offset + step]))
                await client.end()

            nursery.start_soon(send)
            finals: list[str] = []  # segment finals so far; a partial shows the open segment
            last: dict[str, Any] = {}
            async for result in client.results():
                now = trio.current_time() - start
                last = result
                if result["status"] == "COMPLETE":
                    break
                if result["is_final"]:
                    finals.append(result["transcription"])
                    shown.append((now, " ".join([*finals])))
                else:
                    shown.append((now, " ".join([*finals, result["transcription"]])))
    except (StreamError, BaseExceptionGroup) as error:
        return {"error": repr(error)}
    words = last.get("metadata", {}).get("words", []) if last.get("status") == "COMPLETE" else []
    if not words:
        return {"error": "no COMPLETE result with words"}
    final_words = [word["word"] for word in words]
    shown_at: list[float] = []
    for received, text in shown:
        seen = text.split()
        while (
            len(shown_at) < len(final_words) and seen[: len(shown_at) + 1] == final_words[: len(shown_at) + 1]
        ):
            shown_at.append(received)
    latencies = [at - word["end"] for at, word in zip(shown_at, words, strict=False)]
    acoustic = []
    spans = speech_spans(samples)
    for (onset, end), (next_onset, _) in zip(spans, [*spans[1:], (math.inf, math.inf)], strict=True):
        # the utterance's last word: the last one emitted before the next utterance began
        own = [
            i for i, w in enumerate(words[: len(shown_at)]) if onset <= w["end"] <= next_onset + frame_seconds
        ]
        if own:
            acoustic.append(shown_at[own[-1]] - end)
    return {"latencies": latencies, "acoustic": acoustic, "unshown": len(final_words) - len(shown_at)}


def speech_spans(samples: npt.NDArray[np.float32]) -> list[tuple[float, float]]:
    """(start, end) in seconds of each stretch of speech between pauses of `PAUSE_SECONDS` or more:
    10 ms frames within 35 dB of the loudest one are speech."""
    frames = samples[: samples.size // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-35 / 20))
    breaks = np.flatnonzero(np.diff(loud) * 0.01 >= PAUSE_SECONDS)
    starts = [loud[0], *(loud[i + 1] for i in breaks)]
    ends = [*(loud[i] for i in breaks), loud[-1]]
    return [(float(a) * 0.01, float(b + 1) * 0.01) for a, b in zip(starts, ends, strict=True)]


async def collect(
    results: list[dict[str, Any]], url: str, samples: npt.NDArray[np.float32], delay: float, frame: float
) -> None:
    results.append(await one_stream(url, samples, delay, frame))


async def latency(
    model: str, backends: Sequence[str], counts: Sequence[int], frame_seconds: float, workers: int
) -> list[dict[str, object]]:
    from amira.testing.long_audio import held_out
    from bench.common import percentile, running_server

    recordings = [samples for _, samples, _ in held_out()]
    audio = np.concatenate([np.concatenate([r, np.zeros(8000, np.float32)]) for r in recordings[:3]])
    rows = []
    with tempfile.TemporaryDirectory(prefix="amira-bench-") as workdir:
        for backend in backends:
            async with latency_subject(backend, model, Path(workdir)) as subject:
                for count in counts:
                    async with running_server(
                        subject,
                        Path(workdir) / "server.log",
                        max_concurrent_streams=max(count, 10),
                        workers=workers,
                    ) as server:
                        url = server.url.replace("http://", "ws://") + f"/v2/decode/stream/{model}"
                        results: list[dict[str, Any]] = []
                        async with trio.open_nursery() as nursery:
                            for j in range(count):
                                nursery.start_soon(collect, results, url, audio, j / count, frame_seconds)
                    values = [v for r in results for v in r.get("latencies", [])]
                    ends = [v for r in results for v in r.get("acoustic", [])]
                    errors = [r["error"] for r in results if "error" in r]
                    rows.append(
                        {
                            "backend": backend,
                            "workers": workers,
                            "frame_ms": round(frame_seconds * 1000),
                            "streams": count,
                            "words": len(values),
                            "unshown": sum(int(r.get("unshown", 0)) for r in results),
                            "errors": len(errors),
                            "p50_s": percentile(values, 50),
                            "p90_s": percentile(values, 90),
                            "p99_s": percentile(values, 99),
                            "utterance_ends": len(ends),
                            "acoustic_p50_s": percentile(ends, 50),
                            "acoustic_p90_s": percentile(ends, 90),
                            "acoustic_p99_s": percentile(ends, 99),
                        }
                    )
                    if errors:
                        print(f"{backend} x{count}: {errors[:3]}")
    print_table(
        [
            "backend",
            "workers",
            "frame ms",
            "streams",
            "words",
            "unshown",
            "errors",
            "p50 s",
            "p90 s",
            "p99 s",
            "utterance ends",
            "from speech end p50 s",
            "p90 s",
            "p99 s",
        ],
        [
            [
                r["backend"],
                r["workers"],
                r["frame_ms"],
                r["streams"],
                r["words"],
                r["unshown"],
                r["errors"],
                f"{r['p50_s']:.3f}",
                f"{r['p90_s']:.3f}",
                f"{r['p99_s']:.3f}",
                r["utterance_ends"],
                f"{r['acoustic_p50_s']:.3f}",
                f"{r['acoustic_p90_s']:.3f}",
                f"{r['acoustic_p99_s']:.3f}",
            ]
            for r in rows
        ],
    )
    return rows


@asynccontextmanager
async def latency_subject(backend: str, model: str, workdir: Path) -> AsyncIterator[Subject]:
    """The server settings of `model` (a set of the shipped repository) on `backend`: embedded, or a
    CPU Triton serving just that set's models, keeping the caches per sequence."""
    import tomllib

    from amira.tooling.triton_launcher import local_triton
    from amira.tooling.triton_repository import build_repository

    repository = shipped_repository()
    env = {"MODEL_REPOSITORY": str(repository), "MODEL_SETS_FILE": str(repository / "model_sets.toml")}
    if backend == "embedded":
        yield Subject(backend, model, env)
        return
    table = tomllib.loads((repository / "model_sets.toml").read_text(encoding="utf-8"))["model_sets"][model]
    models = [table["preprocessor"], table["encoder"], table["decoder_joint"]]
    sets = write_model_sets(workdir / "sets.toml", {model: (*models, table["vocabulary"])})
    built = build_repository(repository, workdir / "triton", "cpu", models=models, clean=True)
    async with local_triton(built, log_path=workdir / "triton.log", startup_timeout=300) as triton:
        yield Subject(
            backend, model, env | {"MODEL_SETS_FILE": str(sets), "TRITON_ENDPOINT": triton.url}, triton.pid
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", action="store_true")
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--windowed", default="default")
    parser.add_argument("--cache-aware", default="default-streaming")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument(
        "--backend", default="embedded,triton", help="for --latency: embedded, triton or both"
    )
    parser.add_argument("--streams", default="1,10,50", help="for --latency: concurrent stream counts")
    parser.add_argument("--frame-ms", type=int, default=100, help="for --latency: the clients' frames")
    parser.add_argument("--workers", type=int, default=1, help="for --latency: server processes (WORKERS)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    every = not (args.transport or args.cost or args.latency)
    document: dict[str, object] = {"machine": machine(), "model_repository": str(shipped_repository())}

    async def run() -> None:
        if args.transport or every:
            document["transport"] = await transport(args.seconds)
        if args.cost or every:
            document["cost"] = await cost(args.windowed, args.cache_aware, args.seconds)
        if args.latency or every:
            counts = [int(n) for n in args.streams.split(",")]
            document["latency"] = await latency(
                args.cache_aware, args.backend.split(","), counts, args.frame_ms / 1000, args.workers
            )

    trio.run(run)
    write_json(args.json, document)


if __name__ == "__main__":
    main()
