"""Cache-aware streaming: what a chunk costs on the wire, and what the encoder costs per audio second.

    python -m bench.cache_aware [--transport] [--cost] [--seconds 20] [--json out.json]

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
`default-streaming`): seconds of audio encoded per second of audio (each window encodes its left
context, chunk and look-ahead; each chunk its own audio, plus the pre-encode cache's 7 to 9 mel
frames), and encoder CPU-bound wall seconds per audio second (`--seconds` of LibriVox streamed).
The machine is shared: read the figures side by side, not on their own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from amira.backends.embedded import EmbeddedBackend
from amira.backends.triton import TritonBackend
from amira.core.tensors import SequenceFlags
from amira.engine import Engine
from amira.models import shipped_repository
from amira.recognizer import Recognizer
from amira.testing.long_audio import streamed_final
from amira.testing.servers import embedded_settings, write_model_sets
from bench.common import librivox_concatenation, machine, print_table, write_json


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
    ) -> dict[str, npt.NDArray[Any]]:
        started = time.perf_counter()
        result = await super().infer(model, inputs, outputs, limiter, sequence)
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
    rows = []
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


async def cost(windowed: str, cache_aware: str, seconds: float) -> list[dict[str, object]]:
    audio = librivox_concatenation(range(5)).samples[: round(seconds * 16_000)]
    settings = embedded_settings()
    rows = []
    engine = Engine(EmbeddedBackend(settings.model_repository), settings)
    await engine.load()
    encoder_seconds: defaultdict[str, float] = defaultdict(float)

    def on_call(model_set: str, role: str, elapsed: float) -> None:
        if role == "encoder":
            encoder_seconds[model_set] += elapsed

    engine.on_call = on_call
    recognizer = Recognizer(engine)
    for name in (windowed, cache_aware):
        loaded = engine.model_sets[name]
        final = await streamed_final(recognizer, audio, name)
        spec = loaded.model_set.cache_aware
        if spec is None:
            streaming = loaded.streaming
            frames = streaming.left_frames + streaming.chunk_frames + streaming.right_frames
            encoded = frames / streaming.chunk_frames  # every window but the first ones
        else:
            encoded = (spec.pre_encode_frames + spec.chunk_frames) / spec.chunk_frames
        rows.append(
            {
                "model_set": name,
                "kind": loaded.model_set.encoder_kind,
                "encoded_audio_per_audio_second": encoded,
                "encoder_wall_seconds_per_audio_second": encoder_seconds[name] / (audio.size / 16_000),
                "words": len(final.transcription.split()),
            }
        )
    print_table(
        ["model set", "encoder", "encoded s / audio s", "encoder wall s / audio s"],
        [
            [
                r["model_set"],
                r["kind"],
                r["encoded_audio_per_audio_second"],
                f"{r['encoder_wall_seconds_per_audio_second']:.4f}",
            ]
            for r in rows
        ],
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", action="store_true")
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--windowed", default="default")
    parser.add_argument("--cache-aware", default="default-streaming")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    both = not (args.transport or args.cost)
    document: dict[str, object] = {"machine": machine(), "model_repository": str(shipped_repository())}

    async def run() -> None:
        if args.transport or both:
            document["transport"] = await transport(args.seconds)
        if args.cost or both:
            document["cost"] = await cost(args.windowed, args.cache_aware, args.seconds)

    trio.run(run)
    write_json(args.json, document)


if __name__ == "__main__":
    main()
