"""Greedy RNN-T and TDT decoding, sans-IO.

The decoder never calls a model. It says which `decoder_joint` call it needs next
(`GreedyDecoder.next_call`), and is fed the logits and new prediction-network state that call
returned (`GreedyDecoder.receive`). Because the state only changes when a token is emitted, one
call scores every frame up to the next emission: blank steps and TDT jumps are walked locally,
so an utterance costs about one call per emitted token instead of one per frame.

Frame indices are absolute (frames since the start of the utterance or stream), so a stream can
decode its chunks one after another with the same state, and a TDT jump that crosses a chunk
boundary simply lands in the next chunk.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
import numpy.typing as npt

NEMO_MAX_SYMBOLS_PER_STEP = 10


@attrs.frozen
class DecodingSpec:
    """What the decoder needs to know about a model set.

    `frames_per_call` caps K, the frames scored per `decoder_joint` call; None scores every frame
    left in the span, which needs the fewest calls (at most tokens + 1 per span).
    """

    kind: Literal["rnnt", "tdt"]
    blank: int
    vocab_size: int
    durations: tuple[int, ...] = ()
    max_symbols_per_step: int = NEMO_MAX_SYMBOLS_PER_STEP
    frames_per_call: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "tdt" and not self.durations:
            raise ValueError("a TDT model needs its durations")
        if self.kind == "rnnt" and self.durations:
            raise ValueError("an RNN-T model has no durations")
        if self.max_symbols_per_step < 1:
            raise ValueError("max_symbols_per_step must be at least 1")
        if self.frames_per_call is not None and self.frames_per_call < 1:
            raise ValueError("frames_per_call must be at least 1")

    @property
    def joint_width(self) -> int:
        return self.vocab_size + len(self.durations)


@attrs.define
class DecoderState:
    """Where decoding of one utterance or stream stands.

    `h` and `c` are the prediction network's state *before* consuming `last`: every call feeds
    `targets = [[last]]` with them. They are updated in place, so pooled arrays stay pooled.
    """

    last: int
    h: npt.NDArray[np.float32]
    c: npt.NDArray[np.float32]
    frame: int = 0
    symbols_on_frame: int = 0

    @classmethod
    def zeros(cls, blank: int, layers: int, hidden: int) -> DecoderState:
        shape = (layers, 1, hidden)
        return cls(blank, np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def reset(self, blank: int) -> None:
        self.last = blank
        self.h.fill(0.0)
        self.c.fill(0.0)
        self.frame = 0
        self.symbols_on_frame = 0

    def copy_into(self, other: DecoderState) -> None:
        np.copyto(other.h, self.h)
        np.copyto(other.c, self.c)
        other.last = self.last
        other.frame = self.frame
        other.symbols_on_frame = self.symbols_on_frame


@attrs.frozen
class Emission:
    """An emitted token, the absolute encoder frame it was emitted at, and what the joint said there.

    `probability` and `blank_probability` are the softmax of the joint's token logits `l` (the
    first V, blank included; never the TDT duration logits) at the emission frame, taken at the
    emitted token k (their argmax) and at the blank b: `p = exp(l[k]) / sum_j exp(l[j])` over
    j = 0..V-1, so `1/V <= p <= 1`, and `p_blank = exp(l[b]) / sum_j exp(l[j])`.
    `duration` is the TDT duration the joint predicted with it (a token at frame t with duration d
    covers frames t .. t+d-1; 0 means the next token comes on the same frame); RNN-T tokens cover
    their one frame. The defaults describe a certain one-frame token, for hand-made emissions.
    """

    token: int
    frame: int
    probability: float = 1.0
    blank_probability: float = 0.0
    duration: int = 1


def softmax_at(token_logits: npt.NDArray[np.float32], token: int, blank: int) -> tuple[float, float]:
    """The softmax of `token_logits` at the argmax `token` and at `blank`, in float64, without overflow."""
    scaled = np.exp(token_logits.astype(np.float64) - float(token_logits[token]))
    total = float(scaled.sum())
    return 1.0 / total, float(scaled[blank]) / total


@attrs.frozen
class JointCall:
    """Score frames `[start, stop)` against the state's `target` token."""

    start: int
    stop: int
    target: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


@attrs.define
class GreedyDecoder:
    """Decodes frames `[state.frame, stop)` greedily, continuing from `state`."""

    spec: DecodingSpec
    state: DecoderState
    stop: int
    emissions: list[Emission] = attrs.field(factory=list)
    _pending: JointCall | None = attrs.field(default=None, init=False)

    def next_call(self) -> JointCall | None:
        """The call to make next, or None when the span is decoded."""
        if self._pending is not None:
            raise RuntimeError("receive() the results of the pending call first")
        start = self.state.frame
        if start >= self.stop:
            return None
        stop = self.stop
        if self.spec.frames_per_call is not None:
            stop = min(stop, start + self.spec.frames_per_call)
        self._pending = JointCall(start, stop, self.state.last)
        return self._pending

    def receive(
        self, logits: npt.NDArray[np.float32], h: npt.NDArray[np.float32], c: npt.NDArray[np.float32]
    ) -> None:
        """Walk the pending call's logits (`[K, W]`) until a token is emitted or the frames run out.

        `h`, `c` are the call's `output_states`; they become the state only if a token is emitted.
        """
        call = self._pending
        if call is None:
            raise RuntimeError("no call is pending")
        if logits.shape != (call.frames, self.spec.joint_width):
            raise ValueError(
                f"expected logits of shape {(call.frames, self.spec.joint_width)}, got {logits.shape}"
            )
        self._pending = None
        spec, state = self.spec, self.state
        t = state.frame
        while t < call.stop:
            row = logits[t - call.start]
            token_logits = row[: spec.vocab_size]
            token = int(np.argmax(token_logits))
            duration = spec.durations[int(np.argmax(row[spec.vocab_size :]))] if spec.durations else 1
            if token == spec.blank:
                t += max(duration, 1)
                state.symbols_on_frame = 0
                continue
            probability, blank_probability = softmax_at(token_logits, token, spec.blank)
            self.emissions.append(Emission(token, t, probability, blank_probability, duration))
            state.last = token
            np.copyto(state.h, h)
            np.copyto(state.c, c)
            state.symbols_on_frame += 1
            if spec.durations and duration > 0:
                t += duration
                state.symbols_on_frame = 0
            elif state.symbols_on_frame >= spec.max_symbols_per_step:
                t += 1
                state.symbols_on_frame = 0
            break
        state.frame = t
