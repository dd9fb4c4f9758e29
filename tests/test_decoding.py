"""The greedy decoder on hand-made logits, against a one-frame-per-call loop written from the spec:
tokens, frames, TDT durations and the emitted tokens' probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from amira.core.decoding import DecoderState, DecodingSpec, Emission, GreedyDecoder

V = 6  # tokens 0..4, blank 5
BLANK = V - 1
DURATIONS = (0, 1, 2, 3, 4)


class ScriptedJoint:
    """A fake decoder_joint: the state `h` counts emitted tokens, and `script[(frame, emitted)]`
    says which token (and TDT duration) wins there; anything unscripted is a blank of duration 1.
    The losing logits vary with frame and state, so that every emission has its own probability;
    the duration logits are large, so that a softmax over them too would be far off."""

    def __init__(self, script: dict[tuple[int, int], tuple[int, int]], spec: DecodingSpec) -> None:
        self.script, self.spec, self.calls = script, spec, 0

    def row(self, frame: int, emitted: int) -> np.ndarray:
        token, duration = self.script.get((frame, emitted), (BLANK, 1))
        row = np.random.default_rng([frame, emitted]).uniform(-3.0, 1.0, self.spec.joint_width)
        row = row.astype(np.float32)
        row[token] = 1.5
        if self.spec.durations:
            row[V + self.spec.durations.index(duration)] = 9.0
        return row

    def __call__(self, start: int, stop: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        emitted = int(h[0, 0, 0])
        logits = np.stack([self.row(t, emitted) for t in range(start, stop)])
        return logits, h + 1, h + 1


def spec_for(kind: str, **kwargs: object) -> DecodingSpec:
    return DecodingSpec(kind, BLANK, V, DURATIONS if kind == "tdt" else (), **kwargs)


def run(
    spec: DecodingSpec, joint: ScriptedJoint, frames: int, state: DecoderState | None = None
) -> list[Emission]:
    state = state or DecoderState.zeros(BLANK, 1, 1)
    decoder = GreedyDecoder(spec, state, frames)
    while (call := decoder.next_call()) is not None:
        assert call.target == state.last
        decoder.receive(*joint(call.start, call.stop, state.h))
    return decoder.emissions


def at(emissions: list[Emission]) -> list[tuple[int, int]]:
    return [(e.token, e.frame) for e in emissions]


def reference(spec: DecodingSpec, joint: ScriptedJoint, frames: int) -> list[Emission]:
    """The spec's loop, literally: one frame per call; probabilities by the textbook softmax."""
    emitted_total, t, symbols, out = 0, 0, 0, []
    while t < frames:
        row = joint.row(t, emitted_total)
        token = int(np.argmax(row[:V]))
        d = spec.durations[int(np.argmax(row[V:]))] if spec.durations else 1
        if token == BLANK:
            t += max(d, 1) if spec.durations else 1
            symbols = 0
            continue
        softmax = np.exp(row[:V].astype(np.float64)) / np.exp(row[:V].astype(np.float64)).sum()
        out.append(Emission(token, t, float(softmax[token]), float(softmax[BLANK]), d))
        emitted_total += 1
        symbols += 1
        if spec.durations and d > 0:
            t += d
            symbols = 0
        elif symbols == spec.max_symbols_per_step:
            t += 1
            symbols = 0
    return out


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_all_blank_costs_one_call(kind: str) -> None:
    joint = ScriptedJoint({}, spec_for(kind))
    assert run(spec_for(kind), joint, 50) == []
    assert joint.calls == 1


def test_rnnt_several_symbols_on_one_frame() -> None:
    spec = spec_for("rnnt")
    joint = ScriptedJoint({(2, 0): (1, 1), (2, 1): (2, 1), (2, 2): (3, 1), (7, 3): (4, 1)}, spec)
    assert at(run(spec, joint, 10)) == [(1, 2), (2, 2), (3, 2), (4, 7)]
    assert joint.calls == 4 + 1  # one per token, plus the call that finds only blanks to the end


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_max_symbols_per_step_moves_on(kind: str) -> None:
    spec = spec_for(kind, max_symbols_per_step=3)
    # frame 1 would emit token 1 forever (duration 0 for TDT); the limit forces t + 1
    script = {(1, n): (1, 0) for n in range(10)} | {(2, 3): (2, 0)}
    joint = ScriptedJoint(script, spec)
    assert at(run(spec, joint, 4)) == [(1, 1)] * 3 + [(2, 2)]


def test_tdt_durations_zero_and_jumps() -> None:
    spec = spec_for("tdt")
    # frame 0: token 1 with duration 0 (stay), then token 2 with duration 3 (to frame 3);
    # frame 3: blank with duration 4 (to frame 7) skips the token scripted at frame 5.
    script = {(0, 0): (1, 0), (0, 1): (2, 3), (3, 2): (BLANK, 4), (5, 2): (3, 1), (7, 2): (4, 2)}
    joint = ScriptedJoint(script, spec)
    emissions = run(spec, joint, 10)
    assert at(emissions) == [(1, 0), (2, 0), (4, 7)]
    assert [e.duration for e in emissions] == [0, 3, 2]


