"""`decoder_joint` calls for one or many greedy decoders at once, sans-IO.

A `Span` is one `GreedyDecoder` run over encoder frames held in memory. Whoever drives spans (the
engine's per-call path, a worker thread looping over one span, the engine's batching scheduler,
the Triton decode model) does the same three things, which live here once:

* `Span.request()`: the decoder's next call, with the frames it scores;
* `joint_inputs(requests)`: one `decoder_joint` input set for B requests, rows stacked (targets
  `[B, 1]`, states `[L, B, H]`, encoder frames `[B, D, K]` zero-padded to the longest request);
* `receive_outputs(requests, outputs)`: each decoder gets its own row of logits and states back.

Zero-padding frames is exact: the joint scores each frame on its own (encoder frame k with the
prediction-network output), so a padded frame changes no other frame's logits, and the rows past
a request's own K are never read. The prediction network runs per row on `targets` and the states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from amira.core.decoding import GreedyDecoder, JointCall
from amira.core.errors import BackendError

JOINT_OUTPUTS = ("outputs", "output_states_1", "output_states_2")

Array = npt.NDArray[Any]
JointRunner = Callable[[dict[str, Array]], Mapping[str, Array]]


@attrs.frozen
class JointRequest:
    """One decoder's pending call and the encoder frames `[D, K]` it scores."""

    decoder: GreedyDecoder
    call: JointCall
    frames: Array


@attrs.define(eq=False)
class Span:
    """A decoder run over `frames` (`[D, T]`), which hold absolute frames `offset`, `offset + 1`, ...

    `request()` keeps returning the same pending request until its outputs were received, so a
    driver whose call failed (an outage) can retry it: calls are pure.
    """

    decoder: GreedyDecoder
    frames: Array
    offset: int = 0
    calls: int = 0
    _pending: JointRequest | None = attrs.field(default=None, init=False)

    def request(self) -> JointRequest | None:
        """The call to make next (the pending one, if it has not been answered), or None when done."""
        if self._pending is None:
            call = self.decoder.next_call()
            if call is None:
                return None
            frames = self.frames[:, call.start - self.offset : call.stop - self.offset]
            self._pending = JointRequest(self.decoder, call, frames)
        return self._pending

    def answered(self) -> None:
        self._pending = None
        self.calls += 1


def joint_inputs(requests: Sequence[JointRequest]) -> dict[str, Array]:
    """The `decoder_joint` inputs of `requests` as one call with B = len(requests) rows."""
    width = max(request.call.frames for request in requests)
    dim = requests[0].frames.shape[0]
    if len(requests) == 1 and requests[0].frames.shape[1] == width:
        frames = np.ascontiguousarray(requests[0].frames[None], dtype=np.float32)
    else:
        frames = np.zeros((len(requests), dim, width), np.float32)
        for row, request in enumerate(requests):
            frames[row, :, : request.call.frames] = request.frames
    return {
        "encoder_outputs": frames,
        "targets": np.array([[request.call.target] for request in requests], np.int32),
        "target_length": np.ones(len(requests), np.int32),
        "input_states_1": np.concatenate([request.decoder.state.h for request in requests], axis=1),
        "input_states_2": np.concatenate([request.decoder.state.c for request in requests], axis=1),
    }


def receive_outputs(requests: Sequence[JointRequest], outputs: Mapping[str, Array]) -> None:
    """Hand each request's decoder its row of `outputs`; `BackendError` if they do not fit."""
    logits, h, c = (outputs[name] for name in JOINT_OUTPUTS)
    rows = len(requests)
    width = max(request.call.frames for request in requests)
    if logits.ndim != 4 or logits.shape[0] != rows or logits.shape[1] < width or logits.shape[2] != 1:
        raise BackendError(f"decoder_joint returned outputs of shape {logits.shape} for {rows} rows")
    if h.ndim != 3 or h.shape[1] != rows or c.shape != h.shape:
        raise BackendError(f"decoder_joint returned states of shapes {h.shape} and {c.shape}")
    for row, request in enumerate(requests):
        try:
            request.decoder.receive(
                logits[row, : request.call.frames, 0, :], h[:, row : row + 1], c[:, row : row + 1]
            )
        except ValueError as exc:
            raise BackendError(f"decoder_joint returned unusable outputs: {exc}") from exc


def joint_step(spans: Sequence[Span], run: JointRunner) -> list[Span]:
    """One `decoder_joint` call (`run`) for every unfinished span of `spans`, B rows stacked.

    Returns the spans that took part (empty: every span is decoded).
    """
    pending = [(span, request) for span in spans if (request := span.request()) is not None]
    if pending:
        requests = [request for _, request in pending]
        receive_outputs(requests, run(joint_inputs(requests)))
        for span, _ in pending:
            span.answered()
    return [span for span, _ in pending]
