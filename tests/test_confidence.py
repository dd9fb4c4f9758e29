"""Word confidences separate right from wrong words on the demo model (`bench/confidence.py` prints
the whole table): the harder set of `amira.testing.confidence`, held-out synthetic and real speech with
noise and at other speeds, transcribed in batch on the embedded backend (about 3 s); and the candidate
measures that `bench/confidence_measures.py` weighs against `token_confidence`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from amira import open_recognizer
from amira.core.decoding import DecoderState
from amira.core.transcript import token_confidence
from amira.testing.confidence import (
    HARDER,
    LookingDecoder,
    Measure,
    candidate_confidences,
    domain_cases,
    gibbs,
    log_softmax,
    max_prob,
    roc_auc,
    score,
    tsallis,
)
from amira.testing.servers import embedded_settings
from tests.test_decoding import BLANK, DURATIONS, ScriptedJoint, V, run, spec_for

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


@pytest.mark.parametrize(
    "measure", [max_prob, tsallis(1 / 4), tsallis(1 / 3), tsallis(3 / 4), gibbs(1 / 2), gibbs(1.0)]
)
def test_candidate_measures_run_from_0_uniform_to_1_certain(measure: Measure) -> None:
    v = 57
    assert measure(log_softmax(np.zeros((1, v))))[0] == pytest.approx(0.0, abs=1e-9)
    certain = np.where(np.arange(v) == 3, 0.0, -1e4)[None, :]
    assert measure(log_softmax(certain))[0] == pytest.approx(1.0, abs=1e-9)
    logits = np.random.default_rng(0).normal(0.0, 2.0, (200, v))
    values = [measure(log_softmax(scale * logits)) for scale in (0.5, 1.0, 2.0, 4.0)]
    for lower, higher in itertools.pairwise(values):
        assert (lower >= 0).all() and (higher <= 1).all()
        assert (lower < higher).mean() > 0.95  # sharper logits, surer (almost always: not a theorem)


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_looking_decoder_decodes_as_the_greedy_decoder(kind: str) -> None:
    spec = spec_for(kind, max_symbols_per_step=2)
    rng = np.random.default_rng(7)
    script = {
        (int(rng.integers(0, 30)), int(rng.integers(0, 15))): (
            int(rng.integers(0, BLANK)),
            int(rng.choice(DURATIONS)),
        )
        for _ in range(60)
    }
    expected = run(spec, ScriptedJoint(script, spec), 30)
    assert len(expected) > 3
    joint = ScriptedJoint(script, spec)
    decoder = LookingDecoder(spec, DecoderState.zeros(BLANK, 1, 1), 30)
    while (call := decoder.next_call()) is not None:
        decoder.receive(*joint(call.start, call.stop, decoder.state.h))
    assert decoder.emissions == expected
    assert [int(np.argmax(decoder.looked[i])) for i in decoder.emitted] == [e.token for e in expected]
    spans = [(k, k) for k in range(len(expected))]
    assert candidate_confidences(decoder, spans, max_prob, nonblank=True) == pytest.approx(
        [token_confidence(e, V) for e in expected], abs=1e-9
    )
