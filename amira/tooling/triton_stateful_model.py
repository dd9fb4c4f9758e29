"""A Triton Python-backend model that runs a cache-aware encoder and keeps its caches per sequence.

`build_repository(..., flavour="cpu")` copies this file to `<repo>/<encoder>/1/model.py` next to the
cache-aware encoder's `model.onnx`. It is how the CPU flavour keeps the caches inside Triton: the
wheel's Triton has no onnxruntime backend, and its Python backend does not support implicit state
(it never updates a `sequence_batching { state }` tensor: every request sees the initial state), so
this model keeps each sequence's caches itself, keyed by the request's correlation id, with
Triton's sequence batcher (oldest strategy) routing every request of a sequence to the same
instance. A call then carries only the chunk, as with implicit state in the production flavour.

* a request with the sequence-start flag starts from zero caches; one with the end flag drops them;
* a request of a sequence this instance does not know (Triton restarted, the stub was restarted,
  or the sequence idled out) is answered with an error that says the sequence state is gone;
* sequences idle for longer than the batcher's `max_sequence_idle_microseconds` are dropped.

String parameters in `config.pbtxt`: `sequence_state` (the cache inputs, comma-separated; AMIRA reads
it too), `onnx_file` (default `model.onnx`), `intra_op_threads` (default `1`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
SEQUENCE_START, SEQUENCE_END = 1, 2  # TRITONSERVER_RequestFlag


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})

        def parameter(name: str, default: str) -> str:
            return parameters.get(name, {}).get("string_value", "") or default

        path = os.path.join(
            args["model_repository"], args["model_version"], parameter("onnx_file", "model.onnx")
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameter("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        inputs = {spec.name: spec for spec in self.session.get_inputs()}
        outputs = [spec.name for spec in self.session.get_outputs()]
        self.states = [name.strip() for name in parameter("sequence_state", "").split(",") if name.strip()]
        self.initial = {
            name: np.zeros(
                [d if isinstance(d, int) and d > 0 else 1 for d in inputs[name].shape],
                ONNX_DTYPES[inputs[name].type],
            )
            for name in self.states
        }
        # cache_last_channel -> cache_last_channel_next; NeMo's own export names the length's
        # `cache_last_channel_next_len`
        self.next_names = {
            name: next(o for o in outputs if o in (f"{name}_next", name.replace("_len", "_next_len")))
            for name in self.states
        }
        self.chunk_inputs = [name for name in inputs if name not in self.states]
        self.idle_seconds = (
            int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0)) / 1e6
        )
        self.sequences: dict[int, tuple[dict[str, np.ndarray[Any, Any]], float]] = {}

    def _expire(self, now: float) -> None:
        if self.idle_seconds > 0:
            for key in [k for k, (_, used) in self.sequences.items() if now - used > self.idle_seconds]:
                del self.sequences[key]

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        now = time.monotonic()
        self._expire(now)
        responses = []
        for request in requests:
            try:
                sequence, flags = request.correlation_id(), request.flags()
                if flags & SEQUENCE_START:
                    state = {name: value.copy() for name, value in self.initial.items()}
                elif sequence in self.sequences:
                    state = self.sequences[sequence][0]
                else:
                    raise LookupError(f"sequence {sequence}: the sequence state is gone (restarted or idle)")
                feeds = dict(state)
                for name in self.chunk_inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"missing input {name!r}")
                    feeds[name] = tensor.as_numpy()
                names = [o.name for o in self.session.get_outputs()]
                results = dict(zip(names, self.session.run(names, feeds), strict=True))
                if flags & SEQUENCE_END:
                    self.sequences.pop(sequence, None)
                else:
                    self.sequences[sequence] = ({n: results[self.next_names[n]] for n in self.states}, now)
                wanted = list(request.requested_output_names()) or [
                    name for name in names if name not in self.next_names.values()
                ]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(results[name])) for name in wanted]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{type(error).__name__}: {error}")
                    )
                )
        return responses

    def finalize(self) -> None:
        self.sequences.clear()
        self.session = None
