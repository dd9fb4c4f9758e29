"""Export to the NeMo ONNX layout (encoder + decoder_joint), and the server's greedy decoder on the export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from amira.core.decoding import DecoderState, DecodingSpec, GreedyDecoder
from amira.tooling.test_models import write_vocabulary
from amira.tooling.triton_repository import config_pbtxt, model_tensors

from .model import Transducer

OPSET = 17


class _DecoderJoint(nn.Module):
    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.predictor, self.joint = model.predictor, model.joint

    def forward(self, encoder_outputs, targets, target_length, input_states_1, input_states_2):
        pred, (h, c) = self.predictor(targets.long(), (input_states_1, input_states_2))
        logits = self.joint(encoder_outputs.transpose(1, 2), pred)  # [B, K, 1, V]
        return logits, target_length + 0, h, c


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict,
    output_dims: dict[str, list[int | str]],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    for value in model.graph.output:  # the tracer leaves some static dims symbolic; Triton wants them
        if value.name in output_dims:
            for dim, size in zip(value.type.tensor_type.shape.dim, output_dims[value.name], strict=True):
                if isinstance(size, int):
                    dim.Clear()
                    dim.dim_value = size
                else:
                    dim.dim_param = size
    model.doc_string = "AMIRA demo transducer (RNN-T), trained by `python -m training`"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    name = path.parent.parent.name
    config = config_pbtxt(name, *model_tensors(model, name), "production")
    (path.parent.parent / "config.pbtxt").write_text(config, encoding="utf-8")


def export(model: Transducer, directory: Path, pieces: list[str]) -> None:
    """Write `encoder`, `decoder_joint` (Triton layout) and `vocab.txt`: the repository's default set."""
    model.eval()
    s = model.sizes
    features = torch.randn(1, s.features, 160)
    _export(
        model.encoder,
        (features, torch.tensor([160])),
        directory / "encoder" / "1" / "model.onnx",
        ["audio_signal", "length"],
        ["outputs", "encoded_lengths"],
        {
            "audio_signal": {0: "B", 2: "T"},
            "length": {0: "B"},
            "outputs": {0: "B", 2: "T_out"},
            "encoded_lengths": {0: "B"},
        },
        {"outputs": ["B", model.encoder.width, "T_out"]},
    )
    layers, hidden = s.pred_layers, s.pred_hidden
    states = torch.zeros(layers, 1, hidden)
    _export(
        _DecoderJoint(model),
        (
            torch.randn(1, model.encoder.width, 3),
            torch.tensor([[model.blank]], dtype=torch.int32),
            torch.tensor([1], dtype=torch.int32),
            states,
            states,
        ),
        directory / "decoder_joint" / "1" / "model.onnx",
        ["encoder_outputs", "targets", "target_length", "input_states_1", "input_states_2"],
        ["outputs", "prednet_lengths", "output_states_1", "output_states_2"],
        {
            "encoder_outputs": {0: "B", 2: "K"},
            "targets": {0: "B"},
            "target_length": {0: "B"},
            "input_states_1": {1: "B"},
            "input_states_2": {1: "B"},
            "outputs": {0: "B", 1: "K"},
            "prednet_lengths": {0: "B"},
            "output_states_1": {1: "B"},
            "output_states_2": {1: "B"},
        },
        {
            "outputs": ["B", "K", 1, s.vocab_size],
            "output_states_1": [layers, "B", hidden],
            "output_states_2": [layers, "B", hidden],
        },
    )
    write_vocabulary(directory / "vocab.txt", pieces)


class OnnxGreedy:
    """The server's own greedy decoder (`amira.core.decoding`) on the exported graphs via onnxruntime:
    the export check compares what the server will decode with the torch greedy decode."""

    def __init__(self, directory: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            path = directory / name / "1" / "model.onnx"
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.encoder, self.decoder = session("encoder"), session("decoder_joint")
        shape = self.decoder.get_inputs()[3].shape
        self.layers, self.hidden = shape[0], shape[2]
        width = self.decoder.get_outputs()[0].shape[3]
        self.spec = DecodingSpec("rnnt", blank=width - 1, vocab_size=width)

    def __call__(self, features: np.ndarray, length: int) -> list[int]:
        (encoded,), (frames,) = self.encoder.run(
            None, {"audio_signal": features[None, :, :length], "length": np.array([length], np.int64)}
        )
        state = DecoderState.zeros(self.spec.blank, self.layers, self.hidden)
        decoder = GreedyDecoder(self.spec, state, int(frames))
        while (call := decoder.next_call()) is not None:
            logits, _, h, c = self.decoder.run(
                None,
                {
                    "encoder_outputs": encoded[None, :, call.start : call.stop],
                    "targets": np.array([[call.target]], np.int32),
                    "target_length": np.array([1], np.int32),
                    "input_states_1": state.h,
                    "input_states_2": state.c,
                },
            )
            decoder.receive(logits[0, :, 0], h, c)
        return [emission.token for emission in decoder.emissions]
