"""Words from emissions: times that make sense (property-based) and confidences (NeMo's max_prob)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amira.core.decoding import Emission
from amira.core.transcript import Word, segment_confidence, token_confidence, words_from_emissions
from amira.core.vocabulary import Vocabulary
from amira.testing.word_times import word_rule_violations

VOCAB = Vocabulary.parse("▁a 0\n▁b 1\nc 2\nd 3\n▁e 4\n<blk> 5\n")  # c, d continue a word
FRAME = 0.08


@st.composite
def decodes(draw: st.DrawFn) -> tuple[list[Emission], int]:
    """Emissions as a decoder makes them: frames never go back, often several on one frame."""
    tdt = draw(st.booleans())
    emissions, frame = [], draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 30))):
        frame += draw(st.sampled_from([0, 0, 0, 1, 2, 7]))
        emissions.append(
            Emission(
                draw(st.integers(0, 4)),
                frame,
                probability := draw(st.floats(1 / VOCAB.size, 1.0)),
                draw(st.floats(0.0, 1.0 - probability)),
                draw(st.integers(0, 4)) if tdt else 1,
            )
        )
    return emissions, frame + 1 + draw(st.integers(0, 4))


def frames_of(word: Word) -> tuple[int, int]:
    return round(word.start / FRAME), round(word.end / FRAME)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(decodes())
def test_word_times_keep_the_rules(decode: tuple[list[Emission], int]) -> None:
    emissions, end_frame = decode
    words = words_from_emissions(VOCAB, emissions, FRAME, end_frame)
    groups = VOCAB.words([e.token for e in emissions])
    assert [w.word for w in words] == [text for text, _, _ in groups]
    assert word_rule_violations(words, FRAME, end_frame) == []
    spans = [frames_of(w) for w in words]
    firsts = [emissions[first].frame for _, first, _ in groups]
    nothing_shared = all(a < b for a, b in itertools.pairwise(firsts))
    for index, ((_, first, last), (start, end)) in enumerate(zip(groups, spans, strict=True)):
        token = emissions[last]
        if nothing_shared and firsts[-1] < end_frame:
            # no word had to move: each starts at its first token and covers its last token's
            # frames (TDT: t .. t+d-1), unless that runs into the next word or the end
            following = spans[index + 1][0] if index + 1 < len(spans) else end_frame
            assert start == emissions[first].frame
            assert end == min(token.frame + max(token.duration, 1), following)
        elif len(words) <= end_frame:
            # moved forward past words on the same frame, or back from the end, never more
            assert start >= min(emissions[first].frame, end_frame - (len(words) - index))
        expected = min(token_confidence(e, VOCAB.size) for e in emissions[first : last + 1])
        assert words[index].confidence == expected


def test_words_on_one_frame_are_spread_and_tdt_durations_cover_frames() -> None:
    emissions = [
        Emission(0, 2, 0.9, duration=3),  # "a" covers frames 2, 3, 4
        Emission(4, 6, 0.8, duration=0),  # "e" and "bc" both emitted at frame 6
        Emission(1, 6, 0.7, duration=0),
        Emission(2, 6, 0.6, duration=2),  # "bc" ends with a token covering frames 6, 7
    ]
    assert [(w.word, *frames_of(w)) for w in words_from_emissions(VOCAB, emissions, FRAME, 9)] == [
        ("a", 2, 5),
        ("e", 6, 7),  # a TDT token of duration 0 still gets its frame
        ("bc", 7, 8),  # moved one frame on; its last token covers through frame 7
    ]


def test_words_moved_past_the_end_come_back() -> None:
    emissions = [Emission(0, 3), Emission(1, 5), Emission(4, 5), Emission(0, 5)]
    words = words_from_emissions(VOCAB, emissions, FRAME, 6)
    assert [frames_of(w) for w in words] == [(2, 3), (3, 4), (4, 5), (5, 6)]


def test_confidence_is_nemo_max_prob_among_non_blank_tokens_of_the_least_sure_token() -> None:
    # 6 entries: 5 non-blank tokens and the blank
    assert token_confidence(Emission(0, 0, 1.0, 0.0), 6) == 1.0
    assert token_confidence(Emission(0, 0, 0.2, 0.0), 6) == 0.0  # 1/5: an even spread over the 5
    assert token_confidence(Emission(0, 0, 0.5, 0.0), 6) == pytest.approx((5 * 0.5 - 1) / 4)
    assert token_confidence(Emission(0, 0, 0.5, 0.5), 6) == 1.0  # unsure when, sure what
    assert token_confidence(Emission(0, 0, 0.3, 0.4), 6) == pytest.approx((5 * 0.5 - 1) / 4)
    assert token_confidence(Emission(0, 0, 0.5, 0.5), 2) == 1.0  # a single non-blank token
    emissions = [
        Emission(1, 0, 0.9),
        Emission(2, 1, 0.4, 0.2),
        Emission(3, 2, 0.95),
        Emission(0, 4, 0.99),
    ]
    bcd, a = words_from_emissions(VOCAB, emissions, FRAME, 5)
    assert bcd.word == "bcd" and bcd.confidence == pytest.approx((5 * 0.5 - 1) / 4)  # its least sure token
    assert a.confidence == pytest.approx((5 * 0.99 - 1) / 4)
    assert segment_confidence([bcd, a]) == pytest.approx((bcd.confidence + a.confidence) / 2)
    assert segment_confidence([]) == 0.0
