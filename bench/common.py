"""What the benchmarks share: the backends and models under test, the server process, statistics,
tables and JSON.

A benchmark runs against one *subject* at a time: a backend (`embedded` onnxruntime in the server
process, or a real CPU-flavour `triton` started on loopback) and a model (`small`, the shipped test
model, or `parakeet`, random weights with Parakeet-TDT-0.6B tensor sizes generated into a temporary
directory). The AMIRA server runs in its own process (`bench/worker.py`), so that its CPU time and
event-loop stalls are its own and not the load generator's. Run the benchmarks from the repository
root as modules (`python -m bench.stream`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import numpy as np
import trio

from amira.models import shipped_repository
from amira.settings import ENVIRONMENT
from amira.testing.recordings import LIBRIVOX, RECORDINGS, pcm16, read_recording

ROOT = Path(__file__).resolve().parents[1]  # the repository root, where `python -m bench.worker` runs

BACKENDS = ("embedded", "triton")  # what `--backend both` runs
# `triton2`: two Triton processes on the same repository, both named in TRITON_ENDPOINT
EXTRA_BACKENDS = ("triton2",)
MODELS = ("small", "parakeet")  # what `--model both` runs
EXTRA_MODELS = ("demo",)
# Served as the server's default model set: (preprocessor, encoder, decoder_joint, vocabulary). By
# default the random-weight TDT set (of the shipped repository, or generated with Parakeet-TDT
# sizes): benchmarks measure the machinery, not what the model hears; `demo` is the shipped demo
# model (RNN-T, fewer tokens per second of speech, as a trained model emits).
MODEL_FILES = {
    "small": ("preprocessor", "encoder_tdt", "decoder_joint_tdt", "vocab_test.txt"),
    "parakeet": ("preprocessor", "encoder_tdt", "decoder_joint_tdt", "vocab_test.txt"),
    "demo": ("preprocessor", "encoder", "decoder_joint", "vocab.txt"),
}
SAMPLE_RATE = 16_000
STARTUP_TIMEOUT = 180.0


# ---------------------------------------------------------------------------------------------------
# Command line


def parser(description: str) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    result.add_argument("--backend", choices=(*BACKENDS, *EXTRA_BACKENDS, "both"), default="both")
    result.add_argument("--model", choices=(*MODELS, *EXTRA_MODELS, "both"), default="both")
    result.add_argument("--json", type=Path, help="write every figure to this file")
    result.add_argument("--quick", action="store_true", help="a few seconds per subject, for development")
    result.add_argument("--repeat", type=int, help="runs per figure (the median is reported)")
    return result


def chosen(value: str, choices: Sequence[str]) -> tuple[str, ...]:
    return tuple(choices) if value == "both" else (value,)


# ---------------------------------------------------------------------------------------------------
# Recordings


@attrs.frozen
class Recording:
    name: str
    samples: np.ndarray  # float32, exactly what the s16le `pcm` decodes to
    pcm: bytes

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


def recording(name: str, pieces: Iterable[np.ndarray]) -> Recording:
    pcm = pcm16(np.concatenate(list(pieces)))
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    return Recording(name, samples, pcm)


def test_recordings() -> list[Recording]:
    """The 11 test recordings (1 to 7 s): LibriVox, cards, goforward."""
    return [
        recording(path.stem[-4:] if path in LIBRIVOX else path.stem, [read_recording(path)])
        for path in RECORDINGS
    ]


def librivox_concatenation(order: Sequence[int], name: str | None = None) -> Recording:
    """LibriVox clips `order` (indexes into the 5 clips, repeats allowed) one after the other."""
    clips = [read_recording(LIBRIVOX[i % len(LIBRIVOX)]) for i in order]
    return recording(name or "+".join(LIBRIVOX[i % len(LIBRIVOX)].stem[-4:] for i in order), clips)


# ---------------------------------------------------------------------------------------------------
# Subjects: backend x model


@attrs.frozen
class Subject:
    backend: str
    model: str
    env: dict[str, str]  # the server settings that select the backend and model
    triton_pids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.model}"


def source_repository(model: str, workdir: Path) -> Path:
    if model in ("small", "demo"):
        return shipped_repository()
    from amira.tooling.test_models import PARAKEET_SHAPED, generate_repository

    target = workdir / "parakeet-shaped"
    if not (target / "vocab_test.txt").is_file():
        generate_repository(target, sizes=PARAKEET_SHAPED)
    return target


def model_env(repository: Path, model: str) -> dict[str, str]:
    preprocessor, encoder, decoder_joint, vocabulary = MODEL_FILES[model]
    return {
        "PREPROCESSOR_MODEL_NAME": preprocessor,
        "ENCODER_MODEL_NAME": encoder,
        "DECODER_JOINT_MODEL_NAME": decoder_joint,
        "MODEL_REPOSITORY": str(repository),
        "VOCABULARY_PATH": str(repository / vocabulary),
    }


@asynccontextmanager
async def open_subject(backend: str, model: str, workdir: Path) -> AsyncIterator[Subject]:
    """The backend running (one Triton process for `triton`, two for `triton2`), with the settings
    that point a server at it."""
    source = source_repository(model, workdir)
    if backend == "embedded":
        yield Subject(backend, model, model_env(source, model))
        return
    from amira.tooling.triton_launcher import local_triton
    from amira.tooling.triton_repository import build_repository

    repository = build_repository(
        source, workdir / f"triton-{model}", "cpu", models=MODEL_FILES[model][:3], clean=True
    )
    async with AsyncExitStack() as stack:
        tritons = [
            await stack.enter_async_context(
                local_triton(
                    repository, log_path=workdir / f"triton-{model}-{i}.log", startup_timeout=STARTUP_TIMEOUT
                )
            )
            for i in range(2 if backend == "triton2" else 1)
        ]
        env = model_env(repository, model) | {"TRITON_ENDPOINT": ",".join(t.url for t in tritons)}
        yield Subject(backend, model, env, tuple(t.pid for t in tritons if t.pid is not None))


@asynccontextmanager
async def subjects(args: argparse.Namespace) -> AsyncIterator[list[tuple[str, str]]]:
    """The (backend, model) pairs the command line asks for, and a scratch directory in `args.workdir`."""
    with tempfile.TemporaryDirectory(prefix="amira-bench-") as workdir:
        args.workdir = Path(workdir)
        yield [(b, m) for b in chosen(args.backend, BACKENDS) for m in chosen(args.model, MODELS)]


def own_cpu() -> float:
    """CPU seconds of this process so far (the load generator's: clients, pacing, JSON)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------------
# The server process


class ServerProcess:
    """`bench/worker.py` running; `url` is its base URL, `probe()` its counters (see the worker)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.url = ""
        self._buffer = b""

    async def _line(self) -> dict:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some()
            if not data:
                raise RuntimeError(f"the server process ended (exit code {self.process.poll()})")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def probe(self, reset: bool = False) -> dict:
        """CPU seconds, calls and the largest stall so far; `reset` starts a new stall maximum."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"reset\n" if reset else b"probe\n")
        with trio.fail_after(30):
            return await self._line()


def server_env(subject: Subject, **settings: object) -> dict[str, str]:
    """This process's environment without AMIRA settings, plus the subject's and `settings`."""
    env = {key: value for key, value in os.environ.items() if key not in ENVIRONMENT}
    env.update(subject.env)
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


@asynccontextmanager
async def running_server(
    subject: Subject, log_path: Path, **settings: object
) -> AsyncIterator[ServerProcess]:
    """The AMIRA server on a free loopback port in its own process; `settings` become its environment."""
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=server_env(subject, **settings),
        )
    server = ServerProcess(process)
    try:
        with trio.fail_after(STARTUP_TIMEOUT):
            server.url = (await server._line())["url"]
        yield server
    finally:
        with trio.CancelScope(shield=True):
            try:
                assert process.stdin is not None
                await process.stdin.send_all(b"quit\n")
                await process.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            with trio.move_on_after(20):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()


def process_tree_cpu(*pids: int) -> float:
    """User + system CPU seconds of processes `pids` and every live descendant (Tritons and their model
    stubs)."""
    if not pids:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = set(pids), list(pids)
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(p, 0.0) for p in tree)


# ---------------------------------------------------------------------------------------------------
# Statistics, tables, JSON


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over repeated runs."""
    return {key: median(run[key] for run in runs) for key in runs[0]}


def fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print a Markdown table (also returned)."""
    cells = [list(columns), *[[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: Path | None, document: object) -> None:
    if path is not None:
        path.write_text(json.dumps(document, indent=2, default=float) + "\n")
        print(f"wrote {path}")


def machine() -> dict[str, object]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1min": load[0], "python": sys.version.split()[0]}
