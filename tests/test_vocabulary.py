from __future__ import annotations

import pytest

from amira.core.decoding import Emission
from amira.core.transcript import Word, words_from_emissions
from amira.core.vocabulary import Vocabulary, VocabularyError

TEXT = "▁he 0\n▁was 1\nn 2\n't 3\n▁ 4\n<blk> 5\n"


def test_parse_and_detokenize() -> None:
    vocab = Vocabulary.parse(TEXT)
    assert vocab.size == 6 and vocab.blank == 5
    assert vocab.detokenize([0, 1, 2, 3]) == "he wasn't"
    assert vocab.detokenize([4, 0, 4]) == "he"


def test_words_group_on_word_marks() -> None:
    vocab = Vocabulary.parse(TEXT)
    assert vocab.words([0, 1, 2, 3]) == [("he", 0, 0), ("wasn't", 1, 3)]
    assert vocab.words([2, 0]) == [("n", 0, 0), ("he", 1, 1)]


def test_word_times_come_from_token_frames() -> None:
    vocab = Vocabulary.parse(TEXT)
    emissions = [Emission(0, 2), Emission(1, 5, 0.5), Emission(2, 5), Emission(3, 7)]
    assert words_from_emissions(vocab, emissions, 0.08, 10) == (
        Word("he", 2 * 0.08, 3 * 0.08, 1.0),
        Word("wasn't", 5 * 0.08, 8 * 0.08, (5 * 0.5 - 1) / 4),  # among the 5 non-blank tokens
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no entries"),
        ("a 0\nb 3\n<blk> 1\n", "without gaps"),
        ("a 0\na 0\n<blk> 1\n", "twice"),
        ("a 0\n<blk> 1\nb 2\n", "last id must be the blank"),
        ("a0\n<blk> 1\n", "expected '<piece> <id>'"),
        ("a x\n<blk> 1\n", "expected '<piece> <id>'"),
    ],
)
def test_malformed_vocabularies_are_refused(text: str, message: str) -> None:
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.parse(text)
