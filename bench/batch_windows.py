"""Batch windows of the long path: accuracy against one whole decode, and speed, per window setting.

    python -m bench.batch_windows [--windows 22.4/4/3.6 8/4/2 ...]

Recordings longer than `BATCH_WHOLE_SECS` go through the streaming session with batch windows
(`BATCH_CHUNK_SECS` / `BATCH_LEFT_CONTEXT_SECS` / `BATCH_RIGHT_CONTEXT_SECS`) and segments. Each
setting transcribes, in process on the embedded backend: the 12 held-out long recordings of
`tests/data/held_out` (34 to 36 s of synthetic utterances joined with digital silence) and the six
real recordings of `tests/data` joined twice with 1 s pauses of faint noise (36 s), and the three
LibriVox readings joined twice (60 s of longer sentences, no reference texts). Every one of
them still fits one encoder call, which is the reference decode: *vs whole* is the long path's
word error rate against that whole decode, *WER* against the reference texts; *audio s/s* is the
long path's speed (the whole decode's is the first row; wall time on a shared machine is noisy),
*encoded s/s* the audio seconds the encoder was given per audio second (deterministic: the cost
that the windows add). The README's batch window defaults come
from this command.
"""

from __future__ import annotations

import argparse
import time

import attrs
import numpy as np
import numpy.typing as npt
import trio

from amira.core.model_set import ModelSet
from amira.engine import CallPolicy, Encoded, Engine
from amira.recognizer import open_recognizer
from amira.testing.long_audio import DOMAIN, held_out, joined
from amira.testing.recordings import LIBRIVOX, REAL_DOMAIN
from amira.testing.servers import embedded_settings
from amira.testing.text import levenshtein
from bench.common import print_table

RATE = 16_000
DEFAULT_WINDOWS = (
    "22.4/4/3.6",
    "8/4/2",
    "5.6/4/1.6",
    "4/4/1.6",
    "4/8/1.6",
    "2.4/4/1.2",
)


def recordings() -> dict[str, list[tuple[npt.NDArray[np.float32], str | None]]]:
    references = " ".join(text for _, text in REAL_DOMAIN)
    return {
        "held-out": [(samples, text) for _, samples, text in held_out()],
        "real": [(joined(DOMAIN, repeats=2), f"{references} {references}")],
        "librivox": [(joined(LIBRIVOX, repeats=2), None)],
    }


def errors(hypothesis: str, reference: str | None) -> tuple[int, int]:
    if reference is None:
        return 0, 0
    return levenshtein(hypothesis.split(), reference.split()), len(reference.split())


def count_encoded(engine: Engine) -> list[int]:
    """Make `engine` count the samples it encodes (in the returned list's one item)."""
    counter, encode = [0], engine.encode

    async def counted(model_set: ModelSet, samples: npt.NDArray[np.float32], policy: CallPolicy) -> Encoded:
        counter[0] += samples.size
        return await encode(model_set, samples, policy)

    engine.encode = counted  # type: ignore[method-assign]
    return counter


def rate(edits: int, words: int) -> str:
    return f"{100 * edits / words:.1f}%" if words else "n/a"


async def main(args: argparse.Namespace) -> None:
    sets = recordings()
    base = embedded_settings(batch_whole_secs=1.0)  # every recording takes the long path
    whole: dict[str, list[str]] = {}
    rows: list[list[object]] = []
    async with open_recognizer(base) as recognizer:
        loaded = recognizer.engine.model_set("default")
        for name, group in sets.items():
            started, texts, edits, words, audio = time.perf_counter(), [], 0, 0, 0
            for samples, reference in group:
                transcript = await recognizer._transcribe_whole(
                    loaded, samples, recognizer.engine.batch_calls
                )
                texts.append(transcript.text)
                e, n = errors(transcript.text, reference)
                edits, words, audio = edits + e, words + n, audio + samples.size
            whole[name] = texts
            rows.append(
                [
                    "whole",
                    name,
                    "0.0%",
                    rate(edits, words),
                    audio / RATE / (time.perf_counter() - started),
                    1.0,
                ]
            )
    for setting in args.windows:
        chunk, left, right = (float(x) for x in setting.split("/"))
        settings = attrs.evolve(
            base, batch_chunk_secs=chunk, batch_left_context_secs=left, batch_right_context_secs=right
        )
        async with open_recognizer(settings) as recognizer:
            encoded = count_encoded(recognizer.engine)
            for name, group in sets.items():
                started, encoded[0] = time.perf_counter(), 0
                edits_whole = words_whole = edits = words = audio = 0
                for (samples, reference), reference_whole in zip(group, whole[name], strict=True):
                    text = (await recognizer.transcribe(samples)).text
                    e, n = errors(text, reference_whole)
                    edits_whole, words_whole = edits_whole + e, words_whole + n
                    e, n = errors(text, reference)
                    edits, words, audio = edits + e, words + n, audio + samples.size
                speed = audio / RATE / (time.perf_counter() - started)
                rows.append(
                    [
                        setting,
                        name,
                        rate(edits_whole, words_whole),
                        rate(edits, words),
                        speed,
                        encoded[0] / audio,
                    ]
                )
                print(rows[-1], flush=True)
    print_table(["chunk/left/right s", "recordings", "vs whole", "WER", "audio s/s", "encoded s/s"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", nargs="+", default=list(DEFAULT_WINDOWS))
    trio.run(main, parser.parse_args())
