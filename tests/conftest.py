"""Shared fixtures: the shipped models, test recordings, and real servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from amira.models import shipped_repository
from amira.server.runner import serve
from amira.settings import Settings


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
