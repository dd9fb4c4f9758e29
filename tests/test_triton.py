"""The Triton backend against a real Triton server (from the nvidia-pytriton wheel) on the CPU.

One Triton, started once per session by a synchronous fixture, serves a CPU-flavour repository with
the real NeMo preprocessor, a tiny `add` model and `slow` (the same graph, answering after
`SLOW_DELAY` seconds). The kill/restart tests start their own Triton with `local_triton`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import trio
from onnx import TensorProto, helper

from amira.backends.triton import TritonBackend, parse_endpoint
from amira.core.errors import BackendError, BackendTimeout, BackendUnavailable
from amira.models import model_file
from amira.tooling.triton_launcher import local_triton, running_triton
from amira.tooling.triton_repository import build_repository, config_pbtxt, onnx_tensors
from tests.conftest import triton_inferences, wait_for_inferences

pytestmark = pytest.mark.triton

SLOW_DELAY = 1.2  # several times the timeouts below, so that "did not wait" has a wide margin
SLOW_INSTANCES = 3


def make_add_model(path: Path) -> None:
    """`sum = x + y` (FP32 [B, N]) and `n_out = n` (INT64 [B])."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "N"])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, ["B"])
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["B", "N"])
    n_out = helper.make_tensor_value_info("n_out", TensorProto.INT64, ["B"])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["sum"]), helper.make_node("Identity", ["n"], ["n_out"])],
        "add",
        [x, y, n],
        [total, n_out],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    (root / "preprocessor" / "1").mkdir(parents=True)
    (root / "preprocessor" / "1" / "model.source").write_text("onnx_asr:nemo128\n")
    make_add_model(root / "add" / "1" / "model.onnx")
    make_add_model(root / "slow" / "1" / "model.onnx")
    (root / "vocab.txt").write_text("▁a 0\nb 1\n<blk> 2\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def cpu_repo(source_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(
        source_repo,
        tmp_path_factory.mktemp("triton") / "repo",
        "cpu",
        instance_count={"slow": SLOW_INSTANCES},
        parameters={"slow": {"delay_seconds": str(SLOW_DELAY)}},
    )


