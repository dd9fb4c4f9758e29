"""decoder_joint calls per audio second, one frame per call (K = 1) against the default (every
frame left in the span per call), on the test recordings and both shipped model sets.

    python -m bench.decoder_calls [--json out.json]

Prints a table; the default must need at most tokens + windows calls (a batch decode is one window).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trio

from amira import open_recognizer
from amira.testing.recordings import MODEL_SETS, RECORDINGS, read_recording
from amira.testing.servers import embedded_settings


async def measure(frames_per_call: int | None) -> dict[str, dict[str, float]]:
    settings = embedded_settings(frames_per_call=frames_per_call)
    results: dict[str, dict[str, float]] = {}
    async with open_recognizer(settings) as recognizer:
        for model in MODEL_SETS:
            calls = tokens = seconds = 0.0
            windows = 0
            for path in RECORDINGS:
                samples = read_recording(path)
                before = recognizer.engine.calls["decoder_joint"]
                transcript = await recognizer.transcribe(samples, model)
                used = recognizer.engine.calls["decoder_joint"] - before
                calls += used
                tokens += len(transcript.tokens)
                seconds += transcript.audio_seconds
                windows += 1
            results[model] = {
                "audio_seconds": seconds,
                "calls_per_audio_second": calls / seconds,
                "tokens_per_audio_second": tokens / seconds,
                "windows_per_audio_second": windows / seconds,
            }
    return results


async def main() -> dict[str, object]:
    per_frame = await measure(1)
    default = await measure(None)
    columns = ("model", "audio s", "tokens/s", "windows/s", "calls/s K=1", "calls/s default", "K=1/default")
    print("  ".join(f"{c:>15}" for c in columns))
    for model in MODEL_SETS:
        d, k1 = default[model], per_frame[model]
        row = (
            model,
            f"{d['audio_seconds']:.1f}",
            f"{d['tokens_per_audio_second']:.2f}",
            f"{d['windows_per_audio_second']:.3f}",
            f"{k1['calls_per_audio_second']:.2f}",
            f"{d['calls_per_audio_second']:.2f}",
            f"{k1['calls_per_audio_second'] / d['calls_per_audio_second']:.2f}",
        )
        print("  ".join(f"{c:>15}" for c in row))
        bound = d["tokens_per_audio_second"] + d["windows_per_audio_second"]
        if d["calls_per_audio_second"] > bound + 1e-9:
            raise SystemExit(f"{model}: more decoder_joint calls than tokens + windows")
    return {"k1": per_frame, "default": default}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path)
    out = parser.parse_args().json
    results = trio.run(main)
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
