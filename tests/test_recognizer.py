"""The recogniser on the embedded backend, token for token against onnx-asr on the same ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amira import open_recognizer
from amira.core.errors import BadAudio, UnknownModel
from amira.core.model_set import ModelSetError
from amira.models import shipped_repository
from amira.settings import Settings
from amira.testing.recordings import MODEL_SETS, RECORDINGS, read_recording
from amira.testing.reference import reference_decoder
from amira.testing.servers import embedded_settings
from amira.testing.word_times import word_rule_violations


def generated_audio() -> dict[str, np.ndarray]:
    """Synthetic inputs next to the real speech: tones, noise, silence, very short audio."""
    rng = np.random.default_rng(7)
    t = np.arange(16_000 * 2) / 16_000
    return {
        "chirp": (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(16_000)).astype(np.float32),
        "silence": np.zeros(12_000, np.float32),
        "short": (0.2 * rng.standard_normal(1_400)).astype(np.float32),
    }


@pytest.mark.parametrize("model", ("default", *MODEL_SETS))
async def test_tokens_equal_onnx_asr_on_every_recording(model: str, tmp_path: Path) -> None:
    """Tokens and frames exactly; their probabilities as onnx-asr's own log-softmax gives them."""
    reference = reference_decoder(shipped_repository(), model, tmp_path)
    inputs = {p.name: read_recording(p) for p in RECORDINGS} | generated_audio()
    async with open_recognizer(embedded_settings()) as recognizer:
        model_set = recognizer.engine.model_set(model).model_set
        emitted = 0
        for name, samples in inputs.items():
            transcript = await recognizer.transcribe(samples, model)
            tokens, frames, probabilities = reference.emissions(samples)
            assert list(transcript.tokens) == tokens, name
            assert list(transcript.token_frames) == frames, name
            assert transcript.text == model_set.vocabulary.detokenize(tokens)
            # onnx-asr scores one frame per call, AMIRA many: the logits agree to float32 rounding
            assert transcript.token_probabilities == pytest.approx(probabilities, rel=1e-4), name
            emitted += len(tokens)
        assert emitted > 50  # the comparison is not vacuous (the demo model emits whole words)


@pytest.mark.parametrize("model", ("default", *MODEL_SETS))
async def test_word_times_keep_the_rules_on_every_recording(model: str) -> None:
    """No shared starts, at least a frame each, no overlaps, inside the audio; TDT durations used."""
    async with open_recognizer(embedded_settings()) as recognizer:
        model_set = recognizer.engine.model_set(model).model_set
        frame = model_set.frame_seconds
        spread = beyond = 0
        for path in RECORDINGS:
            transcript = await recognizer.transcribe(read_recording(path), model)
            words, frames = transcript.words, transcript.token_frames
            assert word_rule_violations(words, frame, transcript.encoded_length) == []
            groups = model_set.vocabulary.words(transcript.tokens)
            spread += len(groups) - len({frames[first] for _, first, _ in groups})
            for word, (_, _, last) in zip(words, groups, strict=True):
                # past its last token's frame and its own first frame: only a TDT duration does that
                beyond += round(word.end / frame) > max(frames[last], round(word.start / frame)) + 1
        assert spread > 0  # every model set emits several words on one frame somewhere: they were spread
        assert (beyond > 10) if model == "tdt" else (beyond == 0)


@pytest.mark.parametrize("model", MODEL_SETS)
@pytest.mark.parametrize("frames_per_call", [1, 2, 5])
async def test_frames_per_call_never_changes_the_tokens(model: str, frames_per_call: int) -> None:
    async with (
        open_recognizer(embedded_settings()) as default,
        open_recognizer(embedded_settings(frames_per_call=frames_per_call)) as capped,
    ):
        for path in RECORDINGS:
            samples = read_recording(path)
            default.engine.calls.clear()
            expected = await default.transcribe(samples, model)
            assert default.engine.calls["decoder_joint"] <= len(expected.tokens) + 1
            assert (await capped.transcribe(samples, model)).token_frames == expected.token_frames
            assert (await capped.transcribe(samples, model)).tokens == expected.tokens


async def test_max_symbols_per_step_limits_emissions_per_frame(tmp_path: Path) -> None:
    repository = shipped_repository()
    sets = tmp_path / "sets.toml"
    sets.write_text(
        '[model_sets.tdt]\nencoder = "encoder_tdt"\ndecoder_joint = "decoder_joint_tdt"\n'
        'vocabulary = "vocab_test.txt"\nmax_symbols_per_step = 1\n'
        '[model_sets.rnnt]\nencoder = "encoder_rnnt"\ndecoder_joint = "decoder_joint_rnnt"\n'
        'vocabulary = "vocab_test.txt"\nmax_symbols_per_step = 1\n'
    )
    settings = Settings(model_repository=repository, model_sets_file=sets)
    async with open_recognizer(settings) as limited, open_recognizer(embedded_settings()) as unlimited:
        for model in MODEL_SETS:
            samples = read_recording(RECORDINGS[0])
            free = await unlimited.transcribe(samples, model)
            capped = await limited.transcribe(samples, model)
            assert max(np.bincount(free.token_frames)) > 1  # the recording does emit several on one frame
            assert max(np.bincount(capped.token_frames)) == 1


async def test_transcript_fields() -> None:
    async with open_recognizer(embedded_settings()) as recognizer:
        samples = read_recording(RECORDINGS[1])
        transcript = await recognizer.transcribe(samples)
        assert transcript.audio_samples == samples.size
        assert transcript.features_length == samples.size // 160
        assert transcript.encoded_length == -(-transcript.features_length // 8)
        assert " ".join(w.word for w in transcript.words) == transcript.text
        assert all(w.start < w.end for w in transcript.words)
        assert recognizer.engine.model_set("default").model_set.frame_seconds == 0.08
        with pytest.raises(UnknownModel):
            await recognizer.transcribe(samples, "nope")
        with pytest.raises(BadAudio):
            await recognizer.transcribe(np.zeros(0, np.float32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decoder_joint": "encoder"}, "has no input 'encoder_outputs'"),
        ({"encoder": "decoder_joint"}, "has no input 'audio_signal'"),
        ({"vocabulary": "big_vocab.txt"}, "the joint only"),
        ({"durations": [0, 1, 2]}, "durations are configured"),
    ],
)
async def test_model_sets_that_do_not_fit_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    repository = shipped_repository()
    big = tmp_path / "big_vocab.txt"
    big.write_text("".join(f"▁w{i} {i}\n" for i in range(200)) + "<blk> 200\n", encoding="utf-8")
    table = {"encoder": "encoder_rnnt", "decoder_joint": "decoder_joint_rnnt", "vocabulary": "vocab_test.txt"}
    table |= change
    if "vocabulary" in change:
        table["vocabulary"] = str(big)
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in table.items())
    sets = tmp_path / "sets.toml"
    sets.write_text(f"[model_sets.bad]\n{lines}", encoding="utf-8")
    with pytest.raises(ModelSetError, match=message):
        async with open_recognizer(Settings(model_repository=repository, model_sets_file=sets)):
            pass
