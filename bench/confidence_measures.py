"""Candidate word confidences against right and wrong words on the demo model: ROC areas.

    python -m bench.confidence_measures [--recipe-data build/demo/data-0-6000-400.npz] [--json out.json]

What `token_confidence` (NeMo's max_prob among the non-blank tokens) was chosen against: NeMo's
entropy measures (Tsallis, equivalently Rényi, and Gibbs, with their parameter alpha), over all V
tokens or among the non-blank ones, alone or with the blank frames around the token (NeMo's
`exclude_blank=False`), on the recordings and conditions of `bench.confidence`. Every recording is
decoded once per condition with `amira.testing.confidence.LookingDecoder`, which keeps the token logits
of every frame the decoder looks at (the tokens are those of `Recognizer.transcribe`), and every
candidate is computed from those logits. Columns: the clean held-out synthetic recordings, again
without the demo model's doubled first word (a recording that starts with speech at its first sample
gets its first word twice, one copy counted wrong), the harder set and babble; a 95% interval
(bootstrap over recordings) for the clean figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import trio

from amira import open_recognizer
from amira.core.audio import MODEL_SAMPLE_RATE
from amira.core.transcript import build_transcript
from amira.recognizer import Recognizer
from amira.testing.confidence import (
    BABBLE,
    HARDER,
    BlankFrames,
    Case,
    Condition,
    LookingDecoder,
    Measure,
    Samples,
    candidate_confidences,
    domain_cases,
    gibbs,
    max_prob,
    roc_auc,
    tsallis,
)
from amira.testing.recordings import REAL_DOMAIN
from amira.testing.servers import embedded_settings
from amira.testing.text import correct_words
from bench.confidence import table


@attrs.frozen
class Candidate:
    label: str
    measure: Measure
    blank_frames: BlankFrames = "none"
    nonblank: bool = True
    aggregate: Callable[[Sequence[float]], float] = min


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


BLANK_FRAMES: tuple[BlankFrames, ...] = ("before", "after")
CURRENT = Candidate("max_prob, non-blank (`token_confidence`)", max_prob)
CANDIDATES = [
    Candidate("max_prob, all V (NeMo's max_prob)", max_prob, nonblank=False),
    CURRENT,
    Candidate("Tsallis 1/3, all V (NeMo's default measure)", tsallis(1 / 3), nonblank=False),
    *(
        Candidate(f"Tsallis {name}, non-blank", tsallis(a))
        for name, a in [("1/4", 1 / 4), ("1/3", 1 / 3), ("1/2", 1 / 2), ("3/4", 3 / 4)]
    ),
    Candidate("Gibbs 1/2, non-blank", gibbs(0.5)),
    Candidate("Gibbs 1 (Shannon), non-blank", gibbs(1.0)),
    *(
        Candidate(f"max_prob non-blank, blank frames {where}, {name}", max_prob, where, aggregate=f)
        for where in BLANK_FRAMES
        for name, f in (("min", min), ("mean", mean))
    ),
    Candidate("Tsallis 1/3 non-blank, blank frames after, min", tsallis(1 / 3), blank_frames="after"),
    Candidate("Shannon non-blank, blank frames after, mean", gibbs(1.0), "after", aggregate=mean),
]


@attrs.frozen
class Decoded:
    decoder: LookingDecoder
    spans: list[tuple[int, int]]
    right: list[bool]
    doubled: int | None  # the index of the wrong copy of a doubled first word, if any


async def decode(recognizer: Recognizer, samples: Samples, reference: str) -> Decoded:
    """`Recognizer.transcribe`, with a `LookingDecoder`; checks that `CURRENT` is `token_confidence`."""
    engine = recognizer.engine
    loaded = engine.model_set("default")
    model_set = loaded.model_set
    encoded = await engine.encode(model_set, samples, engine.batch_calls)
    with loaded.states.state() as state:
        decoder = LookingDecoder(model_set.decoding, state, encoded.length)
        await engine.decode(model_set, decoder, encoded, 0, engine.batch_calls)
    transcript = build_transcript(
        model_set.vocabulary,
        decoder.emissions,
        frame_seconds=model_set.frame_seconds,
        audio_samples=samples.size,
        sample_rate=MODEL_SAMPLE_RATE,
        features_length=encoded.features_length,
        encoded_length=encoded.length,
    )
    spans = [(first, last) for _, first, last in model_set.vocabulary.words(transcript.tokens)]
    current = candidate_confidences(decoder, spans, CURRENT.measure, nonblank=True)
    assert np.allclose(current, [w.confidence for w in transcript.words], atol=1e-9)
    words, expected = [w.word for w in transcript.words], reference.split()
    right = correct_words(words, expected)
    doubled = None
    if len(words) > 1 and len(expected) > 1 and words[0] == words[1] == expected[0] != expected[1]:
        doubled = next((i for i in (0, 1) if not right[i]), None)
    return Decoded(decoder, spans, right, doubled)


def auc(decoded: Sequence[Decoded], candidate: Candidate, *, doubled: bool = True) -> float:
    scores, right = [], []
    for d in decoded:
        values = confidences(d, candidate)
        keep = [i for i in range(len(values)) if doubled or i != d.doubled]
        scores += [values[i] for i in keep]
        right += [d.right[i] for i in keep]
    return roc_auc(scores, right)


def confidences(d: Decoded, c: Candidate) -> list[float]:
    return candidate_confidences(
        d.decoder, d.spans, c.measure, nonblank=c.nonblank, blank_frames=c.blank_frames, aggregate=c.aggregate
    )


def interval(decoded: Sequence[Decoded], candidate: Candidate, draws: int = 300) -> str:
    """A 95% bootstrap interval of the ROC area, drawing whole recordings."""
    scored = [(confidences(d, candidate), d.right) for d in decoded]
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(draws):
        drawn = [scored[i] for i in rng.integers(0, len(scored), len(scored))]
        areas.append(roc_auc([c for s, _ in drawn for c in s], [r for _, r in drawn for r in r]))
    low, high = np.nanpercentile(areas, [2.5, 97.5])  # draws without a wrong word have no area
    return f"{low:.2f}-{high:.2f}"


async def main(args: argparse.Namespace) -> None:
    cases: list[Case] = domain_cases()
    if args.recipe_data:
        from bench.stream_vs_batch import recipe_held_out

        cases = [*recipe_held_out(args.recipe_data), *cases[-len(REAL_DOMAIN) :]]
    synthetic = len(cases) - len(REAL_DOMAIN)

    async def under(recognizer: Recognizer, condition: Condition) -> list[Decoded]:
        return [
            await decode(recognizer, condition(samples, seed), reference)
            for seed, (_, samples, reference) in enumerate(cases)
        ]

    async with open_recognizer(embedded_settings(max_batch_audio_secs=120.0)) as recognizer:
        harder = {name: await under(recognizer, c) for name, c in HARDER.items()}
        babble = [d for c in BABBLE.values() for d in await under(recognizer, c)]
    clean = harder["clean"][:synthetic]
    all_harder = [d for decoded in harder.values() for d in decoded]
    print(
        f"{len(cases)} recordings ({synthetic} held-out synthetic); clean held-out: "
        f"{sum(len(d.right) for d in clean)} words, {sum(r.count(False) for r in (d.right for d in clean))} "
        f"wrong, {sum(d.doubled is not None for d in clean)} of them doubled first words\n"
    )
    rows: list[dict[str, object]] = [
        {
            "measure": c.label,
            "clean held-out": auc(clean, c),
            "95% interval": interval(clean, c),
            "without doubled first words": auc(clean, c, doubled=False),
            "harder set": auc(all_harder, c),
            "babble": auc(babble, c),
        }
        for c in CANDIDATES
    ]
    table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe-data", type=Path, help="the training recipe's data-*.npz cache")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    trio.run(main, parser.parse_args())
