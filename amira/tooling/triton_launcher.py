"""Run a real Triton Inference Server on this machine, from the `nvidia-pytriton` wheel.

The wheel carries `pytriton/tritonserver/bin/tritonserver`, the Python backend
(`backends/python/libtriton_python.so`), one Python-backend stub per Python version
(`python_backend_stubs/3.X/triton_python_backend_stub`) and the shared libraries in
`site-packages/nvidia_pytriton.libs`. To run it:

* the backend directory must hold the stub for the running Python version next to
  `libtriton_python.so`, so the backend is copied once into a cache directory with the right stub;
* `LD_LIBRARY_PATH` must include `nvidia_pytriton.libs` (the copies lose their `$ORIGIN` rpath);
* the stub embeds `libpython3.X.so.1.0`: the running interpreter's own when it is a shared build
  (its `LIBDIR` goes on `LD_LIBRARY_PATH`), else the system's (Debian: `apt-get install libpython3.11`);
  it finds its `sys.prefix` by looking up `python3` on `PATH`: the running interpreter's `bin` directory goes
  first on `PATH` (a venv's `pyvenv.cfg` then gives it the venv's site-packages), and the running
  interpreter's site-packages go on `PYTHONPATH` as well, so models can import numpy and onnxruntime.

The server listens on HTTP only, on `127.0.0.1` by default (`--http-address`); gRPC, metrics,
SageMaker and Vertex AI endpoints are off unless asked for.

`local_triton()` is a trio async context manager; `TritonProcess` has blocking and async methods
(start, wait until ready, stop, kill, restart on the same port); `serve()` runs Triton in the
foreground for the `amira triton` command.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import trio

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
LOOPBACK = "127.0.0.1"


class TritonLaunchError(RuntimeError):
    """Triton could not be found, prepared, started, or did not become ready in time."""


# ---------------------------------------------------------------------------------------------------
# Locating and preparing the distribution


def pytriton_root() -> Path:
    """The installed `pytriton` package directory (found without importing it: that import is slow)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("nvidia-pytriton is not installed: pip install 'amira[triton]'")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    path = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file():
        raise TritonLaunchError(f"{path} is missing: is this the nvidia-pytriton wheel for linux x86_64?")
    return path


def triton_libs_dir() -> Path:
    root = pytriton_root()
    for candidate in (root.parent / "nvidia_pytriton.libs", root / "tritonserver" / "external_libs"):
        if candidate.is_dir():
            return candidate
    raise TritonLaunchError(f"no nvidia_pytriton.libs next to {root}")


def stub_path(python_version: str = PYTHON_VERSION) -> Path:
    path = (
        pytriton_root()
        / "tritonserver"
        / "python_backend_stubs"
        / python_version
        / "triton_python_backend_stub"
    )
    if not path.is_file():
        raise TritonLaunchError(
            f"the nvidia-pytriton wheel has no Python-backend stub for Python {python_version}"
        )
    return path


