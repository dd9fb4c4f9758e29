"""The shipped demo transducer (trained by `python -m training`), the default model set, transcribes
real human recordings of its domain exactly on the embedded backend; its export decodes as onnx-asr does."""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx
import pytest
import trio

from amira import open_recognizer
from amira.client import open_stream_client
from amira.models import model_file, shipped_repository
from amira.settings import Settings
from amira.testing.recordings import REAL_DOMAIN, pcm16, read_recording
from amira.testing.reference import reference_decoder
from amira.testing.servers import start_server

from .conftest import TritonFixture

REPOSITORY = shipped_repository()
DEMO_FILES = ("encoder", "decoder_joint", "vocab.txt")


def _settings() -> Settings:
    """The out-of-the-box settings: the embedded backend on the shipped repository, its default set."""
    return Settings()


async def _transcribe(path: Path) -> str:
    async with open_recognizer(_settings()) as rec:
        return (await rec.transcribe(read_recording(path))).text


CASES = pytest.mark.parametrize(("path", "text"), REAL_DOMAIN, ids=[path.name for path, _ in REAL_DOMAIN])


@CASES
async def test_demo_model_transcribes_the_real_recordings_exactly(path: Path, text: str) -> None:
    assert await _transcribe(path) == text


@CASES
async def test_onnx_asr_decodes_the_demo_model_alike(path: Path, text: str, tmp_path: Path) -> None:
    assert reference_decoder(REPOSITORY, "default", tmp_path).text(read_recording(path)) == text


def test_demo_model_set_layout() -> None:
    sets = tomllib.loads((REPOSITORY / "model_sets.toml").read_text(encoding="utf-8"))["model_sets"]
    assert sets["default"] == {
        "preprocessor": "preprocessor",
        "encoder": "encoder",
        "decoder_joint": "decoder_joint",
        "vocabulary": "vocab.txt",
    }
    for model in ("encoder", "decoder_joint"):
        config = (REPOSITORY / model / "config.pbtxt").read_text(encoding="utf-8")
        assert f'name: "{model}"' in config and 'platform: "onnxruntime_onnx"' in config
        assert model_file(REPOSITORY, model).is_file()
    lines = (REPOSITORY / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines[-1] == f"<blk> {len(lines) - 1}"
    size = sum(
        p.stat().st_size
        for name in DEMO_FILES
        for p in [REPOSITORY / name, *(REPOSITORY / name).rglob("*")]
        if p.is_file()
    )
    assert size <= 10_000_000


@pytest.fixture
async def demo_over_triton(nursery: trio.Nursery, asr_triton: TritonFixture) -> str:
    """A real AMIRA server on the session's real Triton, serving the shipped repository's sets."""
    return await start_server(nursery, asr_triton.settings())


@CASES
async def test_demo_model_over_triton_batch_and_stream(demo_over_triton: str, path: Path, text: str) -> None:
    pcm = pcm16(read_recording(path))
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{demo_over_triton}/v2/decode/batch/default", content=pcm, headers={"Content-Type": "audio/pcm"}
        )
    url = demo_over_triton.replace("http://", "ws://") + "/v2/decode/stream/default"
    async with open_stream_client(url) as client:
        await client.send_pcm(pcm)
        await client.end()
        final = [result async for result in client.results()][-1]
    assert (response.json()["transcription"], final["transcription"]) == (text, text)
