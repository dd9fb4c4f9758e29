"""The Triton decode model: a Python-backend model that decodes whole spans next to `decoder_joint`.

`amira model-repo build` copies this file to `<repo>/<decoder_joint>_decode/1/model.py`, and
AMIRA's sans-IO core (`amira/core`) beside it, so the model runs the very `GreedyDecoder` the server
runs (it needs numpy and attrs in Triton's Python). Each request is one span (tensors:
`amira.core.decode_model`); Triton's dynamic batcher hands several to one `execute`, and the model
steps them together: one `decoder_joint` call (Business Logic Scripting, in-process) with one row
per unfinished span, until every span is decoded. A span whose request does not fit gets an error
response of its own; a failing `decoder_joint` call fails the spans of that call.

Parameters in `config.pbtxt`: `decoder_joint`, the name of the model to call; `decoder_joint_onnx`
(the CPU flavour's), that model's ONNX file copied into this version directory: the model then runs
it itself with onnxruntime, as the CPU flavour's `decoder_joint` does (the same file, options and
library: the same tokens), instead of a BLS call per step. A BLS call crosses Triton twice (this
stub to the core to the `decoder_joint` stub and back), about 0.7 ms on the CPU; a decode makes one
per step, so that hop, not the model, was most of a request's time (24 of 33 ms for the
random-weight RNN-T set, `bench/sherpa.py`). In production `decoder_joint` runs on the GPU and is
called by BLS.

The recording model (`<decoder_joint>_recording`) is this file under another config: its requests
carry a whole recording (`waveforms`, `amira.core.decode_model`), which it runs through the
preprocessor and encoder that the request's parameters name, by BLS (in every flavour: those models
run where their own configs say), before it decodes all the encoder's frames. AMIRA then makes one
HTTP call per batch recording instead of three. BLS results are asked for in CPU memory (a model on
the GPU would otherwise answer tensors that `as_numpy` cannot read), and a BLS call's error keeps
its code, so that an unavailable model reads as unavailable to AMIRA (which fails over) rather
than as an internal error.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the copy of amira/core beside this file

from amira.core.decode_model import RECORDING_INPUTS, RECORDING_MODELS, span_from_request, span_response
from amira.core.joint import JOINT_OUTPUTS, Array, Span, joint_step

DECODER_INPUTS = ("states_1", "states_2", "state", "spec")


class CalledModelError(RuntimeError):
    """A BLS call answered with an error; `code` is Triton's (`pb_utils.TritonError`)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config["parameters"]
        self.decoder_joint = parameters["decoder_joint"]["string_value"]
        onnx_file = parameters.get("decoder_joint_onnx", {}).get("string_value", "")
        self.session = None
        if onnx_file:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
            self.session = ort.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )

    def _joint(self, inputs: dict[str, Array]) -> dict[str, Array]:
        if self.session is not None:
            return dict(zip(JOINT_OUTPUTS, self.session.run(list(JOINT_OUTPUTS), inputs), strict=True))
        return self._call(self.decoder_joint, inputs, JOINT_OUTPUTS)

    @staticmethod
    def _call(model: str, inputs: dict[str, Array], outputs: tuple[str, ...]) -> dict[str, Array]:
        """One call of another model of this Triton (Business Logic Scripting), answered in CPU memory."""
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            error = response.error()
            raise CalledModelError(f"{model}: {error.message()}", error.code())
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    def _encode(self, request: object, inputs: dict[str, Array]) -> tuple[dict[str, Array], tuple[int, int]]:
        """A whole recording's `encoder_outputs` input (all its valid frames) and its lengths."""
        parameters = json.loads(request.parameters() or "{}")  # type: ignore[attr-defined]
        preprocessor, encoder = (str(parameters.get(name, "")) for name in RECORDING_MODELS)
        if not preprocessor or not encoder:
            raise ValueError(f"a recording needs the request parameters {' and '.join(RECORDING_MODELS)}")
        waveforms = np.asarray(inputs["waveforms"], np.float32)
        lengths = np.asarray(inputs["waveforms_lens"], np.int64).reshape(-1)
        if waveforms.ndim != 2 or waveforms.shape[0] != 1 or lengths.size != 1:
            raise ValueError(f"waveforms {waveforms.shape} with lengths {lengths.shape} do not fit")
        features = self._call(
            preprocessor, {"waveforms": waveforms, "waveforms_lens": lengths}, ("features", "features_lens")
        )
        encoded = self._call(
            encoder,
            {"audio_signal": features["features"], "length": features["features_lens"]},
            ("outputs", "encoded_lengths"),
        )
        frames, length = encoded["outputs"], int(encoded["encoded_lengths"].reshape(-1)[0])
        if frames.ndim != 3 or frames.shape[0] != 1 or not 0 <= length <= frames.shape[2]:
            raise ValueError(f"{encoder} returned outputs of shape {frames.shape} for length {length}")
        inputs["encoder_outputs"] = frames[:, :, :length]
        return inputs, (int(features["features_lens"].reshape(-1)[0]), length)

    def execute(self, requests: list) -> list:  # type: ignore[type-arg]
        responses: list = [None] * len(requests)  # type: ignore[type-arg]
        spans: dict[int, Span] = {}
        lengths: dict[int, tuple[int, int]] = {}
        for index, request in enumerate(requests):
            try:
                inputs = {}
                whole = pb_utils.get_input_tensor_by_name(request, RECORDING_INPUTS[0]) is not None
                for name in (*DECODER_INPUTS, *(RECORDING_INPUTS if whole else ("encoder_outputs",))):
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"missing input {name!r}")
                    inputs[name] = tensor.as_numpy()
                if whole:
                    inputs, lengths[index] = self._encode(request, inputs)
                spans[index] = span_from_request(inputs)
            except Exception as error:
                responses[index] = self._error(error)
        try:
            while joint_step(list(spans.values()), self._joint):
                pass
            for index, span in spans.items():
                outputs = span_response(span, lengths.get(index))
                tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as error:
            for index in spans:
                responses[index] = self._error(error)
        return responses

    @staticmethod
    def _error(error: Exception) -> object:
        if isinstance(error, CalledModelError):  # the called model's own error, with its code
            triton_error = pb_utils.TritonError(str(error), error.code)
        else:
            triton_error = pb_utils.TritonError(f"{type(error).__name__}: {error}")
        return pb_utils.InferenceResponse(output_tensors=[], error=triton_error)
