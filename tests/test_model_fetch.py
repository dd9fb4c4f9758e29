"""`amira model fetch` against a fake Hugging Face Hub on loopback: nothing reaches the internet.

The fake hub implements the few endpoints `huggingface_hub` calls (the model-info API for a
revision, and `HEAD`/`GET` of `resolve/<revision>/<file>` with the headers it reads: `ETag`,
`X-Repo-Commit`, `Content-Length`, ranges) over a tiny model laid out like onnx-asr's Parakeet
export: the demo model's encoder (with its weights in an external data file, like Parakeet's),
decoder_joint, vocabulary and config. The command runs as a user runs it, in its own process with
`HF_ENDPOINT` on the fake hub and `HF_HOME` in a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import httpx
import onnx
import pytest

from amira.models import shipped_repository
from amira.tooling.model_fetch import FetchError, resolve_name
from tests.processes import running_amira
from tests.recordings import DATA

REPO_ID = "istupakov/parakeet-tdt-0.6b-v2-onnx"  # what `parakeet-tdt-0.6b-v2` resolves to
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA_FILE = "encoder-model.onnx.data"
HUB_CHUNK = 10 * 1024 * 1024  # huggingface_hub writes downloads to disk in pieces of this size
RECORDING = DATA / "cards" / "005.wav"
REFERENCE = "eight of spades four of clubs seven of hearts"


def make_export(dest: Path) -> Path:
    """The demo model in onnx-asr's export layout, its encoder weights in an external data file."""
    source = shipped_repository()
    dest.mkdir(parents=True)
    encoder = onnx.load(str(source / "encoder" / "1" / "model.onnx"))
    onnx.save_model(
        encoder,
        str(dest / "encoder-model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    # Padded past two of the hub client's write pieces (Parakeet's is 2.4 GB), so that a download
    # cut half way has something on disk to resume from; ONNX reads its tensors by offset.
    with (dest / DATA_FILE).open("ab") as data:
        data.write(bytes(2 * HUB_CHUNK))
    shutil.copyfile(source / "decoder_joint" / "1" / "model.onnx", dest / "decoder_joint-model.onnx")
    shutil.copyfile(source / "vocab.txt", dest / "vocab.txt")
    config = {"model_type": "nemo-conformer-rnnt", "features_size": 128, "subsampling_factor": 8}
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (dest / "nemo128.onnx").write_bytes(b"not needed: AMIRA takes the preprocessor from onnx-asr")
    return dest


def etag_of(name: str, content: bytes) -> str:
    """The hub's ETag: SHA-256 for LFS files (the models), the git blob SHA-1 for small ones."""
    if name.endswith((".onnx", ".data")):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@attrs.define
class FakeHub:
    """A Hugging Face Hub for one repository and one commit, with faults to inject."""

    files: dict[str, bytes]
    url: str = ""
    requests: list[tuple[str, str, str | None]] = attrs.Factory(list)  # method, path, Range
    cut_first_download: set[str] = attrs.Factory(set)  # files whose first GET stops half way
    refuse_ranges: bool = False  # a resumed download fails (500), so the run fails
    corrupt: set[str] = attrs.Factory(set)  # files served with other bytes than their ETag says

    def content(self, name: str) -> bytes:
        data = self.files[name]
        return data[::-1] if name in self.corrupt else data

    def requested(self, method: str, name: str) -> list[str | None]:
        return [r for m, path, r in self.requests if m == method and path.endswith(f"/{name}")]


def handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    resolve = re.compile(rf"/{re.escape(REPO_ID)}/resolve/(?P<revision>[^/]+)/(?P<name>.+)")
    api = re.compile(rf"/api/models/{re.escape(REPO_ID)}(/revision/(?P<revision>[^/?]+))?(\?.*)?")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def send_json(self, status: int, document: object) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def not_found(self, kind: str) -> None:
            body = json.dumps({"error": f"{kind} not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.answer(head=False)

        def do_HEAD(self) -> None:
            self.answer(head=True)

        def answer(self, head: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            if match := api.fullmatch(self.path):
                if match["revision"] not in (None, "main", COMMIT):
                    return self.not_found("RevisionNotFound")
                siblings = [{"rfilename": name} for name in sorted(hub.files)]
                return self.send_json(200, {"id": REPO_ID, "sha": COMMIT, "siblings": siblings})
            match = resolve.fullmatch(self.path)
            if match is None:
                return self.not_found("RepoNotFound")
            if match["revision"] not in ("main", COMMIT):
                return self.not_found("RevisionNotFound")
            if match["name"] not in hub.files:
                return self.not_found("EntryNotFound")
            name = match["name"]
            data, etag = hub.content(name), etag_of(name, hub.files[name])
            start = 0
            if ranged := self.headers.get("Range"):
                if hub.refuse_ranges:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1])
            self.send_response(206 if ranged and not head else 200)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if ranged and not head:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - (0 if head else start)))
            self.end_headers()
            if head:
                return None
            body = data[start:]
            if name in hub.cut_first_download and not ranged:
                hub.cut_first_download.discard(name)
                self.wfile.write(body[: len(body) // 2])  # then the connection drops
                self.close_connection = True
                return None
            self.wfile.write(body)
            return None

    return Handler


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    export = make_export(tmp_path / "export")
    fake = FakeHub({path.name: path.read_bytes() for path in export.iterdir()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


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
    assert hub.requested("GET", DATA_FILE) == [None, f"bytes={HUB_CHUNK}-", None]
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
