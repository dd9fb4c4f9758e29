"""Shared fixtures: the shipped models, test recordings, and real servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import trio

from amira.models import shipped_repository
from amira.server.runner import serve
from amira.settings import Settings

DATA = Path(__file__).parent / "data"
LIBRIVOX = sorted((DATA / "librivox").glob("*.wav"))
CARDS = sorted((DATA / "cards").glob("*.wav"))
RECORDINGS = [*LIBRIVOX, *CARDS, DATA / "goforward.raw"]
MODEL_SETS = ("default", "rnnt")


def read_recording(path: Path) -> np.ndarray:
    """16 kHz mono float32 samples of a test recording (`.raw` is headerless s16le)."""
    if path.suffix == ".raw":
        return np.frombuffer(path.read_bytes(), "<i2").astype(np.float32) / 32768.0
    samples, rate = soundfile.read(path, dtype="float32")
    assert rate == 16_000 and samples.ndim == 1
    return samples


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def embedded_settings(**overrides: object) -> Settings:
    repository = shipped_repository()
    values: dict[str, object] = {
        "model_repository": repository,
        "model_sets_file": repository / "model_sets.toml",
        "server_host": "127.0.0.1",
        "server_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


async def start_server(nursery: trio.Nursery, settings: Settings) -> str:
    """A real Hypercorn server on a free loopback port, owned by `nursery`; returns its base URL."""
    binds = await nursery.start(serve, settings)
    return binds[0]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
