"""`amira model-repo build` and `amira triton`, run as real processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from amira import open_recognizer
from amira.models import model_file, shipped_repository
from amira.testing.recordings import CARDS, read_recording
from amira.testing.servers import embedded_settings
from amira.tooling.triton_launcher import free_port
from amira.tooling.triton_repository import source_models


def amira(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amira.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_build_from_the_shipped_repository(tmp_path: Path) -> None:
    shipped = shipped_repository()
    models = source_models(shipped)
    assert {"preprocessor", "encoder", "decoder_joint", "encoder_rnnt", "decoder_joint_rnnt"} <= set(models)

    cpu = amira(
        "model-repo", "build", "--from-repository", str(shipped), "--output", str(tmp_path / "cpu"),
        "--flavour", "cpu", "--instances", "1",
    )  # fmt: skip
    assert cpu.returncode == 0, cpu.stderr
    for model in models:
        text = (tmp_path / "cpu" / model / "config.pbtxt").read_text()
        assert f'name: "{model}"' in text and 'backend: "python"' in text and "KIND_CPU" in text
        # a cache-aware encoder is batched by the sequence batcher that keeps its caches
        batched = "sequence_batching" in text
        assert "count: 1" in text and f"max_batch_size: {8 if batched else 0}" in text
        assert (tmp_path / "cpu" / model / "1" / "model.onnx").is_file()
        assert (tmp_path / "cpu" / model / "1" / "model.py").is_file()
    for extra in ("vocab.txt", "model_sets.toml"):
        assert (tmp_path / "cpu" / extra).read_bytes() == (shipped / extra).read_bytes()
    # the cpu flavour's decode model runs its own copy of the decoder_joint file, not BLS calls
    decode = (tmp_path / "cpu" / "decoder_joint_decode" / "config.pbtxt").read_text()
    assert 'key: "decoder_joint_onnx"' in decode and 'string_value: "decoder_joint.onnx"' in decode
    joint_copy = tmp_path / "cpu" / "decoder_joint_decode" / "1" / "decoder_joint.onnx"
    assert joint_copy.read_bytes() == (shipped / "decoder_joint" / "1" / "model.onnx").read_bytes()

    production = amira(
        "model-repo", "build", "--from-repository", str(shipped), "--output", str(tmp_path / "prod"),
        "--gpus", "0,1",
    )  # fmt: skip
    assert production.returncode == 0, production.stderr
    assert str(tmp_path / "prod") in production.stderr
    for model in models:
        text = (tmp_path / "prod" / model / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text and "gpus: [ 0, 1 ]" in text
        assert "count: 1" in text
        assert (tmp_path / "prod" / model / "1" / "model.onnx").is_file()
        assert not (tmp_path / "prod" / model / "1" / "model.py").exists()
    encoder = (tmp_path / "prod" / "encoder" / "config.pbtxt").read_text()
    assert 'name: "audio_signal"' in encoder and "dims: [ -1, 128, -1 ]" in encoder
    decode = (tmp_path / "prod" / "decoder_joint_decode" / "config.pbtxt").read_text()
    assert "decoder_joint_onnx" not in decode  # production: BLS calls to the joint on its GPU
    assert not (tmp_path / "prod" / "decoder_joint_decode" / "1" / "decoder_joint.onnx").exists()


async def test_build_from_a_nemo_export(tmp_path: Path) -> None:
    """A fake NeMo export (the shipped TDT models under onnx-asr's file names) becomes a production
    repository that serves the same transcripts as the shipped repository."""
    shipped = shipped_repository()
    export = tmp_path / "export"
    export.mkdir()
    shutil.copyfile(model_file(shipped, "encoder"), export / "encoder-model.onnx")
    shutil.copyfile(model_file(shipped, "decoder_joint"), export / "decoder_joint-model.onnx")
    shutil.copyfile(shipped / "vocab.txt", export / "vocab.txt")
    dest = tmp_path / "repo"
    result = amira(
        "model-repo", "build", "--from-nemo", str(export), "--output", str(dest), "--instances", "2"
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in dest.iterdir())
    decode_models = ["decoder_joint_decode", "decoder_joint_recording"]
    assert names == ["decoder_joint", *decode_models, "encoder", "preprocessor", "vocab.txt"]
    for model in decode_models:  # the token loop, next to the joint
        config = (dest / model / "config.pbtxt").read_text()
        assert 'backend: "python"' in config and 'string_value: "decoder_joint"' in config
        assert (dest / model / "1" / "amira" / "core" / "decoding.py").is_file()
    assert 'name: "waveforms"' in (dest / "decoder_joint_recording" / "config.pbtxt").read_text()
    assert 'name: "waveforms"' not in (dest / "decoder_joint_decode" / "config.pbtxt").read_text()
    preprocessor = (dest / "preprocessor" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in preprocessor and "dims: [ -1, 128, -1 ]" in preprocessor
    assert "count: 2" in (dest / "decoder_joint" / "config.pbtxt").read_text()

    samples = read_recording(CARDS[0])
    async with open_recognizer(embedded_settings(model_sets_file=None)) as recognizer:
        expected = await recognizer.transcribe(samples)
    async with open_recognizer(embedded_settings(model_repository=dest, model_sets_file=None)) as recognizer:
        assert (await recognizer.transcribe(samples)).tokens == expected.tokens


def test_build_errors_are_reported(tmp_path: Path) -> None:
    missing = amira("model-repo", "build", "--from-nemo", str(tmp_path), "--output", str(tmp_path / "out"))
    assert missing.returncode == 2 and "encoder-model.onnx is missing" in missing.stderr
    both = amira(
        "model-repo", "build", "--from-nemo", str(tmp_path), "--from-repository", str(tmp_path),
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert both.returncode == 2 and "not allowed with" in both.stderr
    shipped = str(shipped_repository())
    bad_gpus = amira(
        "model-repo", "build", "--from-repository", shipped, "--output", str(tmp_path / "o"),
        "--gpus", "zero",
    )  # fmt: skip
    assert bad_gpus.returncode == 2 and "--gpus" in bad_gpus.stderr


@pytest.mark.triton
def test_amira_triton_serves_the_shipped_models_until_sigint() -> None:
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "amira.cli", "triton", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180  # as the session Triton: 5 to 60 s under load
        ready = False
        while not ready and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/models/encoder_rnnt/ready", timeout=1
                ):
                    ready = True
            except OSError:
                time.sleep(0.2)
        assert ready, process.poll()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
