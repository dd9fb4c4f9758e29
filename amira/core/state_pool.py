"""A pool of decoder states, so that streams reuse numpy arrays instead of allocating them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from amira.core.decoding import DecoderState


class StatePool:
    """Pre-allocated `DecoderState`s of one shape; a state is zeroed when it is handed out.

    The pool grows past `size` rather than failing: admission limits how many states are in use,
    and the pool only has to make the common case allocation-free.
    """

    def __init__(self, blank: int, layers: int, hidden: int, size: int) -> None:
        self._blank, self._layers, self._hidden = blank, layers, hidden
        self._free = [DecoderState.zeros(blank, layers, hidden) for _ in range(size)]
        self.size = size

    @property
    def available(self) -> int:
        return len(self._free)

    def acquire(self) -> DecoderState:
        state = (
            self._free.pop() if self._free else DecoderState.zeros(self._blank, self._layers, self._hidden)
        )
        state.reset(self._blank)
        return state

    def release(self, state: DecoderState) -> None:
        if len(self._free) < self.size:
            self._free.append(state)

    @contextmanager
    def state(self) -> Iterator[DecoderState]:
        state = self.acquire()
        try:
            yield state
        finally:
            self.release(state)
