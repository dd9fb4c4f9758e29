"""SentencePiece-style vocabularies: `<piece> <id>` per line, `▁` marks a word start, blank last."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

WORD_MARK = "\u2581"


class VocabularyError(ValueError):
    """The vocabulary file is malformed or does not fit the model."""


@attrs.frozen
class Vocabulary:
    pieces: tuple[str, ...]

    @property
    def size(self) -> int:
        """V: the number of entries, blank included."""
        return len(self.pieces)

    @property
    def blank(self) -> int:
        return len(self.pieces) - 1

    @classmethod
    def parse(cls, text: str, source: str = "vocabulary") -> Vocabulary:
        """Read `<piece> <id>` lines; ids must be exactly 0..V-1 and the last one the blank."""
        by_id: dict[int, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            piece, sep, id_text = line.rstrip("\r").rpartition(" ")
            if not sep or not piece or not id_text.isdigit():
                raise VocabularyError(f"{source}:{number}: expected '<piece> <id>', got {line!r}")
            token_id = int(id_text)
            if token_id in by_id:
                raise VocabularyError(f"{source}:{number}: id {token_id} appears twice")
            by_id[token_id] = piece
        if not by_id:
            raise VocabularyError(f"{source}: no entries")
        if sorted(by_id) != list(range(len(by_id))):
            raise VocabularyError(f"{source}: ids must be 0..{len(by_id) - 1} without gaps")
        pieces = tuple(by_id[i] for i in range(len(by_id)))
        if pieces[-1] != "<blk>":
            raise VocabularyError(f"{source}: the last id must be the blank '<blk>', got {pieces[-1]!r}")
        return cls(pieces)

    def detokenize(self, tokens: Iterable[int]) -> str:
        """Join pieces, turn word marks into spaces, strip the ends."""
        return "".join(self.pieces[t] for t in tokens).replace(WORD_MARK, " ").strip()

    def starts_word(self, token: int) -> bool:
        return self.pieces[token].startswith(WORD_MARK)

    def words(self, tokens: Sequence[int]) -> list[tuple[str, int, int]]:
        """Group tokens into words: `(text, first_index, last_index)` into `tokens`."""
        words: list[tuple[str, int, int]] = []
        start = 0
        for index in range(1, len(tokens) + 1):
            if index == len(tokens) or self.starts_word(tokens[index]):
                text = self.detokenize(tokens[start:index])
                if text:
                    words.append((text, start, index - 1))
                start = index
        return words
