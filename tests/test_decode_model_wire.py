"""The Triton decode model's wire format (`amira.core.decode_model`), sans-IO: a span sent as a
request, decoded on the other side and taken back, ends exactly as the span decoded in process:
the same emissions (tokens, frames, probabilities, durations), the same decoder state and the same
number of `decoder_joint` calls; the tensors have the dtypes and shapes of the model's config, and
answers that do not fit are backend errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from amira.core.decode_model import (
    DECODE_OUTPUTS,
    RECORDING_OUTPUTS,
    apply_response,
    read_lengths,
    recording_request,
    span_from_request,
    span_request,
    span_response,
)
from amira.core.decoding import DecoderState, DecodingSpec, GreedyDecoder
from amira.core.errors import BackendError
from amira.core.joint import Span, joint_step
from amira.models import model_file, shipped_repository
from amira.testing.recordings import LIBRIVOX, read_recording
from amira.tooling.test_models import SMALL

pytestmark = pytest.mark.timeout(60)

REPOSITORY = shipped_repository()
Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
L, H, V = SMALL.pred_layers, SMALL.pred_hidden, SMALL.vocab_size


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_file(REPOSITORY, name)), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def encoded() -> np.ndarray:
    """The tdt test encoder's output `[D, T]` for 3 s of speech."""
    samples = read_recording(LIBRIVOX[0])[: 16_000 * 3][None]
    features, lengths = session("preprocessor").run(
        None, {"waveforms": samples, "waveforms_lens": [samples.shape[1]]}
    )
    (frames,), (length,) = session("encoder_tdt").run(None, {"audio_signal": features, "length": lengths})
    return np.ascontiguousarray(frames[:, :length])


def joint_runner(kind: str) -> Run:
    joint = session(f"decoder_joint_{kind}")
    names = [o.name for o in joint.get_outputs()]

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, joint.run(None, dict(inputs)), strict=True))

    return run


def decode(span: Span, run: Run) -> None:
    while joint_step([span], run):
        pass


def spec_for(kind: str, frames_per_call: int | None = None) -> DecodingSpec:
    durations = SMALL.durations if kind == "tdt" else ()
    return DecodingSpec(kind, V - 1, V, durations, 10, frames_per_call)


def check_wire(
    tensors: Mapping[str, Any], expected: Mapping[str, tuple[type, tuple[int | None, ...]]]
) -> None:
    """Dtypes and shapes as the decode model's config declares them (None: any size)."""
    assert set(tensors) == set(expected)
    for name, (dtype, shape) in expected.items():
        assert tensors[name].dtype == dtype, name
        assert len(tensors[name].shape) == len(shape), name
        assert all(w is None or w == d for w, d in zip(shape, tensors[name].shape, strict=True)), name


@pytest.mark.parametrize("kind", ["tdt", "rnnt"])
@pytest.mark.parametrize("frames_per_call", [None, 3])
def test_a_span_through_the_wire_format_decodes_as_in_process(
    encoded: np.ndarray, kind: str, frames_per_call: int | None
) -> None:
    spec = spec_for(kind, frames_per_call)
    run = joint_runner(kind)
    direct, wired = DecoderState.zeros(spec.blank, L, H), DecoderState.zeros(spec.blank, L, H)
    total, first_stop = encoded.shape[1], encoded.shape[1] // 3
    wired_calls = direct_calls = 0
    # two spans, as two stream windows: the state carries over, and the second window's frames
    # start before the state's frame (left context), at an offset
    for stop, offset in ((first_stop, 0), (total - 3, first_stop - 5)):  # frames go on past each stop
        in_process = Span(GreedyDecoder(spec, direct, stop), encoded[:, offset:], offset)
        decode(in_process, run)
        caller = Span(GreedyDecoder(spec, wired, stop), encoded[:, offset:], offset)
        caller.calls = wired_calls
        request = span_request(caller)
        assert request is not None
        check_wire(
            request,
            {
                "encoder_outputs": (np.float32, (1, SMALL.d_model, stop - wired.frame)),
                "states_1": (np.float32, (1, L, H)),
                "states_2": (np.float32, (1, L, H)),
                "state": (np.int32, (1, 2)),
                "spec": (np.int32, (1, 4 + len(spec.durations))),
            },
        )
        remote = span_from_request(request)
        assert remote.decoder.spec == spec
        decode(remote, run)
        response = span_response(remote)
        emitted = len(remote.decoder.emissions)
        check_wire(
            response,
            {
                "tokens": (np.int32, (1, emitted)),
                "token_frames": (np.int32, (1, emitted)),
                "token_probabilities": (np.float64, (1, emitted)),
                "blank_probabilities": (np.float64, (1, emitted)),
                "token_durations": (np.int32, (1, emitted)),
                "states_1": (np.float32, (1, L, H)),
                "states_2": (np.float32, (1, L, H)),
                "state": (np.int32, (1, 3)),
                "calls": (np.int32, (1, 1)),
            },
        )
        assert set(response) == set(DECODE_OUTPUTS)
        assert apply_response(caller, response) == remote.calls == in_process.calls
        wired_calls, direct_calls = caller.calls, direct_calls + in_process.calls
        assert caller.decoder.emissions == in_process.decoder.emissions
        assert (wired.last, wired.frame, wired.symbols_on_frame) == (
            direct.last,
            direct.frame,
            direct.symbols_on_frame,
        )
        np.testing.assert_array_equal(wired.h, direct.h)
        np.testing.assert_array_equal(wired.c, direct.c)
        assert span_request(caller) is None  # decoded to its stop: nothing left to send
    assert wired_calls == direct_calls  # the caller's count adds up the answers' calls
    assert len(caller.decoder.emissions) > 0


