"""The `amira` command as a user runs it: a real process on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys

from amira.testing.recordings import CARDS, DATA, REAL_DOMAIN


def amira(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amira.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_transcribe_prints_the_transcript_of_each_file() -> None:
    """The demo model (the default set) hears the real recordings of its domain exactly."""
    single = amira("transcribe", str(REAL_DOMAIN[0][0]))
    assert single.returncode == 0, single.stderr
    assert single.stdout.strip() == REAL_DOMAIN[0][1]
    every = amira("transcribe", "--json", *(str(path) for path, _ in REAL_DOMAIN))
    assert every.returncode == 0, every.stderr
    documents = [json.loads(line) for line in every.stdout.splitlines()]
    assert [d["transcription"] for d in documents] == [text for _, text in REAL_DOMAIN]
    assert documents[0]["metadata"]["tokens"] and documents[-1]["file"].endswith("goforward.raw")


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
