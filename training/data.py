"""The recipe's synthesised speech: train and held-out utterances, cached in one `.npz` file.

No torch here, so that the held-out speech can be made without the training environment (the TTS
engines of training/README.md are still needed):

    python -m training.data --seed 0 --work build/demo     # writes build/demo/data-0-6000-400.npz

which is the cache `python -m training` itself writes and reads, and what the benchmarks'
`--recipe-data` options take (`bench/stream_vs_batch.py`, `bench/confidence.py`).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import grammar, synth


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_data(seed: int, n_train: int, n_test: int, cache: Path) -> dict[str, npt.NDArray[Any]]:
    """Synthesised train and held-out sets (held-out sentences never occur in training)."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    rng = random.Random(seed)
    train_texts = [grammar.sentence(rng) for _ in range(n_train)]
    seen = set(train_texts)
    test_texts: list[str] = []
    while len(test_texts) < n_test:
        text = grammar.sentence(rng)
        if text not in seen:
            test_texts.append(text)
            seen.add(text)
    out = {}
    for name, texts in (("train", train_texts), ("test", test_texts)):
        requests = [synth.random_request(rng, text) for text in texts]
        started = time.time()
        waves = synth.synthesize(requests)
        log(
            f"synthesised {len(waves)} {name} utterances "
            f"({sum(map(len, waves)) / 16000 / 3600:.2f} h) in {time.time() - started:.0f} s"
        )
        out[f"{name}_audio"] = np.concatenate(waves)
        out[f"{name}_offsets"] = np.cumsum([0] + [len(w) for w in waves])
        out[f"{name}_texts"] = np.array(texts)
        out[f"{name}_voices"] = np.array([f"{r.engine}:{r.voice}" for r in requests])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def cache_path(work: Path, seed: int, n_train: int, n_test: int) -> Path:
    return work / f"data-{seed}-{n_train}-{n_test}.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description="Synthesise the recipe's train and held-out speech")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("build/demo"))
    parser.add_argument("--train-utterances", type=int, default=6000)
    parser.add_argument("--test-utterances", type=int, default=400)
    args = parser.parse_args()
    path = cache_path(args.work, args.seed, args.train_utterances, args.test_utterances)
    make_data(args.seed, args.train_utterances, args.test_utterances, path)
    print(path)


if __name__ == "__main__":
    main()
