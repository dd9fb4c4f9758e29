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

from .causal import PRE_ENCODE_CACHE, SUBSAMPLING, CausalEncoder
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
    doc: str = "AMIRA demo transducer (RNN-T), trained by `python -m training`",
    metadata: dict[str, str] | None = None,
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
    model.doc_string = doc
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    name = path.parent.parent.name
    properties = {entry.key: entry.value for entry in model.metadata_props}  # a cache-aware chunk
    config = config_pbtxt(name, *model_tensors(model, name), "production", parameters=properties)
    (path.parent.parent / "config.pbtxt").write_text(config, encoding="utf-8")


def export(model: Transducer, directory: Path, pieces: list[str], suffix: str = "") -> None:
    """Write `encoder`, `decoder_joint` (Triton layout) and `vocab.txt`: the repository's default set
    (the decoder/joint alone, as `decoder_joint<suffix>`, for a cache-aware model)."""
    model.eval()
    s = model.sizes
    if suffix:
        _export_decoder_joint(model, directory / f"decoder_joint{suffix}" / "1" / "model.onnx")
        return
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
    _export_decoder_joint(model, directory / "decoder_joint" / "1" / "model.onnx")
    write_vocabulary(directory / "vocab.txt", pieces)


def _export_decoder_joint(model: Transducer, path: Path) -> None:
    s = model.sizes
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
        path,
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


STREAMING_SUFFIX = "_streaming"  # encoder_streaming, decoder_joint_streaming, preprocessor_streaming
DEFAULT_CHUNK = 32  # mel frames (320 ms) per encoder call, written into the encoder's metadata
CACHE_INPUTS = ["cache_last_channel", "cache_last_time", "cache_last_channel_len"]


class _EncoderStep(nn.Module):
    def __init__(self, encoder: CausalEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encoder.step(*args)


def export_streaming(model: Transducer, directory: Path, pieces: list[str]) -> None:
    """Write the `default-streaming` set's models: `encoder_streaming` (NeMo's cache-aware contract,
    `training/causal.py`), `decoder_joint_streaming`, `preprocessor_streaming`; `vocab.txt` is the
    default set's (the same pieces)."""
    from amira.tooling.streaming_preprocessor import write_streaming_preprocessor

    model.eval()
    encoder = model.encoder
    assert isinstance(encoder, CausalEncoder)
    caches = encoder.initial_caches(1)
    layers, _, channel, width = caches[0].shape
    time = caches[1].shape[3]
    frames = PRE_ENCODE_CACHE + DEFAULT_CHUNK
    _export(
        _EncoderStep(encoder),
        (torch.randn(1, model.sizes.features, frames), torch.tensor([frames]), *caches),
        directory / f"encoder{STREAMING_SUFFIX}" / "1" / "model.onnx",
        ["processed_signal", "processed_signal_length", *CACHE_INPUTS],
        ["encoded", "encoded_len", *(f"{name}_next" for name in CACHE_INPUTS)],
        {
            "processed_signal": {0: "B", 2: "T"},
            "processed_signal_length": {0: "B"},
            "cache_last_channel": {1: "B"},
            "cache_last_time": {1: "B"},
            "cache_last_channel_len": {0: "B"},
            "encoded": {0: "B", 2: "T_out"},
            "encoded_len": {0: "B"},
            "cache_last_channel_next": {1: "B"},
            "cache_last_time_next": {1: "B"},
            "cache_last_channel_len_next": {0: "B"},
        },
        {
            "encoded": ["B", width, "T_out"],
            "cache_last_channel_next": [layers, "B", channel, width],
            "cache_last_time_next": [layers, "B", width, time],
        },
        "AMIRA streaming demo transducer (causal, cache-aware, RNN-T), "
        "trained by `python -m training --streaming`",
        {"chunk_size": str(DEFAULT_CHUNK), "pre_encode_cache_size": str(PRE_ENCODE_CACHE)},
    )
    export(model, directory, pieces, STREAMING_SUFFIX)
    write_streaming_preprocessor(directory / f"preprocessor{STREAMING_SUFFIX}" / "1" / "model.onnx")


class OnnxGreedy:
    """The server's own greedy decoder (`amira.core.decoding`) on the exported graphs via onnxruntime:
    the export check compares what the server will decode with the torch greedy decode."""

    def __init__(self, directory: Path, suffix: str = "") -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            path = directory / name / "1" / "model.onnx"
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.encoder, self.decoder = session(f"encoder{suffix}"), session(f"decoder_joint{suffix}")
        shape = self.decoder.get_inputs()[3].shape
        self.layers, self.hidden = shape[0], shape[2]
        width = self.decoder.get_outputs()[0].shape[3]
        self.spec = DecodingSpec("rnnt", blank=width - 1, vocab_size=width)

    def encode(self, features: np.ndarray, length: int) -> tuple[np.ndarray, int]:
        (encoded,), (frames,) = self.encoder.run(
            None, {"audio_signal": features[None, :, :length], "length": np.array([length], np.int64)}
        )
        return encoded, int(frames)

    def __call__(self, features: np.ndarray, length: int) -> list[int]:
        encoded, frames = self.encode(features, length)
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


class OnnxStreamingGreedy(OnnxGreedy):
    """The exported cache-aware encoder run chunk by chunk (`chunk` mel frames, the pre-encode cache
    carried), then the server's greedy decoder over the frames: the export check of the streaming set."""

    def __init__(self, directory: Path, chunk: int = DEFAULT_CHUNK) -> None:
        super().__init__(directory, STREAMING_SUFFIX)
        self.chunk = chunk
        self.cache_shapes = {i.name: i.shape for i in self.encoder.get_inputs()}

    def encode(self, features: np.ndarray, length: int) -> tuple[np.ndarray, int]:
        cache = np.zeros((features.shape[0], PRE_ENCODE_CACHE), np.float32)
        state = {
            name: np.zeros([1 if d == "B" else d for d in self.cache_shapes[name]], np.float32)
            for name in CACHE_INPUTS[:2]
        }
        seen = np.zeros(1, np.int64)
        pieces = []
        for start in range(0, length, self.chunk):
            valid = min(self.chunk, length - start)
            padded = -(-valid // SUBSAMPLING) * SUBSAMPLING
            chunk = np.zeros((features.shape[0], padded), np.float32)
            chunk[:, :valid] = features[:, start : start + valid]
            signal = np.concatenate([cache, chunk], axis=1)
            encoded, encoded_len, channel, time, seen = self.encoder.run(
                None,
                {
                    "processed_signal": signal[None],
                    "processed_signal_length": np.array([PRE_ENCODE_CACHE + valid], np.int64),
                    "cache_last_channel": state["cache_last_channel"],
                    "cache_last_time": state["cache_last_time"],
                    "cache_last_channel_len": seen,
                },
            )
            state = {"cache_last_channel": channel, "cache_last_time": time}
            cache = signal[:, signal.shape[1] - PRE_ENCODE_CACHE :]
            pieces.append(encoded[0, :, : int(encoded_len[0])])
        encoded = np.concatenate(pieces, axis=1)
        return encoded, encoded.shape[1]