@pytest.fixture(scope="session")
def triton(cpu_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("log") / "triton.log"
    with running_triton(cpu_repo, log_path=log, startup_timeout=120) as server:
        print(f"\nTriton ready in {server.last_start_seconds:.2f} s at {server.url}")
        yield server


def add_inputs(value: float, n: int = 1000) -> dict[str, np.ndarray]:
    return {
        "x": np.full((1, n), value, np.float32),
        "y": np.ones((1, n), np.float32),
        "n": np.array([int(value)], np.int64),
    }


# ---------------------------------------------------------------------------------------------------
# repository


def test_cpu_repository_layout(cpu_repo: Path) -> None:
    assert (cpu_repo / "vocab.txt").is_file()
    for model in ("preprocessor", "add", "slow"):
        assert (cpu_repo / model / "1" / "model.onnx").is_file()
        assert (cpu_repo / model / "1" / "model.py").is_file()
        text = (cpu_repo / model / "config.pbtxt").read_text()
        assert 'backend: "python"' in text and "max_batch_size: 0" in text and "KIND_CPU" in text
    assert "count: 2" in (cpu_repo / "preprocessor" / "config.pbtxt").read_text()
    assert 'key: "delay_seconds"' in (cpu_repo / "slow" / "config.pbtxt").read_text()


def test_production_config(source_repo: Path, tmp_path: Path) -> None:
    repo = build_repository(source_repo, tmp_path / "prod", "production", instance_count=2, gpus=[0, 1])
    text = (repo / "preprocessor" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text and "gpus: [ 0, 1 ]" in text
    assert "count: 2" in text and not (repo / "preprocessor" / "1" / "model.py").exists()
    inputs, outputs = onnx_tensors(repo / "preprocessor" / "1" / "model.onnx")
    assert [(t.name, t.data_type, t.dims) for t in outputs] == [
        ("features", "TYPE_FP32", (-1, 128, -1)),
        ("features_lens", "TYPE_INT64", (-1,)),
    ]
    with pytest.raises(ValueError):
        config_pbtxt("m", inputs, outputs, "gpu")  # type: ignore[arg-type]


def test_parse_endpoint() -> None:
    assert parse_endpoint("http://localhost:8000") == ("localhost:8000", False)
    assert parse_endpoint("127.0.0.1:8000/") == ("127.0.0.1:8000", False)
    assert parse_endpoint("https://triton.example:443/base/") == ("triton.example:443/base", True)
    for bad in ("", "http://localhost", "ftp://x:1"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


# ---------------------------------------------------------------------------------------------------
# the facts the design rests on


def test_tritonclient_is_bound_to_its_thread(triton) -> None:
    """A tritonclient.http client made in one thread cannot be used from another, even one call at a
    time: whenever a call has to wait for the answer (here: the slow model), gevent switches to the
    hub of the thread that made the client, and greenlet refuses to switch across threads. (A call
    whose answer is already there does not wait, which is why the failure looks random.)"""
    import greenlet
    import tritonclient.http as triton_http

    def slow_call(client) -> int:
        inputs = []
        for name, value in add_inputs(3, 10).items():
            tensor = triton_http.InferInput(name, list(value.shape), "INT64" if name == "n" else "FP32")
            tensor.set_data_from_numpy(value, binary_data=True)
            inputs.append(tensor)
        return int(client.infer("slow", inputs).as_numpy("n_out")[0])

    client = triton_http.InferenceServerClient(triton.endpoint)
    assert slow_call(client) == 3
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            slow_call(client)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], greenlet.error), errors
    assert "Cannot switch to a different thread" in str(errors[0])
    client.close()
    # a client made in the other thread works there
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(slow_call(triton_http.InferenceServerClient(triton.endpoint)))
    )
    thread.start()
    thread.join(10)
    assert results == [3]


def test_launcher_listens_on_loopback_only(triton) -> None:
    assert "--http-address=127.0.0.1" in triton.command
    assert "--allow-grpc=false" in triton.command and "--allow-metrics=false" in triton.command
    assert triton.url.startswith("http://127.0.0.1:")


# ---------------------------------------------------------------------------------------------------
# the backend


async def test_metadata_and_readiness(triton) -> None:
    backend = TritonBackend(triton.url, inference_timeout=5)
    meta = await backend.model_metadata("preprocessor")
    assert meta.name == "preprocessor"
    assert [(s.name, s.dtype, s.shape) for s in meta.inputs] == [
        ("waveforms", np.dtype(np.float32), (-1, -1)),
        ("waveforms_lens", np.dtype(np.int64), (-1,)),
    ]
    assert meta.output("features").shape == (-1, 128, -1)
    assert meta.output("features_lens").dtype == np.int64
    assert await backend.is_model_ready("preprocessor")
    assert await backend.is_model_ready("slow")
    assert not await backend.is_model_ready("no_such_model")
    assert await backend.is_server_ready()
    config = await backend.model_config("slow")
    assert config["max_batch_size"] == 0
    assert config["parameters"]["delay_seconds"]["string_value"] == str(SLOW_DELAY)
    with pytest.raises(BackendUnavailable):
        await backend.model_metadata("no_such_model")
    await backend.aclose()


