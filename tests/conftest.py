"""pytest fixtures: real servers on loopback and the session's Triton with its fault-injection models.

The helpers they share with the benchmarks (settings on the shipped models, `start_server`,
`write_model_sets`, the test recordings) are in `amira.testing`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import onnx
import pytest
import trio

from amira.models import shipped_repository
from amira.settings import Settings
from amira.testing.servers import embedded_settings, start_server, write_model_sets
from amira.tooling.triton_launcher import TritonProcess

TRITON_MISSING = importlib.util.find_spec("pytriton") is None
REQUIRE_TRITON = os.environ.get("AMIRA_REQUIRE_TRITON", "") not in ("", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the session's Triton is a `triton` test, whether it says so or not."""
    for item in items:
        if "asr_triton" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`triton` tests skip where the nvidia-pytriton wheel is missing, except where Triton is required
    (CI sets AMIRA_REQUIRE_TRITON=1): there a missing Triton fails them, so a broken install cannot pass
    as a green run with a third of the suite skipped."""
    if TRITON_MISSING and item.get_closest_marker("triton") is not None:
        if REQUIRE_TRITON:
            pytest.fail("AMIRA_REQUIRE_TRITON is set but nvidia-pytriton is not installed", pytrace=False)
        pytest.skip("nvidia-pytriton missing")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


# ---------------------------------------------------------------------------------------------------
# A real Triton (from the nvidia-pytriton wheel) for the session, serving the shipped models and
# fault-injection models:
#
# * `encoder_slow`: the shipped encoder, answering after `SLOW_DELAY` seconds (2 instances);
# * `decoder_joint_slow`: the shipped decoder_joint, answering after `SLOW_JOINT_DELAY` seconds,
#   with a decode model that calls it through BLS (the production path; the CPU flavour's decode
#   models otherwise run their own copy of the joint). The recogniser probes every set's
#   preprocessor and encoder at load (never its decoder_joint), so a set with this joint loads
#   under an `INFERENCE_TIMEOUT_SECS` shorter than the delay, and its first decoding call times out;
# * `encoder_broken`: the encoder's interface; works up to `BROKEN_MAX_FEATURES` feature frames
#   (10 s of audio), fails inside onnxruntime beyond (a Gather index out of range).

SLOW_DELAY = 1.0
SLOW_JOINT_DELAY = 2.0  # 4x the inference timeout the tests give it: "did not wait" has a wide margin
BROKEN_MAX_FEATURES = 1000
FAULT_SETS = {
    "slow": ("preprocessor", "encoder_slow", "decoder_joint"),
    "broken": ("preprocessor", "encoder_broken", "decoder_joint_tdt", "vocab_test.txt"),  # D = 128
    "slow_joint": ("preprocessor", "encoder", "decoder_joint_slow"),
    "spans_only": ("preprocessor", "encoder", "decoder_joint_spans_only"),
}


def make_broken_encoder(path: Path) -> None:
    """`outputs = audio_signal[:, :, ::8] + table[length]`, `encoded_lengths = ceil(length / 8)`.

    `table` holds `BROKEN_MAX_FEATURES + 1` zeros, so the Gather fails at run time inside
    onnxruntime once `length` exceeds `BROKEN_MAX_FEATURES`; below that the output is the
    subsampled input, which is enough for the load-time probe (256 feature frames).
    """
    from onnx import TensorProto, helper

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        tensor = helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        return helper.make_node("Constant", [], [name], value=tensor)

    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [BROKEN_MAX_FEATURES + 1], [0.0] * (BROKEN_MAX_FEATURES + 1)
    )
    nodes = [
        helper.make_node("Constant", [], ["table"], value=table),
        const("starts", [0]),
        const("ends", [2**62]),
        const("axes", [2]),
        const("steps", [8]),
        const("seven", [7]),
        const("eight", [8]),
        const("expand_axes", [1, 2]),
        helper.make_node("Slice", ["audio_signal", "starts", "ends", "axes", "steps"], ["subsampled"]),
        helper.make_node("Gather", ["table", "length"], ["picked"], axis=0),
        helper.make_node("Unsqueeze", ["picked", "expand_axes"], ["picked_3d"]),
        helper.make_node("Add", ["subsampled", "picked_3d"], ["outputs"]),
        helper.make_node("Add", ["length", "seven"], ["rounded_up"]),
        helper.make_node("Div", ["rounded_up", "eight"], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder_broken",
        [
            helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", 128, "T"]),
            helper.make_tensor_value_info("length", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", 128, "T_out"]),
            helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


async def triton_inferences(url: str, model: str) -> int:
    """Requests Triton has finished for `model` (its statistics), whatever became of the client."""
    async with httpx.AsyncClient(timeout=10) as http:
        document = (await http.get(f"{url}/v2/models/{model}/stats")).json()
    return sum(int(stats["inference_count"]) for stats in document["model_stats"])


async def wait_for_inferences(url: str, model: str, count: int, seconds: float = 30) -> None:
    """Wait until Triton has finished `count` requests of `model` (e.g. one a client gave up on, so
    that the next test finds its instance free), polling its statistics."""
    with trio.fail_after(seconds):
        while await triton_inferences(url, model) < count:
            await trio.sleep(0.05)


@attrs.frozen
class TritonFixture:
    """The session's Triton, its CPU repository and the model-sets files that go with it."""

    server: TritonProcess
    repository: Path
    fault_sets_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def settings(self, sets_file: Path | None = None, **overrides: object) -> Settings:
        """Settings of an AMIRA server on this Triton (the repository only gives vocabulary paths)."""
        return embedded_settings(
            triton_endpoint=self.url,
            model_sets_file=sets_file or shipped_repository() / "model_sets.toml",
            **overrides,
        )

    def fault_settings(self, *names: str, **overrides: object) -> Settings:
        """Settings serving only the fault sets `names` (each extra set costs a probe at start-up)."""
        path = self.fault_sets_file.with_name(f"faults-{'-'.join(names)}.toml")
        if not path.exists():
            write_model_sets(path, {name: FAULT_SETS[name] for name in names})
        return self.settings(path, **overrides)


