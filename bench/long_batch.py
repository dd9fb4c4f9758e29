"""Long batch recordings: throughput and peak memory by duration, long path against the direct one.

    python -m bench.long_batch [--minutes 1 10 60] [--triton URL]

For each duration, the real recordings of `tests/data` joined with pauses, over and over, are
transcribed in a fresh process (so that its peak RSS is its own) by `Recognizer.transcribe` (the
long path: batch windows and segments) and by the direct pipeline (one preprocessor and encoder
call over the whole recording, as every batch request was before; up to `--direct-max-minutes`,
since its tensors grow with the audio). Each line prints the audio seconds per second and the
process's peak RSS, and the RSS the samples themselves account for. With `--triton`, the same runs
go through a Triton server (e.g. `amira triton`) as well as the embedded backend.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import numpy.typing as npt
import trio

from amira.recognizer import open_recognizer
from amira.testing.long_audio import DOMAIN, joined
from amira.testing.servers import embedded_settings

RATE = 16_000


def audio_of(minutes: float) -> npt.NDArray[np.float32]:
    pattern = joined(DOMAIN)
    repeats = int(np.ceil(minutes * 60 * RATE / pattern.size))
    return np.tile(pattern, repeats)[: int(minutes * 60 * RATE)]


async def measure(minutes: float, mode: str, triton: str | None) -> dict[str, float | str]:
    samples = audio_of(minutes)
    settings = embedded_settings(triton_endpoint=triton) if triton else embedded_settings()
    async with open_recognizer(settings) as recognizer:
        loaded = recognizer.engine.model_set("default")
        started = time.perf_counter()
        if mode == "long":
            transcript = await recognizer.transcribe(samples)
        else:
            transcript = await recognizer._transcribe_whole(loaded, samples, recognizer.engine.batch_calls)
        seconds = time.perf_counter() - started
    return {
        "backend": "triton" if triton else "embedded",
        "mode": mode,
        "minutes": minutes,
        "audio_s_per_s": round(samples.size / RATE / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "samples_mb": round(samples.nbytes / 2**20, 1),
        "words": len(transcript.words),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--direct-max-minutes", type=float, default=10)
    parser.add_argument("--triton")
    parser.add_argument("--one", nargs=3, metavar=("MINUTES", "MODE", "TRITON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        minutes, mode, triton = args.one
        print(json.dumps(trio.run(measure, float(minutes), mode, None if triton == "-" else triton)))
        return
    print(
        f"{'backend':>9} {'mode':>6} {'minutes':>7} {'audio s/s':>9} {'peak RSS MB':>11} {'samples MB':>10}"
    )
    for triton in (None, args.triton) if args.triton else (None,):
        for minutes in args.minutes:
            for mode in ("long", "direct"):
                if mode == "direct" and minutes > args.direct_max_minutes:
                    continue
                command = [
                    sys.executable,
                    "-m",
                    "bench.long_batch",
                    "--one",
                    str(minutes),
                    mode,
                    triton or "-",
                ]
                run = subprocess.run(command, check=False, capture_output=True, text=True)
                if run.returncode:  # e.g. the direct path past what one backend call may take
                    error = (run.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"{'triton' if triton else 'embedded':>9} {mode:>6} {minutes:>7g} failed: {error}")
                    continue
                result = json.loads(run.stdout)
                print(
                    f"{result['backend']:>9} {mode:>6} {minutes:>7g} {result['audio_s_per_s']:>9} "
                    f"{result['peak_rss_mb']:>11} {result['samples_mb']:>10}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
