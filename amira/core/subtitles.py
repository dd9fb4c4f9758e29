"""Subtitle cues from timed words, and their SubRip (`.srt`) and WebVTT (`.vtt`) text.

Cues follow the usual broadcast rules: at most `MAX_LINES` lines of at most `MAX_LINE_CHARS`
characters, at most `MAX_CUE_SECS` on screen, a new cue after a pause of `PAUSE_SECS` (so that a
cue never stays up over silence and the next utterance starts fresh), never overlapping the next
cue and never past the end of the audio. A single word longer than a line gets a cue of its own.
Cues never span two segments (utterances): `cues_from_segments`. The native batch endpoint's
`srt` and `vtt` and the OpenAI dialect's `srt`, `vtt` and `verbose_json` segments use them; with
several channels, each cue is labelled with its channel (`[ch0] ...`), the label counted in its
first line, and channels' cues may overlap where their speakers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from amira.core.transcript import Segment, Word

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECS = 7.0
PAUSE_SECS = 1.0


@attrs.frozen
class Cue:
    """One subtitle: its time span, its lines, and the indices of its words (`first` to `last`)."""

    start: float
    end: float
    lines: tuple[str, ...]
    first: int
    last: int

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def _lines(words: Sequence[str], max_chars: int) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def cues_from_words(
    words: Sequence[Word],
    audio_seconds: float,
    *,
    max_line_chars: int = MAX_LINE_CHARS,
    max_lines: int = MAX_LINES,
    max_cue_secs: float = MAX_CUE_SECS,
    pause_secs: float = PAUSE_SECS,
) -> list[Cue]:
    """Group words, in order, into cues; every word is in exactly one cue."""
    groups: list[list[int]] = []
    for index, word in enumerate(words):
        group = groups[-1] if groups else None
        if group is not None:
            texts = [words[i].word for i in group] + [word.word]
            lines = _lines(texts, max_line_chars)
            fits = len(lines) <= max_lines and all(len(line) <= max_line_chars for line in lines)
            short = word.end - words[group[0]].start <= max_cue_secs
            close = word.start - words[group[-1]].end < pause_secs
            if fits and short and close:
                group.append(index)
                continue
        groups.append([index])
    cues = []
    for number, group in enumerate(groups):
        start = min(words[group[0]].start, audio_seconds)
        end = min(max(words[group[-1]].end, start), audio_seconds)
        if number + 1 < len(groups):
            end = min(end, words[groups[number + 1][0]].start)
        lines = _lines([words[i].word for i in group], max_line_chars)
        cues.append(Cue(start, end, tuple(lines), group[0], group[-1]))
    return cues


def cues_from_segments(segments: Sequence[Segment], audio_seconds: float, label: str = "") -> list[Cue]:
    """The cues of each segment's words, in order; `first`/`last` index the words of all segments
    together (a transcript's `words`). `label` (e.g. `[ch1]`) starts every cue's first line."""
    max_line_chars = MAX_LINE_CHARS - (len(label) + 1 if label else 0)
    cues: list[Cue] = []
    offset = 0
    for segment in segments:
        for cue in cues_from_words(segment.words, audio_seconds, max_line_chars=max_line_chars):
            if cues and cues[-1].end > cue.start:
                cues[-1] = attrs.evolve(cues[-1], end=cue.start)
            lines = (f"{label} {cue.lines[0]}", *cue.lines[1:]) if label else cue.lines
            cues.append(attrs.evolve(cue, lines=lines, first=cue.first + offset, last=cue.last + offset))
        offset += len(segment.words)
    return cues


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    blocks = [
        f"{number}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n" + "\n".join(c.lines) + "\n"
        for number, c in enumerate(cues, 1)
    ]
    return "\n".join(blocks)


def vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n" + "\n".join(c.lines) + "\n" for c in cues
    ]
    return "\n".join(["WEBVTT\n", *blocks])
