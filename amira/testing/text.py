"""Edit distance between token or word sequences, and which hypothesis words an alignment keeps."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence


def _rows(a: Sequence[object], b: Sequence[object]) -> Iterator[list[int]]:
    """The rows of the Levenshtein table: row i, item j is the distance between `a[:i]` and `b[:j]`."""
    previous = list(range(len(b) + 1))
    yield previous
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        yield current
        previous = current


def levenshtein(a: Sequence[object], b: Sequence[object]) -> int:
    (last,) = deque(_rows(a, b), maxlen=1)  # row by row: memory stays linear
    return last[-1]


def correct_words(hypothesis: Sequence[str], reference: Sequence[str]) -> list[bool]:
    """For each hypothesis word, whether a minimum edit-distance alignment matches it to the reference.

    Substituted and inserted words are wrong; deleted reference words have no hypothesis word to
    mark. Among equally short alignments, the backtrace prefers matches, then substitutions.
    """
    table = list(_rows(hypothesis, reference))
    right = [False] * len(hypothesis)
    i, j = len(hypothesis), len(reference)
    while i and j:
        same = hypothesis[i - 1] == reference[j - 1]
        if table[i][j] == table[i - 1][j - 1] + (not same):
            right[i - 1] = same
            i, j = i - 1, j - 1
        elif table[i][j] == table[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return right


def matched_positions(hypothesis: Sequence[object], reference: Sequence[object]) -> list[int]:
    """The positions in `reference` of the words that a minimum edit-distance alignment matches to
    `hypothesis` (the backtrace of `correct_words`)."""
    table = list(_rows(hypothesis, reference))
    matched = []
    i, j = len(hypothesis), len(reference)
    while i and j:
        same = hypothesis[i - 1] == reference[j - 1]
        if table[i][j] == table[i - 1][j - 1] + (not same):
            if same:
                matched.append(j - 1)
            i, j = i - 1, j - 1
        elif table[i][j] == table[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return matched[::-1]