def build_test_repository(dest: Path, instance_count: int | None = None) -> Path:
    """A CPU-flavour repository of the shipped models plus the fault-injection models."""
    from amira.models import model_file
    from amira.tooling.triton_repository import build_repository, write_model

    source = shipped_repository()
    build_repository(source, dest, "cpu", instance_count=instance_count)
    delay = {"delay_seconds": str(SLOW_DELAY)}
    write_model(
        model_file(source, "encoder"), dest, "encoder_slow", "cpu", instance_count=2, parameters=delay
    )
    write_model(
        model_file(source, "decoder_joint"),
        dest,
        "decoder_joint_slow",
        "cpu",
        instance_count=1,
        parameters={"delay_seconds": str(SLOW_JOINT_DELAY)},
        decode_in_process=False,  # its decode model must call the slow joint: BLS, as in production
    )
    write_model(
        model_file(source, "decoder_joint"), dest, "decoder_joint_spans_only", "cpu", instance_count=1
    )
    shutil.rmtree(dest / "decoder_joint_spans_only_recording")  # as repositories were before it
    broken = dest.parent / "encoder_broken.onnx"
    make_broken_encoder(broken)
    write_model(broken, dest, "encoder_broken", "cpu", instance_count=1)
    return dest


@asynccontextmanager
async def started_triton(repository: Path, log_path: Path) -> AsyncIterator[TritonProcess]:
    """A Triton of a test's own on `repository` (a test may kill and restart it); stopped on exit."""
    triton = TritonProcess(repository, log_path=log_path, startup_timeout=120)
    await triton.astart()
    try:
        yield triton
    finally:
        with trio.CancelScope(shield=True):
            await triton.astop()


@pytest.fixture(scope="session")
def asr_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonFixture]:
    """One real Triton for the session (`triton` tests: see `pytest_runtest_setup`)."""
    from amira.tooling.triton_launcher import running_triton

    root = tmp_path_factory.mktemp("triton_session")
    repository = build_test_repository(root / "repository")
    sets_file = write_model_sets(root / "faults.toml", FAULT_SETS)
    with running_triton(repository, log_path=root / "triton.log", startup_timeout=180) as server:
        print(f"\nsession Triton ready in {server.last_start_seconds:.2f} s at {server.url}")
        yield TritonFixture(server, repository, sets_file)


@pytest.fixture
async def triton_server(nursery: trio.Nursery, asr_triton: TritonFixture) -> str:
    """A real AMIRA server (Hypercorn) on the session Triton, serving the shipped sets; its base URL."""
    return await start_server(nursery, asr_triton.settings(max_batch_audio_secs=20.0, max_frame_bytes=65536))
