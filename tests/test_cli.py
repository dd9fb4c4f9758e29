"""The `amira` command as a user runs it: a real process on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys

from amira import open_recognizer
from tests.conftest import embedded_settings
from tests.recordings import CARDS, DATA, read_recording


def amira(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amira.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


async def test_transcribe_prints_the_transcript_of_each_file() -> None:
    async with open_recognizer(embedded_settings()) as recognizer:
        expected = [
            (await recognizer.transcribe(read_recording(p))).text for p in (CARDS[0], DATA / "goforward.raw")
        ]
    single = amira("transcribe", str(CARDS[0]))
    assert single.returncode == 0, single.stderr
    assert single.stdout.strip() == expected[0]
    both = amira("transcribe", "--json", str(CARDS[0]), str(DATA / "goforward.raw"))
    assert both.returncode == 0, both.stderr
    documents = [json.loads(line) for line in both.stdout.splitlines()]
    assert [d["transcription"] for d in documents] == expected
    assert documents[0]["metadata"]["tokens"] and documents[1]["file"].endswith("goforward.raw")


def test_unreadable_files_and_bad_settings_are_reported() -> None:
    bad = amira("transcribe", str(DATA / "SOURCES.md"))
    assert bad.returncode == 1 and "SOURCES.md" in bad.stderr
    missing = amira("transcribe", "/nonexistent.wav")
    assert missing.returncode == 1 and "nonexistent" in missing.stderr
    result = subprocess.run(
        [sys.executable, "-m", "amira.cli", "transcribe", str(CARDS[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"MAX_CONCURRENT_STREAMS": "zero", "PATH": ""},
    )
    assert result.returncode == 2 and "MAX_CONCURRENT_STREAMS" in result.stderr