def test_tdt_blank_duration_zero_still_advances() -> None:
    spec = spec_for("tdt")
    joint = ScriptedJoint({(0, 0): (BLANK, 0), (1, 0): (1, 1)}, spec)
    assert at(run(spec, joint, 3)) == [(1, 1)]


def test_tdt_end_of_audio_in_the_middle_of_a_jump() -> None:
    spec = spec_for("tdt")
    state = DecoderState.zeros(BLANK, 1, 1)
    joint = ScriptedJoint({(3, 0): (1, 4)}, spec)
    assert at(run(spec, joint, 5, state)) == [(1, 3)]
    assert state.frame == 7  # past the end: nothing more to decode
    decoder = GreedyDecoder(spec, state, 5)
    assert decoder.next_call() is None


def test_jump_across_a_span_boundary_continues_in_the_next_span() -> None:
    spec = spec_for("tdt")
    joint = ScriptedJoint({(3, 0): (1, 4), (7, 1): (2, 1), (5, 1): (3, 1)}, spec)
    state = DecoderState.zeros(BLANK, 1, 1)
    first = run(spec, joint, 5, state)
    second = run(spec, joint, 10, state)
    whole = run(spec, ScriptedJoint(joint.script, spec), 10)
    assert first + second == whole and at(whole) == [(1, 3), (2, 7)]


def test_targets_are_the_last_token_and_state_only_changes_on_emission() -> None:
    spec = spec_for("rnnt")
    state = DecoderState.zeros(BLANK, 1, 1)
    decoder = GreedyDecoder(spec, state, 5)
    call = decoder.next_call()
    assert call.target == BLANK
    logits = np.zeros((5, V), np.float32)
    logits[:, BLANK] = 1.0
    decoder.receive(logits, np.full((1, 1, 1), 9.0), np.full((1, 1, 1), 9.0))
    assert state.h[0, 0, 0] == 0.0  # all blank: the new state is not taken
    assert decoder.next_call() is None


def test_receive_rejects_logits_of_the_wrong_shape() -> None:
    decoder = GreedyDecoder(spec_for("tdt"), DecoderState.zeros(BLANK, 1, 1), 4)
    decoder.next_call()
    with pytest.raises(ValueError, match="shape"):
        decoder.receive(np.zeros((4, V), np.float32), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
@pytest.mark.parametrize("frames_per_call", [1, 2, 3, 7, None])
@pytest.mark.parametrize("seed", range(25))
def test_any_frames_per_call_equals_the_one_frame_loop(
    kind: str, frames_per_call: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(1, 40))
    script = {}
    for t in range(frames):
        for n in range(60):
            if rng.random() < 0.3:
                script[(t, n)] = (int(rng.integers(0, V)), int(rng.choice(DURATIONS)))
    spec = spec_for(kind, frames_per_call=frames_per_call, max_symbols_per_step=int(rng.integers(1, 4)))
    joint = ScriptedJoint(script, spec)
    emissions = run(spec, joint, frames)
    expected = reference(spec, ScriptedJoint(script, spec), frames)
    assert [(e.token, e.frame, e.duration) for e in emissions] == [
        (e.token, e.frame, e.duration) for e in expected
    ]
    for name in ("probability", "blank_probability"):
        values = [getattr(e, name) for e in emissions]
        assert values == pytest.approx([getattr(e, name) for e in expected], rel=1e-12)
    if frames_per_call is None:
        assert joint.calls <= len(emissions) + 1


def test_probabilities_are_the_softmax_of_the_token_logits_alone() -> None:
    spec = spec_for("tdt")
    state = DecoderState.zeros(BLANK, 1, 1)
    decoder = GreedyDecoder(spec, state, 1)
    decoder.next_call()
    logits = np.full((1, spec.joint_width), -1e4, np.float32)
    logits[0, :V] = [np.log(0.1), np.log(0.6), np.log(0.1), np.log(0.1), np.log(0.05), np.log(0.05)]
    logits[0, V:] = 50.0  # duration logits: part of no softmax here
    decoder.receive(logits, np.ones((1, 1, 1)), np.ones((1, 1, 1)))
    (emission,) = decoder.emissions
    assert (emission.token, emission.frame, emission.duration) == (1, 0, 0)
    assert emission.probability == pytest.approx(0.6, rel=1e-6)
    assert emission.blank_probability == pytest.approx(0.05, rel=1e-6)


def test_probability_survives_huge_logits() -> None:
    spec = spec_for("rnnt")
    decoder = GreedyDecoder(spec, DecoderState.zeros(BLANK, 1, 1), 1)
    decoder.next_call()
    logits = np.array([[3e38, 3e38 - 1e33, -3e38, 0.0, 0.0, -1.0]], np.float32)
    decoder.receive(logits, np.ones((1, 1, 1)), np.ones((1, 1, 1)))
    (emission,) = decoder.emissions
    assert emission.token == 0 and 0.1 < emission.probability <= 1.0
