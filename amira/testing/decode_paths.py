"""Transcribing every test recording on one model set, and comparing the results of two decode paths
(shared by the embedded and the Triton decode-path tests)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import trio

from amira.core.transcript import Transcript
from amira.recognizer import Recognizer, open_recognizer
from amira.settings import DecodeMode
from amira.testing.recordings import RECORDINGS, read_recording
from amira.testing.servers import embedded_settings

INPUTS: dict[str, npt.NDArray[np.float32]] = {path.name: read_recording(path) for path in RECORDINGS}


async def per_call_transcripts(model: str, **overrides: object) -> dict[str, Transcript]:
    """The reference: the embedded backend's per-call path, one recording after the other."""
    async with open_recognizer(embedded_settings(decode_mode=DecodeMode.PER_CALL, **overrides)) as rec:
        return {name: await rec.transcribe(samples, model) for name, samples in INPUTS.items()}


async def transcribe_all_at_once(recognizer: Recognizer, model: str) -> dict[str, Transcript]:
    """Every recording at once, so that their decoder calls can share backend calls."""
    results: dict[str, Transcript] = {}

    async def one(name: str, samples: npt.NDArray[np.float32]) -> None:
        results[name] = await recognizer.transcribe(samples, model)

    async with trio.open_nursery() as nursery:
        for name, samples in INPUTS.items():
            nursery.start_soon(one, name, samples)
    return results


def assert_same(got: dict[str, Transcript], expected: dict[str, Transcript], at_least: int = 50) -> None:
    """Tokens and their frames equal, recording by recording, on `at_least` tokens in all."""
    assert got.keys() == expected.keys()
    for name, transcript in expected.items():
        assert got[name].tokens == transcript.tokens, name
        assert got[name].token_frames == transcript.token_frames, name
    assert sum(len(t.tokens) for t in expected.values()) > at_least  # not vacuous
