"""Edit distance between token or word sequences."""

from __future__ import annotations

from collections.abc import Sequence


def levenshtein(a: Sequence[object], b: Sequence[object]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]