async def test_preprocessor_matches_onnxruntime(triton, source_repo: Path) -> None:
    backend = TritonBackend(triton.url, inference_timeout=10)
    rng = np.random.default_rng(7)
    waveforms = (rng.standard_normal((1, 16000 * 3)) * 0.1).astype(np.float32)
    lens = np.array([waveforms.shape[1]], np.int64)
    got = await backend.infer(
        "preprocessor",
        {"waveforms": waveforms, "waveforms_lens": lens},
        ["features", "features_lens"],
        trio.CapacityLimiter(1),
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_file(source_repo, "preprocessor")), options, providers=["CPUExecutionProvider"]
    )
    features, features_lens = session.run(
        ["features", "features_lens"], {"waveforms": waveforms, "waveforms_lens": lens}
    )
    assert got["features"].dtype == np.float32 and got["features"].shape == features.shape
    assert got["features"].flags.writeable
    np.testing.assert_array_equal(got["features_lens"], features_lens)
    np.testing.assert_array_equal(got["features"], features)  # same onnxruntime, same threads: exact
    await backend.aclose()


async def test_infer_roundtrip_and_errors(triton) -> None:
    backend = TritonBackend(triton.url, inference_timeout=5)
    limiter = trio.CapacityLimiter(2)
    out = await backend.infer("add", add_inputs(41), ["sum", "n_out"], limiter)
    assert out["n_out"].tolist() == [41] and np.all(out["sum"] == 42)
    with pytest.raises(BackendUnavailable):
        await backend.infer("no_such_model", add_inputs(1), ["sum"], limiter)
    with pytest.raises(BackendError):  # wrong dtype for n: Triton rejects the request
        await backend.infer("add", {**add_inputs(1), "n": np.array([1], np.int32)}, ["sum"], limiter)
    with pytest.raises(BackendError):  # missing input
        await backend.infer("add", {"x": np.zeros((1, 2), np.float32)}, ["sum"], limiter)
    out = await backend.infer("add", add_inputs(1), ["n_out"], limiter)
    assert out["n_out"].tolist() == [1] and set(out) == {"n_out"}


async def test_limiter_caps_calls_in_flight(triton) -> None:
    """12 tasks under CapacityLimiter(2): at most 2 worker threads (so calls) at once, each with its own
    client; the slow model has 3 instances, so a broken cap would also finish sooner than 3 rounds."""
    backend = TritonBackend(triton.url, inference_timeout=10)
    limiter = trio.CapacityLimiter(2)
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    threads: set[int] = set()
    original = backend._in_thread

    def counting(action, what):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            threads.add(threading.get_ident())
        try:
            return original(action, what)
        finally:
            with lock:
                in_flight -= 1

    backend._in_thread = counting  # type: ignore[method-assign]
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        out = await backend.infer("slow", add_inputs(i, 10), ["n_out"], limiter)
        results[i] = int(out["n_out"][0])

    tasks = 6
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(one, i)
    elapsed = trio.current_time() - began
    assert results == {i: i for i in range(tasks)}
    assert peak == 2
    assert elapsed >= (tasks / 2) * SLOW_DELAY * 0.95, elapsed
    assert backend._clients_made <= len(threads)


async def test_timeout_on_slow_model(triton) -> None:
    backend = TritonBackend(triton.url, inference_timeout=0.2, grace=0.5)
    limiter = trio.CapacityLimiter(1)
    finished = await triton_inferences(triton.url, "slow")
    began = time.monotonic()
    with pytest.raises(BackendTimeout):
        await backend.infer("slow", add_inputs(1, 10), ["n_out"], limiter)
    elapsed = time.monotonic() - began
    assert 0.15 <= elapsed < SLOW_DELAY, elapsed  # it did not wait for the slow model
    # the next call on the same backend (and thread) gets its own answer, not the late one
    out = await backend.infer("add", add_inputs(5), ["n_out"], limiter)
    assert out["n_out"].tolist() == [5]
    await wait_for_inferences(triton.url, "slow", finished + 1)  # the slow instance is free again


