"""Long audio for streaming tests and benchmarks: recordings joined with pauses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio

from amira.core.segments import SegmentOptions
from amira.core.transcript import StreamResult
from amira.recognizer import Recognizer
from amira.testing.recordings import CARDS, DATA, LIBRIVOX, read_recording

PAUSE_SECS = 1.0
NOISE = 0.003  # the pauses' noise level (RMS, full scale 1): -50 dB
HELD_OUT_MIN_PAUSE = 4_800  # samples: the recipe's shortest pause, 0.3 s
DOMAIN = (*CARDS, DATA / "goforward.raw")  # the demo model's domain, spoken by people
HELD_OUT = DATA / "held_out"  # held-out synthetic utterances joined, 8 s or more each, by the training recipe


def joined(paths: Sequence[Path], repeats: int = 1, seed: int = 0) -> npt.NDArray[np.float32]:
    """The recordings one after the other, `repeats` times, each followed by a pause of faint noise."""
    return joined_utterances(paths, repeats, seed)[0]


def joined_utterances(
    paths: Sequence[Path], repeats: int = 1, seed: int = 0
) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
    """`joined(...)`, and the sample span of each recording in it."""
    rng = np.random.default_rng(seed)
    pieces, spans, position = [], [], 0
    for _ in range(repeats):
        for path in paths:
            recording = read_recording(path)
            pause = (NOISE * rng.standard_normal(int(PAUSE_SECS * 16_000))).astype(np.float32)
            pieces += [recording, pause]
            spans.append((position, position + recording.size))
            position += recording.size + pause.size
    return np.concatenate(pieces), spans


def held_out_utterances(samples: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """The sample spans of the utterances of a held-out long recording: the recipe joins them with
    pauses of digital silence, 0.3 s or more."""
    silent = np.concatenate([[0], (samples == 0).astype(np.int8), [0]])
    runs = np.flatnonzero(np.diff(silent)).reshape(-1, 2)
    bounds = [0, *(int(x) for a, b in runs if b - a >= HELD_OUT_MIN_PAUSE for x in (a, b)), samples.size]
    return [(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=True) if b - a > HELD_OUT_MIN_PAUSE]


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
    recognizer: Recognizer,
    samples: npt.NDArray[np.float32],
    model: str,
    frame: int = 1600,
    options: SegmentOptions | None = None,
) -> StreamResult:
    """Stream `samples` in process, in frames of `frame` samples; the final result."""
    async with (
        recognizer.open_stream(model, options=options) as stream,
        trio.open_nursery() as nursery,
    ):

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
