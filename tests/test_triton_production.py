"""The production repository flavour loaded by a real Triton, and what a killed Triton leaves behind.

`amira model-repo build --flavour production` writes `platform: "onnxruntime_onnx"` models on
`KIND_GPU` instances. The wheel's Triton has neither a GPU here nor an onnxruntime backend, so the
instance groups are switched to `KIND_CPU` and `standin_backends` supplies a Python-based backend
named `onnxruntime` that runs the same ONNX files; everything else (names, tensors, dims, layout,
vocabularies, model-sets file) is served as the command wrote it, and must transcribe as the
embedded backend does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from amira import open_recognizer
from amira.models import shipped_repository
from amira.protocols.native_batch import word_document
from amira.protocols.native_stream import END_OF_STREAM
from amira.testing.recordings import CARDS, LIBRIVOX, pcm16, read_recording
from amira.testing.servers import embedded_settings, start_server
from amira.testing.ws_protocol import expect_complete, read_until_closed
from amira.tooling.triton_launcher import TritonProcess, standin_backends

pytestmark = pytest.mark.triton

RECORDINGS = {"default": read_recording(CARDS[4]), "tdt": read_recording(LIBRIVOX[1])}


def build_production(dest: Path) -> Path:
    """The documented command, then the one change the CPU needs: `KIND_GPU` -> `KIND_CPU` for the
    ONNX models (the decode models beside each `decoder_joint` are Python-backend CPU models already)."""
    command = [sys.executable, "-m", "amira.cli", "model-repo", "build", "--flavour", "production"]
    command += ["--from-repository", str(shipped_repository()), "--output", str(dest)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    onnx_models = 0
    for config in dest.glob("*/config.pbtxt"):
        text = config.read_text(encoding="utf-8")
        if 'platform: "onnxruntime_onnx"' in text:
            assert "kind: KIND_GPU" in text, config
            config.write_text(text.replace("kind: KIND_GPU", "kind: KIND_CPU"), encoding="utf-8")
            onnx_models += 1
    assert onnx_models == len(list(dest.glob("*/1/model.onnx")))
    return dest


async def test_the_production_flavour_serves_as_the_embedded_backend_and_leaves_nothing_behind(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    repository = build_production(tmp_path / "repository")
    triton = TritonProcess(
        repository,
        log_path=tmp_path / "triton.log",
        startup_timeout=180,
        backend_directory=standin_backends(tmp_path),
    )
    await triton.astart()
    try:
        stubs, regions = triton.leftovers()
        assert len(stubs) > 1 and regions  # Triton and its stubs, and their shared memory, exist
        settings = embedded_settings(
            triton_endpoint=triton.url,
            model_repository=repository,
            model_sets_file=repository / "model_sets.toml",
        )
        base = await start_server(nursery, settings)
        async with open_recognizer(embedded_settings()) as embedded, httpx.AsyncClient(timeout=60) as http:
            for model, samples in RECORDINGS.items():
                expected = await embedded.transcribe(samples, model)
                response = await http.post(
                    f"{base}/v2/decode/batch/{model}",
                    content=pcm16(samples),
                    headers={"Content-Type": "audio/pcm"},
                )
                assert response.status_code == 200, response.text
                metadata = response.json()["metadata"]
                assert metadata["tokens"] == list(expected.tokens), model
                # times and confidences too: they come back from the decode model inside Triton
                assert metadata["words"] == [word_document(w) for w in expected.words], model
        async with open_websocket_url(base.replace("http://", "ws://") + "/v2/decode/stream/default") as ws:
            await ws.send_message(pcm16(RECORDINGS["default"]))
            await ws.send_message(END_OF_STREAM)
            final = expect_complete(await read_until_closed(ws))
        assert final["transcription"] == "eight of spades four of clubs seven of hearts"
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await triton.akill()
    assert triton.leftovers() == ([], [])  # no stub outlives a killed Triton, no region in /dev/shm
