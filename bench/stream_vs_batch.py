"""Streamed final against batch transcript, per recording longer than one window, in process.

    python -m bench.stream_vs_batch [--model default] [--chunk C --left L --right R]
                                    [--recipe-data build/demo/data-0-6000-400.npz]

Windows default to the server's (1.6 s chunks, 4.0 s left context, 1.2 s look-ahead); each
recording is streamed as one segment (no endpointing, with interim refreshes), as the batch decode
is one decode of the whole (`bench.endpointing` measures segments). Prints the
word error rate and the token edit distance of the streamed final against the batch transcript of
the same audio: first for the held-out synthetic recordings of `tests/data/held_out` (3 or more
utterances of the demo model's domain joined with pauses, 8 s or more, written by the training
recipe; the WER over all of them is the demo model's streaming figure), then for the real domain
recordings of `tests/data` joined with pauses, and the LibriVox clips joined (the random-weight
sets' case). `tests/test_long_stream.py` asserts the bounds on the same audio. With
`--recipe-data` (the training recipe's synthesis cache) it measures the recipe's whole held-out set
instead of the 12 recordings shipped from it (101 recordings, 1170 s), and prints only the total.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import trio

from amira import open_recognizer
from amira.core.segments import SegmentOptions
from amira.recognizer import Recognizer
from amira.settings import Settings
from amira.testing.long_audio import held_out, long_recordings, streamed_final
from amira.testing.servers import embedded_settings
from amira.testing.text import levenshtein
from training.joining import held_out_joined

ONE_SEGMENT = SegmentOptions(endpointing_ms=None, max_segment_secs=300.0)


def recipe_held_out(path: Path) -> list[tuple[str, np.ndarray, str]]:
    """The recipe's whole held-out set, joined exactly as it joins the recordings it ships."""
    with np.load(path) as data:
        audio, offsets = data["test_audio"], data["test_offsets"]
        texts = [str(text) for text in data["test_texts"]]
    waves = [audio[a:b] for a, b in itertools.pairwise(offsets)]
    return [
        (f"{index:03d}", wave.astype(np.float32) / 32768.0, text)
        for index, (wave, text) in enumerate(held_out_joined(waves, texts, seed=0))
    ]


async def compare(recognizer: Recognizer, samples: np.ndarray, model: str) -> dict[str, float]:
    batch = await recognizer.transcribe(samples, model)
    final = await streamed_final(recognizer, samples, model, options=ONE_SEGMENT)
    words, batch_words = final.transcription.split(), batch.text.split()
    edits = levenshtein(words, batch_words)
    return {
        "seconds": samples.size / 16_000,
        "batch_words": len(batch_words),
        "word_edits": edits,
        "wer": edits / max(1, len(batch_words)),
        "token_edit_rate": levenshtein(final.tokens, batch.tokens) / max(1, len(batch.tokens)),
    }


async def main(args: argparse.Namespace) -> None:
    settings = embedded_settings(
        stream_chunk_secs=args.chunk,
        stream_left_context_secs=args.left,
        stream_right_context_secs=args.right,
        max_batch_audio_secs=120.0,
    )
    print(f"model {args.model}; chunk {args.chunk} s, left {args.left} s, right {args.right} s")
    print(f"{'recording':>20} {'seconds':>8} {'batch words':>12} {'WER':>7} {'token edits':>12}")

    def show(name: str, row: dict[str, float]) -> None:
        print(
            f"{name:>20} {row['seconds']:8.1f} {row['batch_words']:12.0f} {row['wer']:7.1%}"
            f" {row['token_edit_rate']:12.1%}"
        )

    async with open_recognizer(settings) as recognizer:
        edits = words = 0
        recordings = recipe_held_out(args.recipe_data) if args.recipe_data else held_out()
        for name, samples, _ in recordings:
            row = await compare(recognizer, samples, args.model)
            if not args.recipe_data:
                show(f"held_out/{name}", row)
            edits, words = edits + row["word_edits"], words + row["batch_words"]
        label = f"held_out, all {len(recordings)}"
        print(f"{label:>20} {'':8} {words:12.0f} {edits / max(1, words):7.1%}")
        if args.recipe_data:
            return
        for name, samples in long_recordings().items():
            show(name, await compare(recognizer, samples, args.model))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    defaults = Settings()  # the server's streaming defaults
    parser.add_argument("--chunk", type=float, default=defaults.stream_chunk_secs)
    parser.add_argument("--left", type=float, default=defaults.stream_left_context_secs)
    parser.add_argument("--right", type=float, default=defaults.stream_right_context_secs)
    parser.add_argument("--recipe-data", type=Path, help="the training recipe's data-*.npz cache")
    trio.run(main, parser.parse_args())
