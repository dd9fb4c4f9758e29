"""The rules every transcript's word times and confidences keep (README, "Words"), as one check."""

from __future__ import annotations

from collections.abc import Sequence

from amira.core.transcript import Word


def word_rule_violations(words: Sequence[Word], frame_seconds: float, end_frame: int) -> list[str]:
    """What breaks the rules, if anything, for words decoded from frames before `end_frame`.

    Times are whole frames; no two words start on one frame; each ends at least one frame after its
    start and at most at the next word's start; all of them lie in `[0, end_frame]` frames when there
    are no more words than frames; confidences lie in [0, 1].
    """
    problems = []
    frames = []
    for word in words:
        start, end = word.start / frame_seconds, word.end / frame_seconds
        if abs(start - round(start)) > 1e-6 or abs(end - round(end)) > 1e-6:
            problems.append(f"{word}: not on whole frames")
        frames.append((round(start), round(end)))
        if not 0.0 <= word.confidence <= 1.0:
            problems.append(f"{word}: confidence out of [0, 1]")
    for index, (start, end) in enumerate(frames):
        if end < start + 1:
            problems.append(f"{words[index]}: ends less than a frame after its start")
        if index + 1 < len(frames) and end > frames[index + 1][0]:
            problems.append(f"{words[index]}: ends after the next word starts")
        if index and start <= frames[index - 1][0]:
            problems.append(f"{words[index]}: starts no later than the word before it")
        if len(frames) <= end_frame and not 0 <= start < end <= end_frame:
            problems.append(f"{words[index]}: outside the {end_frame} decoded frames")
    return problems
