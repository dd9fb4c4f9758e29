"""The wire format of a Triton decode model: a whole span decoded inside Triton, sans-IO.

A decode model (`<decoder_joint>_decode`, a Python-backend model that `amira model-repo build`
writes next to each `decoder_joint`) runs the same `GreedyDecoder` against `decoder_joint` through
Business Logic Scripting, so AMIRA makes one HTTP call per span instead of one per emitted token.
Both ends use this module: AMIRA to write a span's request and read the answer back
(`span_request`, `apply_response`), the model to read requests into spans and answer them
(`span_from_request`, `span_response`); the model then steps all the spans of Triton's dynamic
batch together with `amira.core.joint.joint_step`.

Tensors (batch first, as Triton's dynamic batcher wants them; one request is one span):

| input | type, shape | |
|---|---|---|
| `encoder_outputs` | FP32 [1, D, K] | the span's frames, from the state's frame to the span's stop |
| `states_1`, `states_2` | FP32 [1, L, H] | the prediction network's state (`h`, `c`) |
| `state` | INT32 [1, 2] | last token, symbols emitted on the current frame |
| `spec` | INT32 [1, 4+n] | V (with blank), blank, max symbols a frame, frames per call (0: all), durations |

| output | type, shape | |
|---|---|---|
| `tokens`, `token_frames` | INT32 [1, E] | emissions; frames relative to the first frame sent |
| `token_probabilities`, `blank_probabilities` | FP64 [1, E] | the emissions' softmax values (`Emission`) |
| `token_durations` | INT32 [1, E] | the emissions' TDT durations (1 for RNN-T) |
| `states_1`, `states_2` | FP32 [1, L, H] | the state after the span |
| `state` | INT32 [1, 3] | last token, symbols on the frame, the frame reached (relative) |
| `calls` | INT32 [1, 1] | `decoder_joint` calls the span took |

**Whole recordings.** The recording model (`<decoder_joint>_recording`: the same Python model
under a config of its own, so that recordings neither wait behind spans in one instance nor cut
their dynamic batches short) takes a recording's audio instead of encoder frames: inputs
`waveforms` (FP32 [1, N], 16 kHz) and `waveforms_lens` (INT64 [1, 1]) in place of
`encoder_outputs`, and the request parameters `preprocessor` and `encoder` naming the models to run
it through first (Business Logic Scripting, in Triton); the span is then all of the encoder's
frames from the decoder's fresh state, and the answer adds `lengths` (INT32 [1, 2]: feature
frames, encoder frames). A batch recording is then one HTTP call instead of three
(`recording_request`, `read_lengths`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from amira.core.decoding import DecoderState, DecodingSpec, Emission, GreedyDecoder
from amira.core.errors import BackendError
from amira.core.joint import Array, Span

DECODE_MODEL_SUFFIX = "_decode"
RECORDING_MODEL_SUFFIX = "_recording"
RECORDING_INPUTS = ("waveforms", "waveforms_lens")  # a recording's, in place of `encoder_outputs`
RECORDING_MODELS = ("preprocessor", "encoder")  # the request parameters naming the models to run first
DECODE_OUTPUTS = (
    "tokens",
    "token_frames",
    "token_probabilities",
    "blank_probabilities",
    "token_durations",
    "states_1",
    "states_2",
    "state",
    "calls",
)
RECORDING_OUTPUTS = (*DECODE_OUTPUTS, "lengths")


def decode_model_name(decoder_joint: str) -> str:
    return decoder_joint + DECODE_MODEL_SUFFIX


def recording_model_name(decoder_joint: str) -> str:
    return decoder_joint + RECORDING_MODEL_SUFFIX


def span_request(span: Span) -> dict[str, Array] | None:
    """The decode model's inputs for the rest of `span`; None when nothing is left to decode."""
    decoder = span.decoder
    if decoder.state.frame >= decoder.stop:
        return None
    start = decoder.state.frame - span.offset
    frames = span.frames[:, start : decoder.stop - span.offset]
    return {
        "encoder_outputs": np.ascontiguousarray(frames[None], dtype=np.float32),
        **_decoder_inputs(decoder),
    }


def recording_request(samples: Array, decoder: GreedyDecoder) -> dict[str, Array]:
    """The recording model's inputs for a whole recording (16 kHz float32) decoded by `decoder` from
    its fresh state; the request also names the models to run (`RECORDING_MODELS`, as request
    parameters)."""
    return {
        "waveforms": np.ascontiguousarray(samples[None], dtype=np.float32),
        "waveforms_lens": np.array([[samples.size]], np.int64),
        **_decoder_inputs(decoder),
    }


def _decoder_inputs(decoder: GreedyDecoder) -> dict[str, Array]:
    state, spec = decoder.state, decoder.spec
    head = [spec.vocab_size, spec.blank, spec.max_symbols_per_step, spec.frames_per_call or 0]
    return {
        "states_1": np.ascontiguousarray(state.h.transpose(1, 0, 2)),
        "states_2": np.ascontiguousarray(state.c.transpose(1, 0, 2)),
        "state": np.array([[state.last, state.symbols_on_frame]], np.int32),
        "spec": np.array([[*head, *spec.durations]], np.int32),
    }


