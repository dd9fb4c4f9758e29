"""A fake Hugging Face Hub on loopback, for `amira model fetch` and the compose file's model fetch.

It implements the few endpoints `huggingface_hub` calls (the model-info API for a revision, and
`HEAD`/`GET` of `resolve/<revision>/<file>` with the headers it reads: `ETag`, `X-Repo-Commit`,
`Content-Length`, ranges) over a tiny model laid out like onnx-asr's Parakeet export: the demo
model's encoder (with its weights in an external data file, like Parakeet's), decoder_joint,
vocabulary and config. Faults can be injected: a connection cut half way, refused resumptions,
corrupt files.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import onnx

from amira.models import shipped_repository

REPO_ID = "istupakov/parakeet-tdt-0.6b-v2-onnx"  # what `parakeet-tdt-0.6b-v2` resolves to
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA_FILE = "encoder-model.onnx.data"
HUB_CHUNK = 10 * 1024 * 1024  # huggingface_hub writes downloads to disk in pieces of this size


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


@contextmanager
def serving_fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A fake hub serving `make_export`'s model, on a free loopback port, for the `with` block."""
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
