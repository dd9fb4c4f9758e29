"""A long stream (55 s) against the batch transcript of the same audio, on the default model set.

The bound, documented in the README: with the default streaming windows, the token edit distance of
the streamed final to the batch transcript is at most 30 % of the batch tokens (measured: 23 %; the
demo model loses words on long audio with pauses, in batch and stream alike, in different places).
A stream that dropped or repeated windows would be far past it. `bench/stream_vs_batch.py` prints
the same figures (and those of the random-weight sets, whose encoder is too sensitive to its window
for a bound to mean anything).
"""

from __future__ import annotations

from amira import open_recognizer
from tests.conftest import embedded_settings
from tests.long_audio import DOMAIN, joined, levenshtein, streamed_final

MAX_TOKEN_EDIT_RATE = 0.30


async def test_a_long_stream_stays_close_to_the_batch_transcript() -> None:
    audio = joined(DOMAIN, repeats=3)
    assert audio.size / 16_000 > 40
    async with open_recognizer(embedded_settings(max_batch_audio_secs=120.0)) as recognizer:
        batch = await recognizer.transcribe(audio)
        final = await streamed_final(recognizer, audio, "default")
    assert batch.tokens
    distance = levenshtein(final.tokens, batch.tokens)
    print(f"\n{audio.size / 16_000:.1f} s: {distance} token edits against {len(batch.tokens)} batch tokens")
    assert distance <= MAX_TOKEN_EDIT_RATE * len(batch.tokens)
    assert final.audio_seconds == audio.size / 16_000