def answer(kind: str = "tdt", emitted: int = 2) -> dict[str, np.ndarray]:
    return {
        "tokens": np.ones((1, emitted), np.int32),
        "token_frames": np.zeros((1, emitted), np.int32),
        "token_probabilities": np.ones((1, emitted), np.float64),
        "blank_probabilities": np.zeros((1, emitted), np.float64),
        "token_durations": np.ones((1, emitted), np.int32),
        "states_1": np.zeros((1, L, H), np.float32),
        "states_2": np.zeros((1, L, H), np.float32),
        "state": np.array([[1, 0, 4]], np.int32),
        "calls": np.array([[3]], np.int32),
    }


def test_a_fitting_answer_moves_the_state_and_counts_the_calls() -> None:
    state = DecoderState.zeros(V - 1, L, H)
    state.frame = 10
    span = Span(GreedyDecoder(spec_for("tdt"), state, 20), np.zeros((SMALL.d_model, 20), np.float32))
    span.calls = 2
    assert apply_response(span, answer()) == 3
    assert span.calls == 5 and (state.last, state.frame, state.symbols_on_frame) == (1, 14, 0)
    assert [(e.token, e.frame) for e in span.decoder.emissions] == [(1, 10), (1, 10)]
    last_is_token_0 = answer()
    last_is_token_0["state"] = np.array([[0, 1, 1]], np.int32)  # token 0 is a token like any other
    apply_response(span, last_is_token_0)
    assert (state.last, state.frame, state.symbols_on_frame) == (0, 15, 1)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: a.pop("token_probabilities"),
        lambda a: a.update(token_durations=np.ones((1, 3), np.int32)),
        lambda a: a.update(token_frames=np.ones((1, 1), np.int32)),
        lambda a: a.update(state=np.array([[1, 0, -1]], np.int32)),  # reached a frame before the span
        lambda a: a.update(state=np.array([[V, 0, 4]], np.int32)),  # a last token past the vocabulary
        lambda a: a.update(state=np.array([[-1, 0, 4]], np.int32)),
        lambda a: a.update(state=np.array([[1, 0]], np.int32)),
        lambda a: a.update(states_2=np.zeros((1, L, H + 1), np.float32)),
        lambda a: a.update(calls=np.array([[1, 2]], np.int32)),
    ],
    ids=["missing", "durations", "frames", "reached", "last-high", "last-low", "state", "states", "calls"],
)
def test_an_answer_that_does_not_fit_is_a_backend_error(tamper: Callable[[dict[str, Any]], object]) -> None:
    state = DecoderState.zeros(V - 1, L, H)
    span = Span(GreedyDecoder(spec_for("tdt"), state, 20), np.zeros((SMALL.d_model, 20), np.float32))
    response = answer()
    tamper(response)
    with pytest.raises(BackendError, match="decode model"):
        apply_response(span, response)
    assert span.decoder.emissions == [] and state.frame == 0 and span.calls == 0


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("encoder_outputs", np.zeros((2, SMALL.d_model, 4), np.float32), "do not fit"),
        ("encoder_outputs", np.zeros((SMALL.d_model, 4), np.float32), "do not fit"),
        ("states_1", np.zeros((1, L, H + 1), np.float32), "do not fit"),
        ("states_1", np.zeros((2, L, H), np.float32), "do not fit"),
        ("states_2", np.zeros((L, H), np.float32), "do not fit"),
        ("state", np.array([[1]], np.int32), "state must hold 2"),
        ("spec", np.array([[V, V - 1, 10]], np.int32), "spec at least 4"),
    ],
)
def test_a_request_that_does_not_fit_is_refused(name: str, value: np.ndarray, match: str) -> None:
    state = DecoderState.zeros(V - 1, L, H)
    request = span_request(
        Span(GreedyDecoder(spec_for("tdt"), state, 4), np.zeros((SMALL.d_model, 4), np.float32))
    )
    assert request is not None
    with pytest.raises(ValueError, match=match):
        span_from_request({**request, name: value})


