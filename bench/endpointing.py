"""Endpointing on long recordings with pauses: how segments match utterances, per `endpointing`.

    python -m bench.endpointing [--endpointing 320,480,640,800,960,1280]

Streams, in process and as fast as the stream takes them (results do not depend on the pace), the
12 held-out long recordings of `tests/data/held_out` (3 to 5 synthetic utterances joined with
0.3 to 1.5 s of digital silence: 48 utterances, 36 pauses) and the six real recordings of
`tests/data` joined twice with 1 s pauses, once of faint noise (`joined_utterances`) and once of
digital silence. For each `endpointing` value it prints, per set:

* *one segment*: utterances that exactly one segment overlaps, and that segment no other
  utterance (a clean match); *split*: utterances that several segments overlap; *merged*:
  utterances that share their segment with another (a pause shorter than the endpointing);
* *as alone*: clean matches whose segment final equals the batch transcript of the utterance on
  its own; *WER*: the stream's whole transcript against the reference texts;
* *delay*: audio from an utterance's end to the speech final that closed it (median and 90th
  percentile): what a voice agent waits after the speaker stopped, before inference time.

The README's table of defaults comes from this command.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import trio

from amira import open_recognizer
from amira.core.segments import SegmentOptions
from amira.core.transcript import StreamResult
from amira.recognizer import Recognizer
from amira.testing.long_audio import DOMAIN, held_out, held_out_utterances, joined_utterances
from amira.testing.recordings import REAL_DOMAIN
from amira.testing.servers import embedded_settings
from amira.testing.text import levenshtein
from bench.common import percentile, print_table

SAMPLE_RATE = 16_000


class Case:
    """A long recording, its utterances' spans and each one's batch transcript alone, and the reference."""

    def __init__(self, samples: np.ndarray, spans: list[tuple[int, int]], reference: str) -> None:
        self.samples, self.spans, self.reference = samples, spans, reference
        self.alone: list[str] = []


async def cases(recognizer: Recognizer) -> dict[str, list[Case]]:
    sets: dict[str, list[Case]] = {"held-out (silence)": [], "real (noise)": [], "real (silence)": []}
    for _, samples, reference in held_out():
        sets["held-out (silence)"].append(Case(samples, held_out_utterances(samples), reference))
    references = " ".join(text for _, text in REAL_DOMAIN)
    noisy, spans = joined_utterances(DOMAIN, repeats=2)
    sets["real (noise)"].append(Case(noisy, spans, f"{references} {references}"))
    silent = noisy.copy()
    silent[~covered(spans, silent.size)] = 0.0
    sets["real (silence)"].append(Case(silent, spans, f"{references} {references}"))
    for group in sets.values():
        for case in group:
            case.alone = [(await recognizer.transcribe(case.samples[a:b])).text for a, b in case.spans]
    return sets


def covered(spans: Sequence[tuple[int, int]], size: int) -> np.ndarray:
    mask = np.zeros(size, bool)
    for a, b in spans:
        mask[a:b] = True
    return mask


async def stream(recognizer: Recognizer, samples: np.ndarray, options: SegmentOptions) -> list[StreamResult]:
    results = []
    async with recognizer.open_stream(options=options) as session, trio.open_nursery() as nursery:

        async def send() -> None:
            for offset in range(0, samples.size, 1600):
                await session.send_audio(samples[offset : offset + 1600])
            await session.end()

        nursery.start_soon(send)
        async for result in session:
            results.append(result)
    return results


def score(case: Case, results: list[StreamResult]) -> dict[str, list[float]]:
    finals = [r for r in results if r.is_final and not r.end_of_stream and r.transcription]
    owners = [
        [
            i
            for i, (a, b) in enumerate(case.spans)
            if f.segment.start * SAMPLE_RATE < b and f.segment.end * SAMPLE_RATE > a
        ]
        for f in finals
    ]
    out: dict[str, list[float]] = {"one": [], "split": [], "merged": [], "alone": [], "delay": []}
    for index, (_, stop) in enumerate(case.spans):
        mine = [f for f, owned in zip(finals, owners, strict=True) if index in owned]
        if len(mine) > 1:
            out["split"].append(1)
        elif len(mine) == 1 and any(len(o) > 1 for f, o in zip(finals, owners, strict=True) if f is mine[0]):
            out["merged"].append(1)
        elif len(mine) == 1:
            out["one"].append(1)
            out["alone"].append(float(mine[0].transcription == case.alone[index]))
            if mine[0].speech_final:
                out["delay"].append(mine[0].audio_seconds - stop / SAMPLE_RATE)
    return out


async def main(args: argparse.Namespace) -> None:
    async with open_recognizer(embedded_settings(max_batch_audio_secs=120.0)) as recognizer:
        sets = await cases(recognizer)
        rows = []
        for value in args.endpointing.split(","):
            options = SegmentOptions(endpointing_ms=int(value), interim_results=False)
            for name, group in sets.items():
                totals: dict[str, list[float]] = {
                    "one": [],
                    "split": [],
                    "merged": [],
                    "alone": [],
                    "delay": [],
                }
                edits = words = utterances = 0
                for case in group:
                    results = await stream(recognizer, case.samples, options)
                    for key, values in score(case, results).items():
                        totals[key] += values
                    edits += levenshtein(results[-1].transcription.split(), case.reference.split())
                    words += len(case.reference.split())
                    utterances += len(case.spans)
                rows.append(
                    [
                        value,
                        name,
                        utterances,
                        len(totals["one"]),
                        len(totals["split"]),
                        len(totals["merged"]),
                        f"{int(sum(totals['alone']))}/{len(totals['alone'])}",
                        f"{edits / words:.1%}",
                        f"{percentile(totals['delay'], 50):.2f}",
                        f"{percentile(totals['delay'], 90):.2f}",
                    ]
                )
                print(rows[-1], flush=True)
    print_table(
        [
            "endpointing ms",
            "recordings",
            "utterances",
            "one segment",
            "split",
            "merged",
            "as alone",
            "WER",
            "delay p50 s",
            "p90 s",
        ],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpointing", default="320,480,640,800,960,1280")
    trio.run(main, parser.parse_args())
