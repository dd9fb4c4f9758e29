"""One generic Triton Python-backend model: runs the ONNX file next to it with onnxruntime on the CPU.

`build_repository(..., flavour="cpu")` copies this file to `<repo>/<model>/1/model.py`, next to
`model.onnx`. It is loaded by Triton's Python backend stub, not imported by AMIRA itself (it needs
`triton_python_backend_utils`, which only the stub provides).

Optional string parameters in `config.pbtxt`:

* `onnx_file` (default `model.onnx`): the ONNX file, relative to the version directory;
* `intra_op_threads` (default `1`): onnxruntime threads per instance;
* `delay_seconds` (default `0`): sleep this long before answering each request (tests use it to
  make a deliberately slow model).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})

        def parameter(name: str, default: str) -> str:
            value = parameters.get(name, {}).get("string_value", "")
            return value or default

        self.delay_seconds = float(parameter("delay_seconds", "0"))
        threads = int(parameter("intra_op_threads", "1"))
        path = os.path.join(
            args["model_repository"], args["model_version"], parameter("onnx_file", "model.onnx")
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [spec.name for spec in self.session.get_inputs()]
        self.output_names = [spec.name for spec in self.session.get_outputs()]

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            if self.delay_seconds > 0:
                time.sleep(self.delay_seconds)
            try:
                feeds = {}
                for name in self.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"missing input {name!r}")
                    feeds[name] = tensor.as_numpy()
                wanted = list(request.requested_output_names()) or self.output_names
                results = self.session.run(wanted, feeds)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in zip(wanted, results, strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{type(error).__name__}: {error}")
                    )
                )
        return responses

    def finalize(self) -> None:
        self.session = None
