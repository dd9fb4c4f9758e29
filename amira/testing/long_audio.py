"""Long audio for streaming tests and benchmarks: recordings joined with pauses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio

from amira.core.transcript import StreamResult
from amira.recognizer import Recognizer
from amira.testing.recordings import CARDS, DATA, LIBRIVOX, read_recording

PAUSE_SECS = 1.0
DOMAIN = (*CARDS, DATA / "goforward.raw")  # the demo model's domain, spoken by people
HELD_OUT = DATA / "held_out"  # held-out synthetic utterances joined, 8 s or more each, by the training recipe


def joined(paths: Sequence[Path], repeats: int = 1, seed: int = 0) -> npt.NDArray[np.float32]:
    """The recordings one after the other, `repeats` times, each followed by a pause of faint noise."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(repeats):
        for path in paths:
            pause = (0.003 * rng.standard_normal(int(PAUSE_SECS * 16_000))).astype(np.float32)
            pieces += [read_recording(path), pause]
    return np.concatenate(pieces)


def long_recordings() -> dict[str, npt.NDArray[np.float32]]:
    return {
        "domain x1 (18 s)": joined(DOMAIN, 1),
        "domain x3 (55 s)": joined(DOMAIN, 3),
        "librivox x1 (30 s)": joined(LIBRIVOX, 1),
    }


def held_out() -> list[tuple[str, npt.NDArray[np.float32], str]]:
    """(file name, samples, reference) of the recipe's joined held-out recordings, 8 s or more each."""
    out = []
    for line in (HELD_OUT / "transcripts.tsv").read_text(encoding="utf-8").splitlines():
        name, text = line.split("\t")
        out.append((name, read_recording(HELD_OUT / name), text))
    return out


async def streamed_final(
    recognizer: Recognizer, samples: npt.NDArray[np.float32], model: str, frame: int = 1600
) -> StreamResult:
    """Stream `samples` in process, in frames of `frame` samples; the final result."""
    async with recognizer.open_stream(model) as stream, trio.open_nursery() as nursery:

        async def send() -> None:
            for offset in range(0, samples.size, frame):
                await stream.send_audio(samples[offset : offset + frame])
            await stream.end()

        nursery.start_soon(send)
        final = None
        async for result in stream:
            final = result
    if final is None:
        raise RuntimeError("the stream ended without a final result")
    return final
