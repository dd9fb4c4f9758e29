"""`amira model fetch` against a fake Hugging Face Hub on loopback: nothing reaches the internet.

The fake hub (`tests/fake_hub.py`) serves a tiny model laid out like onnx-asr's Parakeet export.
The command runs as a user runs it, in its own process with `HF_ENDPOINT` on the fake hub and
`HF_HOME` in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from amira.testing.recordings import DATA
from amira.tooling.model_fetch import FetchError, resolve_name
from tests.fake_hub import COMMIT, DATA_FILE, HUB_CHUNK, REPO_ID, FakeHub, serving_fake_hub
from tests.processes import running_amira

RECORDING = DATA / "cards" / "005.wav"
REFERENCE = "eight of spades four of clubs seven of hearts"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with serving_fake_hub(tmp_path) as fake:
        yield fake


def fetch(tmp_path: Path, hub: FakeHub, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`amira model fetch` in its own process: the hub is the fake, the cache is in `tmp_path`."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    environment |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "amira.cli", "model", "fetch", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=environment,
    )


def test_fetch_verifies_builds_and_prints_a_command_that_serves_the_model(
    tmp_path: Path, hub: FakeHub
) -> None:
    hub.cut_first_download.add(DATA_FILE)  # the connection drops half way: the download resumes
    output = tmp_path / "models" / "parakeet"
    done = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert hub.requested("GET", DATA_FILE) == [None, f"bytes={HUB_CHUNK}-"]
    assert not hub.requested("GET", "nemo128.onnx")  # only the files of the layout
    assert f"{REPO_ID} at {COMMIT[:12]} verified (rnnt)" in done.stderr
    assert "Fetching" not in done.stderr and "%|" not in done.stderr  # no progress bars in a log

    # A production repository: onnxruntime configs, the weights hard-linked from the hub's cache.
    config = (output / "encoder" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'platform: "onnxruntime_onnx"' in config and "KIND_GPU" in config
    weights = output / "encoder" / "1" / DATA_FILE
    cached = next((tmp_path / "hf-home" / "hub").rglob(f"snapshots/{COMMIT}/{DATA_FILE}"))
    assert weights.stat().st_ino == cached.resolve().stat().st_ino
    sets = (output / "model_sets.toml").read_text(encoding="utf-8")
    assert '[model_sets."parakeet-tdt-0.6b-v2"]' in sets and COMMIT in sets

    # The one command printed on stdout serves it.
    command = done.stdout.strip()
    assert command.splitlines() == [command] and command.startswith("amira serve --model-repository")
    with running_amira(command, log=tmp_path / "serve.log") as base:
        models = httpx.get(f"{base}/v2/models", timeout=10).json()["models"]
        assert [m["name"] for m in models] == ["parakeet-tdt-0.6b-v2"]
        answer = httpx.post(
            f"{base}/v2/decode/batch/parakeet-tdt-0.6b-v2",
            content=RECORDING.read_bytes(),
            headers={"Content-Type": "audio/wav"},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["transcription"] == REFERENCE

    # Offline, the same command is served from the cache without a single request.
    before = len(hub.requests)
    again = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(output), HF_HUB_OFFLINE="1")
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == before and again.stdout == done.stdout


def test_a_failed_run_keeps_finished_files_for_the_next(tmp_path: Path, hub: FakeHub) -> None:
    """A dropped connection resumes within the run (above); a run that fails all the same keeps
    every finished file, and the next run downloads only what is missing."""
    hub.cut_first_download.add(DATA_FILE)
    hub.refuse_ranges = True
    failed = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(tmp_path / "repo"))
    assert failed.returncode == 1 and "Run the same command again" in failed.stderr, failed.stderr
    assert not (tmp_path / "repo").exists()
    hub.refuse_ranges = False
    done = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    first_run, second_run = hub.requested("GET", DATA_FILE)[:2], hub.requested("GET", DATA_FILE)[2:]
    assert first_run == [None, f"bytes={HUB_CHUNK}-"]
    # recent huggingface_hub versions restart the unfinished file; older ones resumed its partial copy
    assert second_run in ([None], [f"bytes={HUB_CHUNK}-"])
    for finished in ("encoder-model.onnx", "decoder_joint-model.onnx", "vocab.txt", "config.json"):
        assert len(hub.requested("GET", finished)) == 1, finished


def test_a_corrupt_download_is_refused_and_fetched_afresh(tmp_path: Path, hub: FakeHub) -> None:
    hub.corrupt.add("decoder_joint-model.onnx")
    refused = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(tmp_path / "repo"))
    assert refused.returncode == 1 and "decoder_joint-model.onnx is corrupt" in refused.stderr
    hub.corrupt.clear()
    done = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    assert len(hub.requested("GET", "decoder_joint-model.onnx")) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no decoder", "not a NeMo RNN-T/TDT ONNX export in onnx-asr's layout: it has no decoder_joint"),
        ("big vocabulary", "does not fit AMIRA's model contract"),
    ],
)
def test_a_model_that_does_not_fit_the_contract_is_refused(
    tmp_path: Path, hub: FakeHub, change: str, message: str
) -> None:
    if change == "no decoder":
        del hub.files["decoder_joint-model.onnx"]
    else:  # 80 entries for a joint of 57 outputs
        hub.files["vocab.txt"] = "".join(f"\u2581w{i} {i}\n" for i in range(79)).encode() + b"<blk> 79\n"
    refused = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--output", str(tmp_path / "repo"))
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert not (tmp_path / "repo").exists()


def test_names_and_revisions(tmp_path: Path, hub: FakeHub) -> None:
    assert resolve_name("parakeet-tdt-0.6b-v2") == (REPO_ID, "parakeet-tdt-0.6b-v2")
    assert resolve_name("nemo-parakeet-tdt-0.6b-v2") == (REPO_ID, "parakeet-tdt-0.6b-v2")
    assert resolve_name("someone/my-model-onnx") == ("someone/my-model-onnx", "my-model")
    with pytest.raises(FetchError, match=r"parakeet-tdt-0\.6b-v2"):
        resolve_name("whisper")
    unknown = fetch(tmp_path, hub, "whisper")
    assert unknown.returncode == 1 and "unknown model 'whisper'" in unknown.stderr
    missing = fetch(tmp_path, hub, "someone/elsewhere")
    assert missing.returncode == 1 and "no repository someone/elsewhere" in missing.stderr
    revision = fetch(tmp_path, hub, "parakeet-tdt-0.6b-v2", "--revision", "v9")
    assert revision.returncode == 1 and "has no revision 'v9'" in revision.stderr
    assert not hub.requested("GET", "encoder-model.onnx")
