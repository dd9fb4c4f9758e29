"""The sherpa-onnx files of the benchmark (`bench/sherpa.py`) hold the test model's exact weights:
decoder then joiner give `decoder_joint`'s logits and states bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from amira.models import model_file, shipped_repository
from amira.testing.sherpa_models import sherpa_model_dir


def test_decoder_and_joiner_equal_decoder_joint(tmp_path: Path) -> None:
    repository = shipped_repository()
    directory = sherpa_model_dir(repository, "encoder_rnnt", "decoder_joint_rnnt", "vocab_test.txt", tmp_path)
    joint = ort.InferenceSession(str(model_file(repository, "decoder_joint_rnnt")))
    decoder = ort.InferenceSession(str(directory / "decoder.onnx"))
    joiner = ort.InferenceSession(str(directory / "joiner.onnx"))
    rng = np.random.default_rng(3)
    for target in (0, 5, 127, 128):  # 128: the blank
        frames = rng.standard_normal((1, 128, 1)).astype(np.float32)
        h, c = (rng.standard_normal((2, 1, 64)).astype(np.float32) for _ in range(2))
        targets, length = np.array([[target]], np.int32), np.array([1], np.int32)
        logits, _, h_next, c_next = joint.run(
            None,
            {"encoder_outputs": frames, "targets": targets, "target_length": length,
             "input_states_1": h, "input_states_2": c},
        )  # fmt: skip
        decoder_out, _, h_split, c_split = decoder.run(None, dict(zip(
            [i.name for i in decoder.get_inputs()], [targets, length, h, c], strict=True)))  # fmt: skip
        (split,) = joiner.run(None, {"encoder_outputs": frames, "decoder_out": decoder_out})
        assert np.array_equal(split.reshape(-1), logits.reshape(-1))
        assert np.array_equal(h_split, h_next) and np.array_equal(c_split, c_next)
    metadata = {p.key: p.value for p in onnx.load(str(directory / "encoder.onnx")).metadata_props}
    assert metadata["vocab_size"] == "128" and metadata["pred_hidden"] == "64"