def read_lengths(outputs: Mapping[str, Array]) -> tuple[int, int]:
    """A whole recording's feature and encoder frame counts from the recording model's answer."""
    try:
        features, encoded = (int(v) for v in outputs["lengths"].reshape(2))
    except (KeyError, ValueError) as exc:
        raise BackendError(f"the decode model answered no usable lengths: {exc}") from exc
    if features < 0 or encoded < 0:
        raise BackendError(f"the decode model answered negative lengths {features}, {encoded}")
    return features, encoded


def apply_response(span: Span, outputs: Mapping[str, Array]) -> int:
    """Take the decode model's answer into `span`'s decoder; returns the `decoder_joint` calls it took."""
    decoder = span.decoder
    state = decoder.state
    base = state.frame
    try:
        tokens, frames = outputs["tokens"].reshape(-1), outputs["token_frames"].reshape(-1)
        probabilities = outputs["token_probabilities"].reshape(-1)
        blank_probabilities = outputs["blank_probabilities"].reshape(-1)
        durations = outputs["token_durations"].reshape(-1)
        last, symbols, reached = (int(v) for v in outputs["state"].reshape(3))
        h = outputs["states_1"].reshape(state.h.shape[1], state.h.shape[0], state.h.shape[2])
        c = outputs["states_2"].reshape(h.shape)
        calls = int(outputs["calls"].reshape(1)[0])
    except (KeyError, ValueError) as exc:
        raise BackendError(f"the decode model answered tensors that do not fit: {exc}") from exc
    shapes = {a.shape for a in (tokens, frames, probabilities, blank_probabilities, durations)}
    if len(shapes) != 1 or reached < 0 or not 0 <= last < decoder.spec.vocab_size:
        raise BackendError("the decode model answered an inconsistent state")
    decoder.emissions.extend(
        Emission(int(t), base + int(f), float(p), float(b), int(d))
        for t, f, p, b, d in zip(tokens, frames, probabilities, blank_probabilities, durations, strict=True)
    )
    np.copyto(state.h, h.transpose(1, 0, 2))
    np.copyto(state.c, c.transpose(1, 0, 2))
    state.last, state.symbols_on_frame, state.frame = last, symbols, base + reached
    span.calls += calls
    return calls


def span_from_request(inputs: Mapping[str, Array]) -> Span:
    """The span one decode-model request asks for, in frames relative to the first one sent."""
    frames = np.asarray(inputs["encoder_outputs"], np.float32)
    h, c = np.asarray(inputs["states_1"], np.float32), np.asarray(inputs["states_2"], np.float32)
    state_row = np.asarray(inputs["state"]).reshape(-1)
    spec_row = [int(v) for v in np.asarray(inputs["spec"]).reshape(-1)]
    if frames.ndim != 3 or frames.shape[0] != 1 or h.ndim != 3 or h.shape != c.shape or h.shape[0] != 1:
        raise ValueError(f"encoder_outputs {frames.shape} and states {h.shape}, {c.shape} do not fit")
    if state_row.size != 2 or len(spec_row) < 4:
        raise ValueError("state must hold 2 values and spec at least 4")
    vocab_size, blank, max_symbols, frames_per_call, *durations = spec_row
    spec = DecodingSpec(
        "tdt" if durations else "rnnt",
        blank,
        vocab_size,
        tuple(durations),
        max_symbols,
        frames_per_call or None,
    )
    state = DecoderState(
        int(state_row[0]),
        np.ascontiguousarray(h.transpose(1, 0, 2)),
        np.ascontiguousarray(c.transpose(1, 0, 2)),
        0,
        int(state_row[1]),
    )
    return Span(GreedyDecoder(spec, state, frames.shape[2]), frames[0])


def span_response(span: Span, lengths: tuple[int, int] | None = None) -> dict[str, Array]:
    """The decode model's answer for a decoded span; `lengths` (feature and encoder frames) for a
    whole recording's."""
    decoder = span.decoder
    state = decoder.state
    emissions = decoder.emissions
    response: dict[str, Array] = {
        "tokens": np.array([[e.token for e in emissions]], np.int32).reshape(1, -1),
        "token_frames": np.array([[e.frame for e in emissions]], np.int32).reshape(1, -1),
        "token_probabilities": np.array([[e.probability for e in emissions]], np.float64).reshape(1, -1),
        "blank_probabilities": np.array([[e.blank_probability for e in emissions]], np.float64).reshape(
            1, -1
        ),
        "token_durations": np.array([[e.duration for e in emissions]], np.int32).reshape(1, -1),
        "states_1": np.ascontiguousarray(state.h.transpose(1, 0, 2)),
        "states_2": np.ascontiguousarray(state.c.transpose(1, 0, 2)),
        "state": np.array([[state.last, state.symbols_on_frame, state.frame]], np.int32),
        "calls": np.array([[span.calls]], np.int32),
    }
    if lengths is not None:
        response["lengths"] = np.array([lengths], np.int32)
    return response
