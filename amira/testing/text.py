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


def matched_positions(a: Sequence[object], b: Sequence[object]) -> list[int]:
    """The positions in `b` of the items that a minimal edit script from `a` to `b` keeps."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
        rows.append(row)
    kept, i, j = [], len(a), len(b)
    while i and j:
        if a[i - 1] == b[j - 1] and rows[i][j] == rows[i - 1][j - 1]:
            kept.append(j - 1)
            i, j = i - 1, j - 1
        elif rows[i][j] == rows[i - 1][j] + 1:
            i -= 1
        elif rows[i][j] == rows[i][j - 1] + 1:
            j -= 1
        else:
            i, j = i - 1, j - 1
    return kept[::-1]
