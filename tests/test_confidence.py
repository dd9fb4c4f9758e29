"""Word confidences separate right from wrong words on the demo model (`bench/confidence.py` prints
the whole table): the harder set of `amira.testing.confidence`, held-out synthetic and real speech with
noise and at other speeds, transcribed in batch on the embedded backend (about 3 s)."""

from __future__ import annotations

from amira import open_recognizer
from amira.testing.confidence import HARDER, domain_cases, roc_auc, score
from amira.testing.servers import embedded_settings

MIN_WORD_AUC = 0.8  # measured 0.888 over 2199 words, 205 of them wrong
MIN_SEGMENT_AUC = 0.8  # measured 0.862: exact recordings against those with errors


async def test_word_confidence_separates_right_from_wrong_words() -> None:
    cases = domain_cases()
    async with open_recognizer(embedded_settings()) as recognizer:
        scored = [
            s for condition in HARDER.values() for s in await score(recognizer, cases, condition, "default")
        ]
    right = [r for s in scored for r in s.right]
    assert right.count(False) > 150  # enough wrong words for the figure to mean something
    auc = roc_auc([c for s in scored for c in s.confidences], right)
    print(f"\nword ROC area {auc:.3f} over {len(right)} words, {right.count(False)} wrong")
    assert auc > MIN_WORD_AUC
    segments = [s for s in scored if s.confidences]
    assert roc_auc([s.segment_confidence for s in segments], [s.exact for s in segments]) > MIN_SEGMENT_AUC