async def test_kill_hang_and_restart(cpu_repo: Path, tmp_path: Path) -> None:
    async with local_triton(cpu_repo, log_path=tmp_path / "triton.log", startup_timeout=120) as server:
        print(f"\nlocal_triton ready in {server.last_start_seconds:.2f} s")
        backend = TritonBackend(server.url, inference_timeout=1.0, grace=0.5)
        limiter = trio.CapacityLimiter(2)
        assert (await backend.infer("add", add_inputs(1), ["n_out"], limiter))["n_out"].tolist() == [1]

        # killed in the middle of a call: that call fails promptly as unavailable
        async def kill_soon() -> None:
            await trio.sleep(0.2)
            await server.akill()

        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(BackendUnavailable):
                await backend.infer("slow", add_inputs(2, 10), ["n_out"], limiter)
        assert time.monotonic() - began < 1.0

        # while it is down: every call fails at once, and nothing is ready
        began = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.infer("add", add_inputs(3), ["n_out"], limiter)
        with pytest.raises(BackendUnavailable):
            await backend.model_metadata("add")
        assert not await backend.is_model_ready("add")
        assert time.monotonic() - began < 0.5

        # back on the same port: the same backend object works again
        await server.astart()
        print(f"restart ready in {server.last_start_seconds:.2f} s")
        assert await backend.is_model_ready("add")
        assert (await backend.infer("add", add_inputs(4), ["n_out"], limiter))["n_out"].tolist() == [4]

        # a hung server (SIGSTOP): the call ends as a timeout, within about the inference timeout
        os.kill(server.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(BackendTimeout):
                await backend.infer("add", add_inputs(5), ["n_out"], limiter)
            assert time.monotonic() - began < 2 * 1.0  # about the inference timeout, not a hang
            assert not await backend.is_model_ready("add")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert (await backend.infer("add", add_inputs(6), ["n_out"], limiter))["n_out"].tolist() == [6]
        await backend.aclose()
        with pytest.raises(BackendUnavailable):
            await backend.infer("add", add_inputs(7), ["n_out"], limiter)
    assert not server.is_running()


def make_identity_model(path: Path, tensors: list[tuple[str, str, int, list]]) -> None:
    """A graph mapping each input (name, output name, element type, shape) to an output by Identity."""
    inputs = [helper.make_tensor_value_info(name, dtype, shape) for name, _, dtype, shape in tensors]
    outputs = [helper.make_tensor_value_info(out, dtype, shape) for _, out, dtype, shape in tensors]
    nodes = [helper.make_node("Identity", [name], [out]) for name, out, _, _ in tensors]
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_repository_from_nemo_export(tmp_path: Path) -> None:
    from amira.tooling.triton_repository import build_repository_from_nemo_export

    export = tmp_path / "export"
    make_identity_model(
        export / "encoder-model.onnx",
        [
            ("audio_signal", "outputs", TensorProto.FLOAT, ["B", 80, "T"]),
            ("length", "encoded_lengths", 7, ["B"]),
        ],
    )
    make_identity_model(
        export / "decoder_joint-model.onnx",
        [("targets", "prednet_lengths", TensorProto.INT32, ["B", 1])],
    )
    (export / "vocab.txt").write_text("▁a 0\n<blk> 1\n", encoding="utf-8")
    repo = build_repository_from_nemo_export(export, tmp_path / "repo", "cpu", instance_count=1)
    assert (repo / "vocab.txt").read_text(encoding="utf-8").endswith("<blk> 1\n")
    pre = (repo / "preprocessor" / "config.pbtxt").read_text()
    assert "dims: [ -1, 80, -1 ]" in pre and "count: 1" in pre  # nemo80, from the encoder's input
    assert (repo / "encoder" / "1" / "model.py").is_file()
    assert 'name: "decoder_joint"' in (repo / "decoder_joint" / "config.pbtxt").read_text()
    prod = build_repository_from_nemo_export(export, tmp_path / "prod", feature_size=128, gpus=[0])
    assert "dims: [ -1, 128, -1 ]" in (prod / "preprocessor" / "config.pbtxt").read_text()
    assert "KIND_GPU" in (prod / "encoder" / "config.pbtxt").read_text()
    with pytest.raises(ValueError):
        build_repository_from_nemo_export(export, tmp_path / "bad", feature_size=64)
