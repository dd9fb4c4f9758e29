"""Real AMIRA servers on loopback for tests and benchmarks: settings on the shipped models, a
Hypercorn server in a nursery, and model-sets files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from amira.models import shipped_repository
from amira.server.runner import serve
from amira.settings import Settings


def embedded_settings(**overrides: Any) -> Settings:
    repository = shipped_repository()
    settings = Settings(
        model_repository=repository,
        model_sets_file=repository / "model_sets.toml",
        server_host="127.0.0.1",
        server_port=0,
    )
    return attrs.evolve(settings, **overrides)


async def start_server(nursery: trio.Nursery, settings: Settings) -> str:
    """A real Hypercorn server on a free loopback port, owned by `nursery`; returns its base URL."""
    binds: list[str] = await nursery.start(serve, settings)
    return binds[0]


def write_model_sets(path: Path, sets: dict[str, tuple[str, ...]]) -> Path:
    """A model-sets TOML: name -> (preprocessor, encoder, decoder_joint[, vocabulary]); the vocabulary
    defaults to the shipped `vocab.txt` (the demo model's)."""
    lines = []
    for name, (preprocessor, encoder, decoder_joint, *vocabulary) in sets.items():
        lines += [
            f"[model_sets.{name}]",
            f'preprocessor = "{preprocessor}"',
            f'encoder = "{encoder}"',
            f'decoder_joint = "{decoder_joint}"',
            f'vocabulary = "{vocabulary[0] if vocabulary else "vocab.txt"}"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


async def metric(base: str, name: str, **labels: str) -> float:
    """One sample of a server's `/metrics` (0 when the series does not exist yet)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{base}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def wait_for_metric(
    base: str, name: str, done: Callable[[float], bool], seconds: float, **labels: str
) -> float:
    """Poll `/metrics` until `done(value)` (a state to wait for, rather than a guessed sleep); fails
    with `trio.TooSlowError` after `seconds`."""
    with trio.fail_after(seconds):
        while not done(value := await metric(base, name, **labels)):  # noqa: ASYNC110 - no event to await
            await trio.sleep(0.05)
    return value
