"""The streaming preprocessor: NeMo's log-mel features of a stretch of audio, framed 'valid', unnormalised.

The repository's `preprocessor` (onnx-asr's `nemo128.onnx`) pads the whole utterance by half a
window at each end and normalises every mel bin over the utterance, so the features of a chunk
depend on audio the chunk has not heard yet. Cache-aware streaming models use no normalisation
(NeMo's `normalize: NA`), and this graph frames its input with no padding at all: the caller
(`amira.core.cache_aware.FeatureStream`) prepends the stream's half-window of zeros once, keeps the
last samples of each call for the next, and so computes exactly the frames of the whole signal.

Contract (the same tensor names as the repository's preprocessor): `waveforms` [B, N] float32,
`waveforms_lens` [B] int64 -> `features` [B, F, T] float32, `features_lens` [B] int64, where sample 0
of each row is the pre-emphasis history (the sample before the first one framed; 0 at the start of a
stream) and T = (N - 1 - 512) // 160 + 1 frames of 512 samples every 160 (`features_lens` the same
of each row's length, at least 0). The STFT window, mel filter bank, pre-emphasis and log guard are
taken from the onnx-asr graph, so a frame equals the corresponding frame of `nemo128.onnx` before
its normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from amira.models import onnx_asr_preprocessor

N_FFT = 512
HOP = 160
OPSET = 17


def streaming_preprocessor(features: int = 128) -> onnx.ModelProto:
    """The graph (deterministic: rebuilt byte for byte from the installed onnx-asr package)."""
    source = onnx.load(str(onnx_asr_preprocessor(f"nemo{features}")))
    constants = {init.name: numpy_helper.to_array(init) for init in source.graph.initializer}
    window = constants["hann_window"]
    if window.shape != (N_FFT,) or int(constants["hop_length_23_cast"]) != HOP:
        raise ValueError(
            "unexpected onnx-asr preprocessor: expected a 512-sample window and a 160-sample hop"
        )

    def const(name: str, value: npt.NDArray[Any]) -> TensorProto:
        return numpy_helper.from_array(value, name)

    initializers = [
        const("window", window.astype(np.float32)),
        const("mel_fbanks", constants[f"melscale_fbanks{features}"].astype(np.float32)),
        const("preemph", np.array(constants["preemph_7_cast"], np.float32)),
        const("guard", np.array(constants["log_zero_guard_value_cast"], np.float32)),
        const("hop", np.array(HOP, np.int64)),
        const("zero_1d", np.array([0], np.int64)),
        const("one_1d", np.array([1], np.int64)),
        const("minus_one_1d", np.array([-1], np.int64)),
        const("end_1d", np.array([np.iinfo(np.int64).max], np.int64)),
        const("frame_span", np.array(N_FFT + 1, np.int64)),
        const("one", np.array(1, np.int64)),
        const("zero", np.array(0, np.int64)),
    ]
    nodes = [
        # y[n] = x[n] - 0.97 x[n - 1], sample 0 being the history
        helper.make_node("Slice", ["waveforms", "one_1d", "end_1d", "one_1d"], ["current"]),
        helper.make_node("Slice", ["waveforms", "zero_1d", "minus_one_1d", "one_1d"], ["previous"]),
        helper.make_node("Mul", ["preemph", "previous"], ["scaled"]),
        helper.make_node("Sub", ["current", "scaled"], ["emphasised"]),
        helper.make_node("STFT", ["emphasised", "hop", "window"], ["image"]),
        helper.make_node("ReduceSumSquare", ["image"], ["power"], axes=[-1], keepdims=0),
        helper.make_node("MatMul", ["power", "mel_fbanks"], ["mel"]),
        helper.make_node("Add", ["mel", "guard"], ["guarded"]),
        helper.make_node("Log", ["guarded"], ["log_mel"]),
        helper.make_node("Transpose", ["log_mel"], ["features"], perm=[0, 2, 1]),
        # features_lens = max(0, (lens - 513) // 160 + 1), floor division on non-negative values
        helper.make_node("Sub", ["waveforms_lens", "frame_span"], ["past_first"]),
        helper.make_node("Div", ["past_first", "hop"], ["whole_hops"]),
        helper.make_node("Add", ["whole_hops", "one"], ["counted"]),
        helper.make_node("Less", ["past_first", "zero"], ["too_short"]),
        helper.make_node("Where", ["too_short", "zero", "counted"], ["features_lens"]),
    ]
    graph = helper.make_graph(
        nodes,
        "amira_streaming_preprocessor",
        [
            helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["B", "N"]),
            helper.make_tensor_value_info("waveforms_lens", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", features, "T"]),
            helper.make_tensor_value_info("features_lens", TensorProto.INT64, ["B"]),
        ],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="amira", ir_version=8
    )
    model.doc_string = (
        f"NeMo {features}-mel log features, valid framing (512/160), no normalisation; "
        "sample 0 of each row is the pre-emphasis history"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_streaming_preprocessor(path: Path, features: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(streaming_preprocessor(features), str(path))