def test_the_request_carries_the_whole_decoder_state() -> None:
    """A span may start in the middle of a frame (symbols already emitted on it) and with any state."""
    rng = np.random.default_rng(3)
    state = DecoderState(
        7, rng.standard_normal((L, 1, H)).astype(np.float32), np.ones((L, 1, H), np.float32), 12, 2
    )
    frames = rng.standard_normal((SMALL.d_model, 20)).astype(np.float32)
    request = span_request(Span(GreedyDecoder(spec_for("tdt", 4), state, 18), frames, 10))
    assert request is not None
    np.testing.assert_array_equal(request["encoder_outputs"][0], frames[:, 2:8])
    remote = span_from_request(request).decoder
    assert (remote.state.last, remote.state.frame, remote.state.symbols_on_frame, remote.stop) == (7, 0, 2, 6)
    np.testing.assert_array_equal(remote.state.h, state.h)
    np.testing.assert_array_equal(remote.state.c, state.c)
    assert remote.spec == spec_for("tdt", 4)


def test_a_whole_recording_through_the_wire_format_decodes_as_in_process(encoded: np.ndarray) -> None:
    """A recording's request carries its samples and the decoder's state; the other end runs the
    preprocessor and encoder (here: the same sessions the fixture ran) and answers the span's
    decode with the lengths; taken back, the decoder ends as one that decoded in process."""
    spec, run = spec_for("tdt"), joint_runner("tdt")
    samples = read_recording(LIBRIVOX[0])[: 16_000 * 3]
    in_process = Span(GreedyDecoder(spec, DecoderState.zeros(spec.blank, L, H), encoded.shape[1]), encoded)
    decode(in_process, run)
    caller = GreedyDecoder(spec, DecoderState.zeros(spec.blank, L, H), 0)
    request = recording_request(samples, caller)
    check_wire(
        request,
        {
            "waveforms": (np.float32, (1, samples.size)),
            "waveforms_lens": (np.int64, (1, 1)),
            "states_1": (np.float32, (1, L, H)),
            "states_2": (np.float32, (1, L, H)),
            "state": (np.int32, (1, 2)),
            "spec": (np.int32, (1, 4 + len(spec.durations))),
        },
    )
    features, lengths = session("preprocessor").run(
        None, {"waveforms": request["waveforms"], "waveforms_lens": request["waveforms_lens"].reshape(-1)}
    )
    frames, (length,) = session("encoder_tdt").run(None, {"audio_signal": features, "length": lengths})
    inputs = {k: v for k, v in request.items() if not k.startswith("waveforms")}
    remote = span_from_request({**inputs, "encoder_outputs": frames[:, :, :length]})
    decode(remote, run)
    response = span_response(remote, (int(lengths[0]), int(length)))
    assert set(response) == set(RECORDING_OUTPUTS)
    assert response["lengths"].dtype == np.int32 and response["lengths"].shape == (1, 2)
    assert read_lengths(response) == (int(lengths[0]), int(length)) == (int(lengths[0]), encoded.shape[1])
    assert apply_response(Span(caller, np.zeros((0, 0), np.float32)), response) == in_process.calls
    assert caller.emissions == in_process.decoder.emissions and len(caller.emissions) > 0


@pytest.mark.parametrize(
    "lengths",
    [None, np.array([[5]], np.int32), np.array([[-1, 3]], np.int32)],
    ids=["none", "one", "negative"],
)
def test_lengths_that_do_not_fit_are_a_backend_error(lengths: np.ndarray | None) -> None:
    response = answer() | ({} if lengths is None else {"lengths": lengths})
    with pytest.raises(BackendError, match="decode model"):
        read_lengths(response)
