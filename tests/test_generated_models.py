"""The shipped random-weight test models: reproducible, in NeMo's exact layout, and decodable."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile

from amira.models import model_file, shipped_repository
from amira.testing.reference import reference_decoder
from amira.tooling.test_models import (
    DEFAULT_SEED,
    SMALL,
    TRAINED_FILES,
    generate_repository,
    greedy_stats,
    vocabulary,
)

REPOSITORY = shipped_repository()
LIBRIVOX = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))
VARIANTS = [("encoder_tdt", "decoder_joint_tdt", True), ("encoder_rnnt", "decoder_joint_rnnt", False)]
V = SMALL.vocab_size
L, H, D = SMALL.pred_layers, SMALL.pred_hidden, SMALL.d_model


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_file(REPOSITORY, name)), providers=["CPUExecutionProvider"])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def decoder_inputs(
    encoder_outputs: np.ndarray, targets: list[int], states: tuple[np.ndarray, np.ndarray]
) -> dict:
    return {
        "encoder_outputs": encoder_outputs.astype(np.float32),
        "targets": np.array([[t] for t in targets], np.int32),
        "target_length": np.ones(len(targets), np.int32),
        "input_states_1": states[0],
        "input_states_2": states[1],
    }


def random_states(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(rng.uniform(-0.5, 0.5, (L, batch, H)).astype(np.float32) for _ in range(2))  # type: ignore[return-value]


def test_default_seed_regenerates_the_shipped_repository(tmp_path: Path) -> None:
    for name in TRAINED_FILES:  # the trained demo set is shipped beside the generated models, not generated
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.is_file():
            shutil.copy(source, tmp_path / name)
    generate_repository(tmp_path, seed=DEFAULT_SEED)
    shipped = {k: v for k, v in files(REPOSITORY).items() if "__pycache__" not in k}
    assert files(tmp_path) == shipped


def test_another_seed_gives_other_weights(tmp_path: Path) -> None:
    generate_repository(tmp_path, seed=DEFAULT_SEED + 7)
    assert (tmp_path / "encoder_tdt/1/model.onnx").read_bytes() != model_file(
        REPOSITORY, "encoder_tdt"
    ).read_bytes()


def test_repository_layout() -> None:
    sets = tomllib.loads((REPOSITORY / "model_sets.toml").read_text(encoding="utf-8"))["model_sets"]
    assert sets["tdt"] == {
        "preprocessor": "preprocessor",
        "encoder": "encoder_tdt",
        "decoder_joint": "decoder_joint_tdt",
        "vocabulary": "vocab_test.txt",
    }
    assert sets["rnnt"]["encoder"] == "encoder_rnnt" and sets["rnnt"]["decoder_joint"] == "decoder_joint_rnnt"
    assert (REPOSITORY / "preprocessor/1/model.source").read_text().strip() == "onnx_asr:nemo128_conv"
    for model in ("preprocessor", "encoder_tdt", "decoder_joint_tdt", "encoder_rnnt", "decoder_joint_rnnt"):
        config = (REPOSITORY / model / "config.pbtxt").read_text()
        assert f'name: "{model}"' in config and 'platform: "onnxruntime_onnx"' in config
        assert "max_batch_size: 0" in config and "kind: KIND_GPU" in config
    lines = (REPOSITORY / "vocab_test.txt").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(" ", 1) for line in lines] == [[p, str(i)] for i, p in enumerate(vocabulary(V))]
    assert lines[-1] == f"<blk> {V - 1}" and len(set(lines)) == V
    generated = [p for p in REPOSITORY.rglob("*") if p.relative_to(REPOSITORY).parts[0] not in TRAINED_FILES]
    assert sum(p.stat().st_size for p in generated if p.is_file()) < 2_000_000


def test_preprocessor_config_matches_its_graph() -> None:
    config = (REPOSITORY / "preprocessor/config.pbtxt").read_text()
    pre = session("preprocessor")
    for tensor in [*pre.get_inputs(), *pre.get_outputs()]:
        assert f'name: "{tensor.name}"' in config
    assert "dims: [ -1, 128, -1 ]" in config


@pytest.mark.parametrize(("encoder", "decoder_joint", "tdt"), VARIANTS)
def test_tensor_contract(encoder: str, decoder_joint: str, tdt: bool) -> None:
    def signature(tensors: list) -> list[tuple[str, str, int]]:
        return [(t.name, t.type, len(t.shape)) for t in tensors]

    enc = session(encoder)
    assert signature(enc.get_inputs()) == [
        ("audio_signal", "tensor(float)", 3),
        ("length", "tensor(int64)", 1),
    ]
    assert signature(enc.get_outputs()) == [
        ("outputs", "tensor(float)", 3),
        ("encoded_lengths", "tensor(int64)", 1),
    ]
    dec = session(decoder_joint)
    assert signature(dec.get_inputs()) == [
        ("encoder_outputs", "tensor(float)", 3),
        ("targets", "tensor(int32)", 2),
        ("target_length", "tensor(int32)", 1),
        ("input_states_1", "tensor(float)", 3),
        ("input_states_2", "tensor(float)", 3),
    ]
    assert signature(dec.get_outputs()) == [
        ("outputs", "tensor(float)", 4),
        ("prednet_lengths", "tensor(int32)", 1),
        ("output_states_1", "tensor(float)", 3),
        ("output_states_2", "tensor(float)", 3),
    ]
    width = V + 5 if tdt else V
    assert dec.get_outputs()[0].shape[2:] == [1, width]
    assert dec.get_inputs()[3].shape[0] == L and dec.get_inputs()[3].shape[2] == H


def test_encoder_lengths_follow_nemo() -> None:
    def nemo(length: int) -> int:
        for _ in range(3):
            length = (length - 1) // 2 + 1 if length > 0 else 0
        return length

    enc = session("encoder_tdt")
    for frames in (1, 7, 8, 9, 16, 17, 300, 301):
        lengths = np.array([frames, max(frames - 5, 0), 1, 0], np.int64)
        features = np.random.default_rng(frames).standard_normal((4, 128, frames)).astype(np.float32)
        outputs, encoded_lengths = enc.run(None, {"audio_signal": features, "length": lengths})
        assert outputs.shape == (4, D, nemo(frames))
        assert encoded_lengths.tolist() == [nemo(int(n)) for n in lengths]


def test_encoder_batch_rows_match_single_recordings() -> None:
    enc = session("encoder_tdt")
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 128, 200)).astype(np.float32)
    batch, lengths = enc.run(None, {"audio_signal": features, "length": np.array([200, 131], np.int64)})
    alone, (alone_length,) = enc.run(None, {"audio_signal": features[1:, :, :131], "length": np.array([131])})
    assert lengths[1] == alone_length
    np.testing.assert_allclose(batch[1, :, :alone_length], alone[0], atol=1e-4)


@pytest.mark.parametrize(("encoder", "decoder_joint", "tdt"), VARIANTS)
def test_k_frames_in_one_call_equal_k_calls(encoder: str, decoder_joint: str, tdt: bool) -> None:
    dec = session(decoder_joint)
    rng = np.random.default_rng(2)
    frames = rng.standard_normal((2, D, 9)).astype(np.float32)
    states = random_states(rng, 2)
    targets = [5, V - 1]
    together, lengths, h, c = dec.run(None, decoder_inputs(frames, targets, states))
    assert together.shape == (2, 9, 1, V + 5 if tdt else V) and lengths.tolist() == [1, 1]
    for k in range(9):
        alone, _, h1, c1 = dec.run(None, decoder_inputs(frames[:, :, k : k + 1], targets, states))
        np.testing.assert_allclose(together[:, k : k + 1], alone, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(h1, h)
        np.testing.assert_array_equal(c1, c)
    for b in range(2):
        row, *_ = dec.run(
            None,
            decoder_inputs(frames[b : b + 1], targets[b : b + 1], tuple(s[:, b : b + 1] for s in states)),
        )
        np.testing.assert_allclose(together[b : b + 1], row, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("encoder", "decoder_joint", "tdt"), VARIANTS)
def test_output_states_do_not_depend_on_encoder_outputs(encoder: str, decoder_joint: str, tdt: bool) -> None:
    dec = session(decoder_joint)
    rng = np.random.default_rng(3)
    states = random_states(rng, 1)
    _, _, h1, c1 = dec.run(None, decoder_inputs(rng.standard_normal((1, D, 1)), [17], states))
    _, _, h2, c2 = dec.run(None, decoder_inputs(rng.standard_normal((1, D, 4)), [17], states))
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)
    _, _, h3, _ = dec.run(None, decoder_inputs(rng.standard_normal((1, D, 1)), [18], states))
    assert not np.array_equal(h1, h3)


def test_greedy_decoding_of_speech_is_non_trivial() -> None:
    waveforms = [soundfile.read(path, dtype="float32")[0] for path in LIBRIVOX]
    for encoder, decoder_joint, tdt in VARIANTS:
        stats, _ = greedy_stats(REPOSITORY, encoder, decoder_joint, waveforms)
        assert 1.5 < stats.frames / stats.tokens < 6
        assert max(stats.tokens_per_frame) >= 2
        if tdt:
            assert set(stats.durations) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("model_set", ["tdt", "rnnt"])
def test_onnx_asr_decodes_the_shipped_models(model_set: str, tmp_path: Path) -> None:
    decode = reference_decoder(REPOSITORY, model_set, tmp_path)
    waveform, rate = soundfile.read(LIBRIVOX[1], dtype="float32")
    assert rate == 16_000
    ids, frames = decode(waveform)
    assert ids and len(ids) == len(frames)
    assert all(0 <= i < V - 1 for i in ids)
    assert frames == sorted(frames) and frames[-1] < len(waveform) // 1280 + 1
    pieces = vocabulary(V)
    text = "".join(pieces[i] for i in ids).replace("\u2581", " ").strip()
    assert text and decode.text(waveform) == text
    assert decode(waveform) == (ids, frames)
    encoder, decoder_joint, _ = VARIANTS[model_set == "rnnt"]
    assert greedy_stats(REPOSITORY, encoder, decoder_joint, [waveform])[1] == [ids]
