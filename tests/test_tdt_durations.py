"""A TDT model set with configured durations whose index and value differ, end to end.

Every shipped TDT model uses durations (0, 1, 2, 3, 4), where a duration logit's index and its value
coincide, so a decoder that took the index for the duration would pass every other test. Here the
generator (`amira.tooling.test_models`) writes a model set whose joint has four duration logits, the
model-sets file configures them as `durations = [0, 2, 3, 5]`, and the server's batch and stream
results are compared with the frame-by-frame reference loop of `tests/reference.py`, told the
durations by this test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from amira import open_recognizer
from amira.testing.long_audio import streamed_final
from amira.testing.recordings import CARDS, LIBRIVOX, read_recording
from amira.testing.reference import FrameByFrame
from amira.testing.servers import embedded_settings
from amira.tooling.test_models import SMALL, TEST_VOCABULARY, generate_repository

CONFIGURED = (0, 2, 3, 5)
MODEL_SETS = f"""\
[model_sets.tdt0235]
preprocessor = "preprocessor"
encoder = "encoder_tdt"
decoder_joint = "decoder_joint_tdt"
vocabulary = "{TEST_VOCABULARY}"
durations = {list(CONFIGURED)}
"""
CLIP = read_recording(LIBRIVOX[0])  # 7.1 s
SHORT = read_recording(CARDS[0])  # 1.1 s: one streaming window


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated test models with a four-duration TDT joint; a model-sets file names the durations."""
    root = tmp_path_factory.mktemp("tdt0235")
    generate_repository(root, sizes=dataclasses.replace(SMALL, durations=CONFIGURED))
    (root / "model_sets.toml").write_text(MODEL_SETS, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference(repository: Path) -> FrameByFrame:
    return FrameByFrame(repository, "encoder_tdt", "decoder_joint_tdt", SMALL.vocab_size, CONFIGURED)


def test_the_generated_model_takes_every_configured_duration(reference: FrameByFrame) -> None:
    """Else the comparisons below could not tell a value from an index."""
    tokens, _, taken = reference(CLIP)
    assert set(taken) == set(CONFIGURED), taken
    assert len(tokens) > 20
    as_indices = dataclasses.replace(reference, durations=tuple(range(len(CONFIGURED))))
    assert as_indices(CLIP)[0] != tokens  # reading the durations as 0, 1, 2, 3 decodes otherwise


async def test_batch_and_stream_decode_as_the_reference_loop(
    repository: Path, reference: FrameByFrame
) -> None:
    settings = embedded_settings(model_repository=repository, model_sets_file=repository / "model_sets.toml")
    async with open_recognizer(settings) as recognizer:
        assert recognizer.engine.model_set("tdt0235").model_set.decoding.durations == CONFIGURED
        for samples in (CLIP, SHORT):
            tokens, frames, _ = reference(samples)
            batch = await recognizer.transcribe(samples, "tdt0235")
            assert (list(batch.tokens), list(batch.token_frames)) == (tokens, frames)
        streamed = await streamed_final(recognizer, SHORT, "tdt0235", frame=800)
    assert list(streamed.tokens) == reference(SHORT)[0]
    assert list(streamed.token_frames) == reference(SHORT)[1]