def default_cache_dir() -> Path:
    if env := os.environ.get("AMIRA_TRITON_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "amira" / "triton"


def _missing_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    """Shared libraries that `binary` needs and the loader cannot find (empty when `ldd` is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    result = subprocess.run([ldd, str(binary)], capture_output=True, text=True, env=dict(env), timeout=30)
    return [line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line]


def prepare_backends(cache_dir: Path | None = None, python_version: str = PYTHON_VERSION) -> Path:
    """A Triton backend directory whose Python backend runs the stub for `python_version`.

    Made once per wheel build and Python version under `cache_dir` (default `$AMIRA_TRITON_CACHE` or
    `~/.cache/amira/triton`); returns the `backends` directory to pass as `--backend-directory`.
    """
    source = pytriton_root() / "tritonserver" / "backends" / "python"
    stub = stub_path(python_version)
    library = source / "libtriton_python.so"
    fingerprint = hashlib.sha256()
    for path in (library, stub):
        stat = path.stat()
        fingerprint.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = Path(cache_dir or default_cache_dir()) / f"py{python_version}-{fingerprint.hexdigest()[:12]}"
    backends = target / "backends"
    if (backends / "python" / "triton_python_backend_stub").is_file():
        return backends
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        python_dir = staging / "backends" / "python"
        python_dir.mkdir(parents=True)
        shutil.copy2(library, python_dir / "libtriton_python.so")
        shutil.copy2(source / "triton_python_backend_utils.py", python_dir / "triton_python_backend_utils.py")
        shutil.copy2(stub, python_dir / "triton_python_backend_stub")
        os.chmod(python_dir / "triton_python_backend_stub", 0o755)
        try:
            staging.rename(target)
        except OSError:  # another process made it first
            if not (backends / "python" / "triton_python_backend_stub").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    missing = _missing_libraries(backends / "python" / "triton_python_backend_stub", triton_env())
    if missing:
        raise TritonLaunchError(
            f"the Triton Python-backend stub needs {', '.join(missing)}, which is not installed "
            f"(on Debian/Ubuntu: apt-get install libpython{python_version})"
        )
    return backends


def _shared_libpython_dir() -> str | None:
    """The directory of the running interpreter's own `libpython3.X.so.1.0`, if it is a shared build
    (pyenv, python.org Docker images, actions/setup-python): the stub then embeds the very same
    Python, and no system libpython is needed."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    return None


def triton_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Triton and its Python-backend stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    library_dirs = [str(triton_libs_dir())]
    python_libdir = _shared_libpython_dir()
    if python_libdir is not None:
        library_dirs.append(python_libdir)
    if env.get("LD_LIBRARY_PATH"):
        library_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(library_dirs)
    python_bin = str(Path(sys.executable).parent)  # not resolved: a venv's bin, with its pyvenv.cfg
    env["PATH"] = f"{python_bin}:{env['PATH']}" if env.get("PATH") else python_bin
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = ":".join(paths)
    # onnxruntime/OpenMP in several stubs on few cores: one thread each unless told otherwise
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL the child when the thread that started it ends, so no Triton outlives a killed
    test run. (It is the *thread*: start Triton from a long-lived thread, e.g. trio's main thread.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on at the moment (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]  # typeshed: the address is Any
        return port


def triton_command(
    repository: Path | Sequence[Path],
    *,
    http_port: int,
    host: str = LOOPBACK,
    backend_directory: Path | None = None,
    metrics_port: int | None = None,
    grpc_port: int | None = None,
    exit_timeout: int = 20,  # Python-backend models (the decode model) take seconds to unload
    auto_complete_config: bool = False,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The `tritonserver` command line: HTTP on `host:http_port`; gRPC and metrics only when given a port."""
    repositories = [repository] if isinstance(repository, str | os.PathLike) else list(repository)
    command = [str(tritonserver_binary())]
    command += [f"--model-repository={Path(repo).resolve()}" for repo in repositories]
    command += [
        f"--backend-directory={backend_directory or prepare_backends()}",
        "--allow-http=true",
        f"--http-address={host}",
        f"--http-port={http_port}",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={exit_timeout}",
        f"--log-verbose={log_verbose}",
    ]
    if grpc_port is None:
        command.append("--allow-grpc=false")
    else:
        command += ["--allow-grpc=true", f"--grpc-address={host}", f"--grpc-port={grpc_port}"]
    if metrics_port is None:
        command.append("--allow-metrics=false")
    else:
        command += [
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={host}",
            f"--metrics-port={metrics_port}",
        ]
    if not auto_complete_config:
        command.append("--disable-auto-complete-config")
    command += list(extra_args)
    return command


# ---------------------------------------------------------------------------------------------------
# One Triton process


def _ready_blocking(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=timeout) as response:
            status: int = response.status  # typeshed: urlopen returns Any
            return status == 200
    except (OSError, urllib.error.URLError):
        return False


async def _ready_async(host: str, port: int, seconds: float) -> bool:
    """`GET /v2/health/ready` with trio sockets: True on a 200 within `seconds`."""
    with trio.move_on_after(seconds):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        async with stream:
            request = f"GET /v2/health/ready HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            try:
                await stream.send_all(request.encode("ascii"))
                data = b""
                while b"\r\n" not in data:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    data += chunk
            except (OSError, trio.BrokenResourceError):
                return False
            return data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    return False


class TritonProcess:
    """A `tritonserver` child process on a fixed port, which may be stopped, killed and started again.

    Blocking methods (`start`, `stop`, `kill`, `restart`) serve the CLI and synchronous pytest
    fixtures; `astart`, `astop`, `akill`, `arestart` do the same from trio without blocking the event
    loop. Every wait has a timeout. Triton's output goes to `log_path` (appended across restarts).
    """

    def __init__(
        self,
        repository: Path | Sequence[Path],
        *,
        host: str = LOOPBACK,
        http_port: int | None = None,
        metrics_port: int | None = None,
        grpc_port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        cache_dir: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.repository = repository
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="amira-triton-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.command = triton_command(
            repository,
            http_port=self.http_port,
            host=host,
            backend_directory=prepare_backends(cache_dir),
            metrics_port=metrics_port,
            grpc_port=grpc_port,
            extra_args=extra_args,
        )
        self.env = triton_env(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.last_start_seconds: float | None = None

    @property
    def url(self) -> str:
        """`http://host:port`, what `TRITON_ENDPOINT` takes."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def endpoint(self) -> str:
        """`host:port`, what `tritonclient.http.InferenceServerClient` takes."""
        return f"{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _spawn(self) -> None:
        if self.is_running():
            raise TritonLaunchError(f"Triton already runs as pid {self.pid}")
        with self.log_path.open("ab") as log:
            log.write(f"--- amira: starting {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a terminal's Ctrl-C goes to us, and we stop Triton
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def _exited_error(self) -> TritonLaunchError:
        code = self.process.returncode if self.process is not None else None
        return TritonLaunchError(
            f"Triton exited with status {code} before it was ready; its log ({self.log_path}) ends:\n"
            + self.log_tail()
        )

    def _timeout_error(self) -> TritonLaunchError:
        return TritonLaunchError(
            f"Triton was not ready within {self.startup_timeout} s; its log ({self.log_path}) ends:\n"
            + self.log_tail()
        )

    # blocking ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start Triton and block until `/v2/health/ready` answers 200 (all models loaded)."""
        began = time.monotonic()
        self._spawn()
        deadline = began + self.startup_timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise self._exited_error()
            if _ready_blocking(self.url, timeout=1.0):
                self.last_start_seconds = time.monotonic() - began
                return
            if time.monotonic() > deadline:
                self.kill()
                raise self._timeout_error()
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout`; returns the exit status (None if not started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, as far as clients can tell) and reap the process."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=self.stop_timeout)
        return process.returncode

    # async ------------------------------------------------------------------------------------------

    async def _await_exit(self, seconds: float) -> bool:
        """Wait up to `seconds` for the process to end (polled: a Popen has no trio wait)."""
        process = self.process
        with trio.move_on_after(seconds):
            while process is not None and process.poll() is None:  # noqa: ASYNC110
                await trio.sleep(0.02)
            return True
        return False

    async def astart(self) -> None:
        """Start Triton and wait (without blocking trio) until it is ready."""
        began = trio.current_time()
        self._spawn()
        with trio.move_on_after(self.startup_timeout):
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise self._exited_error()
                if await _ready_async(self.host, self.http_port, 1.0):
                    self.last_start_seconds = trio.current_time() - began
                    return
                await trio.sleep(0.1)
        await self.akill()
        raise self._timeout_error()

    async def astop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            if not await self._await_exit(self.stop_timeout):
                return await self.akill()
        return process.returncode

    async def akill(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            if not await self._await_exit(self.stop_timeout):
                raise TritonLaunchError(f"Triton (pid {process.pid}) did not die after SIGKILL")
        return process.returncode

    async def arestart(self) -> None:
        await self.astop()
        await self.astart()


@contextlib.asynccontextmanager
async def local_triton(
    repository: Path | Sequence[Path],
    *,
    host: str = LOOPBACK,
    http_port: int | None = None,
    startup_timeout: float = 120.0,
    stop_timeout: float = 10.0,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[TritonProcess]:
    """Run Triton on `repository` for the body of an `async with`; it is stopped on the way out.

    `server.url` is its HTTP endpoint; `server.akill()` and `server.astart()` crash it and bring it
    back on the same port.
    """
    server = TritonProcess(
        repository,
        host=host,
        http_port=http_port,
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        log_path=log_path,
        extra_args=extra_args,
    )
    try:
        await server.astart()
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.astop()


@contextlib.contextmanager
def running_triton(repository: Path | Sequence[Path], **kwargs: object) -> Iterator[TritonProcess]:
    """Blocking twin of `local_triton` (for synchronous, e.g. session-scoped, pytest fixtures)."""
    server = TritonProcess(repository, **kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()


def serve(
    repository: Path | Sequence[Path],
    *,
    host: str = LOOPBACK,
    http_port: int = 8000,
    metrics_port: int | None = None,
    grpc_port: int | None = None,
    startup_timeout: float = 300.0,
    log_verbose: int = 0,
) -> int:
    """Run Triton in the foreground, its log on this process's stdout/stderr, until it exits or we
    get SIGINT/SIGTERM (passed on as SIGTERM). Returns Triton's exit status; for `amira triton`."""
    command = triton_command(
        repository,
        http_port=http_port,
        host=host,
        backend_directory=prepare_backends(),
        metrics_port=metrics_port,
        grpc_port=grpc_port,
        log_verbose=log_verbose,
    )
    process = subprocess.Popen(command, env=triton_env(), start_new_session=True)

    signals_seen = 0

    def forward(signum: int, frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        with contextlib.suppress(ProcessLookupError):  # the first asks Triton to stop, a second kills it
            process.send_signal(signal.SIGTERM if signals_seen == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        began = time.monotonic()
        while process.poll() is None:
            if _ready_blocking(f"http://{host}:{http_port}", timeout=1.0):
                took = time.monotonic() - began
                print(
                    f"amira: Triton ready at http://{host}:{http_port} after {took:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                break
            if time.monotonic() - began > startup_timeout:
                print(f"amira: Triton not ready after {startup_timeout} s", file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
        return process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
