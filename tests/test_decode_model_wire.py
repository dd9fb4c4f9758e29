"""The Triton decode model's wire format (`amira.core.decode_model`), sans-IO: a span sent as a
request, decoded on the other side and taken back, ends exactly as the span decoded in process:
the same emissions (tokens, frames, probabilities, durations) and the same decoder state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from amira.core.decode_model import apply_response, span_from_request, span_request, span_response
from amira.core.decoding import DecoderState, DecodingSpec, GreedyDecoder
from amira.core.joint import Span, joint_step
from amira.models import model_file, shipped_repository
from amira.testing.recordings import LIBRIVOX, read_recording
from amira.tooling.test_models import SMALL

pytestmark = pytest.mark.timeout(60)

REPOSITORY = shipped_repository()


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


def joint_runner(kind: str) -> Any:
    joint = session(f"decoder_joint_{kind}")
    names = [o.name for o in joint.get_outputs()]

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, joint.run(None, dict(inputs)), strict=True))

    return run


def decode(span: Span, run: Any) -> None:
    while joint_step([span], run):
        pass


@pytest.mark.parametrize("kind", ["tdt", "rnnt"])
@pytest.mark.parametrize("frames_per_call", [None, 3])
def test_a_span_through_the_wire_format_decodes_as_in_process(
    encoded: np.ndarray, kind: str, frames_per_call: int | None
) -> None:
    durations = SMALL.durations if kind == "tdt" else ()
    spec = DecodingSpec(kind, SMALL.vocab_size - 1, SMALL.vocab_size, durations, 10, frames_per_call)
    run = joint_runner(kind)
    layers, hidden = SMALL.pred_layers, SMALL.pred_hidden
    direct = DecoderState.zeros(spec.blank, layers, hidden)
    wired = DecoderState.zeros(spec.blank, layers, hidden)
    total = encoded.shape[1]
    for stop in (total // 3, total):  # two spans, as two stream chunks: the state carries over
        in_process = Span(GreedyDecoder(spec, direct, stop), encoded)
        decode(in_process, run)
        caller = Span(GreedyDecoder(spec, wired, stop), encoded)
        request = span_request(caller)
        assert request is not None
        remote = span_from_request(request)
        decode(remote, run)
        calls = apply_response(caller, span_response(remote))
        assert calls == remote.calls
        assert caller.decoder.emissions == in_process.decoder.emissions
        assert (wired.last, wired.frame, wired.symbols_on_frame) == (
            direct.last,
            direct.frame,
            direct.symbols_on_frame,
        )
        np.testing.assert_array_equal(wired.h, direct.h)
        np.testing.assert_array_equal(wired.c, direct.c)
    assert len(caller.decoder.emissions) > 0
