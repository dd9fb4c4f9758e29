"""Word confidence against right and wrong words on the demo model: the area under the ROC curve.

    python -m bench.confidence [--model default] [--recipe-data build/demo/data-0-6000-400.npz]
                               [--json confidence.json]

Every recording is transcribed in batch; its words are aligned to the reference by edit distance
(substituted and inserted words are wrong), and the ROC area says how well `confidence` ranks the
right words above the wrong ones (0.5: no better than chance), beside the same figure for NeMo's
max_prob over all V tokens, blank included (the baseline that `token_confidence` improves on).
Recordings: the held-out synthetic long recordings of `tests/data/held_out` (with `--recipe-data`,
the recipe's whole held-out set of 101, which `python -m training.data` synthesises) and the real
recordings of the domain, clean, with white noise and at other speeds (the *harder set*,
`amira.testing.confidence`), and with babble beside it. Then segment confidences, one recording
taken as one segment: how the mean of the word confidences (`segment_confidence`), their minimum and
their product separate exact recordings from the others, and follow word accuracy.
`tests/test_confidence.py` asserts the harder set's figure; `bench.confidence_measures` weighs other
measures (NeMo's entropy-based ones, blank frames) on the same recordings.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import trio

from amira import open_recognizer
from amira.testing.confidence import BABBLE, HARDER, Scored, domain_cases, roc_auc, score
from amira.testing.recordings import REAL_DOMAIN
from amira.testing.servers import embedded_settings


def word_row(label: str, scored: list[Scored]) -> dict[str, object]:
    right = [r for s in scored for r in s.right]
    return {
        "subset": label,
        "recordings": len(scored),
        "words": len(right),
        "wrong": right.count(False),
        "auc": roc_auc([c for s in scored for c in s.confidences], right),
        "auc, max_prob over all V": roc_auc([c for s in scored for c in s.all_token_confidences], right),
    }


def segment_rows(label: str, scored: list[Scored]) -> list[dict[str, object]]:
    scored = [s for s in scored if s.confidences]
    exact = [s.exact for s in scored]
    accuracy = [s.word_accuracy for s in scored]
    aggregates = {
        "mean (segment_confidence)": [s.segment_confidence for s in scored],
        "min": [min(s.confidences) for s in scored],
        "product": [math.prod(s.confidences) for s in scored],
    }
    return [
        {
            "subset": label,
            "aggregate": name,
            "segments": len(scored),
            "with errors": exact.count(False),
            "auc exact vs not": roc_auc(values, exact),
            "pearson with word accuracy": float(np.corrcoef(values, accuracy)[0, 1]),
        }
        for name, values in aggregates.items()
    ]


def table(rows: list[dict[str, object]]) -> None:
    keys = list(rows[0])
    cells = [[f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]

    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("| " + " | ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)) + " |")
    print()


async def main(args: argparse.Namespace) -> None:
    cases = domain_cases()
    if args.recipe_data:
        from bench.stream_vs_batch import recipe_held_out

        cases = [*recipe_held_out(args.recipe_data), *cases[-len(REAL_DOMAIN) :]]
    synthetic = len(cases) - len(REAL_DOMAIN)
    started = time.perf_counter()
    async with open_recognizer(embedded_settings(max_batch_audio_secs=120.0)) as recognizer:
        harder = {name: await score(recognizer, cases, c, args.model) for name, c in HARDER.items()}
        babble = {name: await score(recognizer, cases, c, args.model) for name, c in BABBLE.items()}
        vocabulary = recognizer.engine.model_set(args.model).model_set.vocabulary
    conditions = len(HARDER) + len(BABBLE)
    seconds = sum(samples.size for _, samples, _ in cases) / 16_000 * conditions
    print(
        f"model {args.model}: {len(cases)} recordings ({synthetic} held-out synthetic, "
        f"{len(REAL_DOMAIN)} real) x {conditions} conditions, {seconds:.0f} s of audio "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if all(vocabulary.starts_word(token) for token in range(vocabulary.blank)):
        print("every piece of the vocabulary is a whole word: a word's confidence is its one token's")
    all_harder = [s for scored in harder.values() for s in scored]
    words = [
        word_row("held-out synthetic, clean", harder["clean"][:synthetic]),
        *(word_row(name, scored) for name, scored in harder.items()),
        word_row("harder set (all of the above)", all_harder),
        *(word_row(name, scored) for name, scored in babble.items()),
        word_row("babble, all", [s for scored in babble.values() for s in scored]),
    ]
    print("Words: ROC area of `confidence` (max_prob among the non-blank tokens), right vs wrong words\n")
    table(words)
    held_out_harder = [s for scored in harder.values() for s in scored[:synthetic]]
    segments = [
        *segment_rows("harder set", all_harder),
        *segment_rows("held-out, harder set", held_out_harder),
    ]
    print("Segments (one recording each): aggregates of the word confidences\n")
    table(segments)
    if args.json:
        args.json.write_text(json.dumps({"words": words, "segments": segments}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--recipe-data", type=Path, help="the training recipe's data-*.npz cache")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    trio.run(main, parser.parse_args())
