"""The `amira` command: transcribe files, serve, run a local Triton, build model repositories."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import numpy.typing as npt
import soundfile
import trio

from amira.core import audio
from amira.core.errors import RequestError
from amira.core.model_set import ModelSetError
from amira.core.transcript import Transcript
from amira.protocols.native_batch import batch_document, text_body
from amira.recognizer import open_recognizer
from amira.settings import Settings, SettingsError
from amira.settings import workers as workers_setting

FORMATS = ("text", "json", "srt", "vtt")
BAR_WIDTH = 30


class ProgressBar:
    """One line on stderr per file being transcribed: audio seconds done of the total and the speed
    as a multiple of real time; only when stderr is a terminal (never in pipes or logs)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.started = label, enabled, time.perf_counter()

    def __call__(self, done: float, total: float) -> None:
        if not self.enabled:
            return
        filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
        speed = done / max(time.perf_counter() - self.started, 1e-9)
        line = f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done:.1f}/{total:.1f} s {speed:.1f}x RT"
        print(f"{line} {self.label[-40:]}", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)


def read_audio_file(path: Path) -> npt.NDArray[np.float32]:
    """A sound file, or headerless 16 kHz s16le PCM when the name ends in .raw or .pcm."""
    data = path.read_bytes()
    if path.suffix.lower() in (".raw", ".pcm"):
        return audio.from_pcm16(data)
    return audio.from_sound_file(data)


def render(transcript: Transcript, path: Path, model: str, response_format: str, several: bool) -> str:
    """One file's output: a text line (`path: ` before it with several files), a JSON line (the
    batch document and `file`), or SubRip/WebVTT subtitles."""
    if response_format == "json":
        return json.dumps(batch_document(transcript, model, 0.0) | {"file": str(path)}) + "\n"
    body = text_body([transcript], response_format, multichannel=False)
    return f"{path}: {body}" if several and response_format == "text" else body


async def transcribe_files(
    settings: Settings,
    paths: Sequence[Path],
    model: str,
    response_format: str,
    output: TextIO = sys.stdout,
    output_dir: Path | None = None,
) -> int:
    """Transcribe each file in turn (one in memory at a time) and write its output to `output`, or,
    for subtitles of several files, to `<output_dir>/<name>.srt|vtt` (subtitles do not concatenate)."""
    several = len(paths) > 1
    status = 0
    async with open_recognizer(settings) as recognizer:
        for path in paths:
            try:
                samples = await trio.to_thread.run_sync(read_audio_file, path)
            except (OSError, RequestError) as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                status = 1
                continue
            bar = ProgressBar(str(path), sys.stderr.isatty())
            transcript = await recognizer.transcribe(samples, model, progress=bar)
            text = render(transcript, path, model, response_format, several)
            if output_dir is not None:
                await trio.Path(output_dir / f"{path.stem}.{response_format}").write_text(
                    text, encoding="utf-8"
                )
            else:
                output.write(text)
                output.flush()
    return status


def run_transcribe(settings: Settings, args: argparse.Namespace) -> int:
    response_format = "json" if args.json else args.format
    subtitles_of_several = len(args.files) > 1 and response_format in ("srt", "vtt")
    if subtitles_of_several and not (args.output and args.output.is_dir()):
        print(f"amira: {response_format} of several files needs --output DIRECTORY", file=sys.stderr)
        return 2
    if args.output is None or subtitles_of_several:
        output_dir = args.output if subtitles_of_several else None
        return trio.run(
            transcribe_files, settings, args.files, args.model, response_format, sys.stdout, output_dir
        )
    with args.output.open("w", encoding="utf-8") as output:
        return trio.run(transcribe_files, settings, args.files, args.model, response_format, output)


async def signalled() -> None:
    """Return at the first SIGINT or SIGTERM: the server's shutdown trigger."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger("amira.server").info("%s received: shutting down", signal.Signals(signum).name)
            return


async def serve_until_signalled(settings: Settings) -> None:
    from amira.server.runner import serve

    await serve(settings, shutdown_trigger=signalled)


def serve_as_worker(settings: Settings, seat: str) -> NoReturn:
    """One of several server processes (`amira.server.workers`): accept from the inherited socket
    in its turn once started, stop when standard input closes; SIGINT and SIGTERM are the
    supervisor's to act on."""
    from amira.server.runner import serve
    from amira.server.workers import Seat, stdin_closed, worker_settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = partial(serve, worker_settings(settings), shutdown_trigger=stdin_closed, seat=Seat.parse(seat))
    trio.run(worker)
    exit_at_once()


def supervise_workers(settings: Settings, argv: Sequence[str]) -> int:
    """`WORKERS` server processes (`amira.server.workers`) on the port this process listens on; each
    runs this command line (`argv`) again with `--worker-seat`."""
    from amira.server.runner import hypercorn_config
    from amira.server.workers import Seat, listen_on, supervise

    if not hasattr(os, "memfd_create"):  # the workers' shared table (amira.server.workers)
        print("amira: WORKERS > 1 needs Linux; run one process per core behind a proxy", file=sys.stderr)
        return 2
    config = hypercorn_config(settings)
    try:
        # one backlog for all the workers: Hypercorn's per process, times their number
        listening = listen_on(settings.server_host, settings.server_port, config.backlog * settings.workers)
    except OSError as exc:
        print(
            f"amira: cannot listen on {settings.server_host}:{settings.server_port}: {exc}", file=sys.stderr
        )
        return 2
    with listening:
        host, port = listening.getsockname()[:2]
        logging.getLogger("amira.server").info("%d workers on %s port %d", settings.workers, host, port)

        def command(seat: Seat) -> list[str]:
            return [sys.executable, "-m", "amira.cli", *argv, "--worker-seat", seat.argument()]

        return trio.run(supervise, settings.workers, command, listening, signalled, config.graceful_timeout)


def exit_at_once() -> NoReturn:
    """End the process now that the server has closed everything it held (sockets, backend,
    threads' work): the interpreter's own teardown of every loaded module takes another 0.2 to
    0.5 s, which a shutdown that ends as soon as the last stream is done should not wait for."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1, got {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1, got {text!r}")
    return gpus


def worker_count(text: str) -> int:
    try:
        return workers_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_model_repository(args: argparse.Namespace) -> int:
    """`amira model-repo build`: write a Triton repository from a NeMo export or a source repository."""
    from amira.tooling.triton_repository import build_repository, build_repository_from_nemo_export

    if args.from_nemo is not None:
        dest = build_repository_from_nemo_export(
            args.from_nemo,
            args.output,
            args.flavour,
            feature_size=args.feature_size,
            instance_count=args.instances,
            gpus=args.gpus,
        )
    else:
        dest = build_repository(
            args.from_repository, args.output, args.flavour, instance_count=args.instances, gpus=args.gpus
        )
    models = sorted(p.parent.name for p in dest.glob("*/config.pbtxt"))
    print(f"amira: wrote a {args.flavour} Triton repository to {dest}: {', '.join(models)}", file=sys.stderr)
    return 0


def run_local_triton(args: argparse.Namespace) -> int:
    """`amira triton`: build a CPU-flavour repository into a temporary directory and run the Triton
    of the nvidia-pytriton wheel on it in the foreground, until SIGINT or SIGTERM."""
    import tempfile

    from amira.models import shipped_repository
    from amira.tooling.triton_launcher import serve as serve_triton
    from amira.tooling.triton_repository import build_repository

    source = args.repository or shipped_repository()
    with tempfile.TemporaryDirectory(prefix="amira-triton-repo-") as scratch:
        repository = build_repository(source, Path(scratch) / "repository", args.flavour)
        print(f"amira: serving {source} ({args.flavour}) from {repository}", file=sys.stderr, flush=True)
        status = serve_triton(repository, host=args.host, http_port=args.port)
    # Triton's exit status after our SIGTERM is a clean stop
    return 0 if status in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else status


class PartialLine:
    """On a terminal, the open segment's partial transcript rewritten in place, and each segment's
    final on a line of its own; elsewhere, the whole transcript at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json, self.tty = as_json, sys.stdout.isatty()

    def __call__(self, result: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(result), flush=True)
        elif result.get("status") == "COMPLETE" and not self.tty:
            print(result["transcription"], flush=True)
        elif result.get("status") == "COMPLETE":
            print("\r\033[K", end="", flush=True)  # each segment is on its own line already
        elif self.tty and result.get("is_final"):
            print(f"\r\033[K{result['transcription']}", flush=True)
        elif self.tty:
            committed = result["committed"]
            tail = result["transcription"][len(committed) :]
            print(f"\r\033[K{committed}\033[2m{tail}\033[0m", end="", flush=True)


async def stream_to_server(args: argparse.Namespace) -> int:
    from trio_websocket import HandshakeError

    from amira.client import StreamError, stream_file

    try:
        samples, rate = soundfile.read(args.file, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        print(f"amira: {args.file}: {exc}", file=sys.stderr)
        return 1
    status = 0
    try:
        await stream_file(
            args.url, samples.mean(axis=1), rate, args.frame_ms / 1000, not args.fast, PartialLine(args.json)
        )
    except* (StreamError, HandshakeError, OSError) as group:
        for error in group.exceptions:
            print(f"\namira: {error}", file=sys.stderr)
        status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amira", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser(
        "transcribe", help="transcribe sound files (embedded backend by default)"
    )
    transcribe.add_argument("files", nargs="+", type=Path)
    transcribe.add_argument("--model", default="default", help="model set name (default: %(default)s)")
    transcribe.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (default), json (the batch document, one line per file), srt or vtt",
    )
    transcribe.add_argument("--json", action="store_true", help="the same as --format json")
    transcribe.add_argument(
        "--output",
        type=Path,
        help="write here, not to standard output (a directory for srt/vtt of several files)",
    )

    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", dest="server_host")
    serve.add_argument("--port", dest="server_port", type=int)
    serve.add_argument(
        "--triton",
        dest="triton_endpoint",
        help="Triton HTTP URL(s), comma-separated (default: $TRITON_ENDPOINT)",
    )
    serve.add_argument("--model-repository", type=Path)
    serve.add_argument("--model-sets", dest="model_sets_file", type=Path)
    serve.add_argument(
        "--workers", type=worker_count, help="server processes on one port (default: $WORKERS or 1)"
    )
    serve.add_argument("--worker-seat", help=argparse.SUPPRESS)  # a worker's (amira.server.workers.Seat)

    triton = commands.add_parser(
        "triton",
        help="run a local CPU-only Triton (from the nvidia-pytriton wheel) until SIGINT/SIGTERM",
        description="Build a CPU-flavour Triton repository (Python-backend models running onnxruntime) "
        "into a temporary directory and run the Triton of the nvidia-pytriton wheel on it.",
    )
    triton.add_argument(
        "--repository", type=Path, help="source model repository (default: the shipped test models)"
    )
    triton.add_argument("--host", default="127.0.0.1", help="HTTP address (default: %(default)s)")
    triton.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    triton.add_argument(
        "--flavour",
        choices=["cpu"],
        default="cpu",
        help="only cpu: the wheel's Triton has no onnxruntime backend",
    )

    stream = commands.add_parser("stream", help="stream a sound file to a server over WebSocket")
    stream.add_argument("file", type=Path)
    stream.add_argument(
        "--url",
        default="ws://127.0.0.1:8057/v2/decode/stream/default",
        help="the stream endpoint (default: %(default)s)",
    )
    stream.add_argument("--frame-ms", type=positive_int, default=100, help="audio per frame (default: 100)")
    stream.add_argument("--fast", action="store_true", help="send as fast as possible, not in real time")
    stream.add_argument("--json", action="store_true", help="print every result as a JSON line")

    model_repo = commands.add_parser("model-repo", help="Triton model repositories")
    model_repo_commands = model_repo.add_subparsers(dest="model_repo_command", required=True)
    build = model_repo_commands.add_parser(
        "build",
        help="write a Triton model repository",
        description="Write a Triton model repository: every config.pbtxt is generated from the ONNX "
        "file's own tensors. production: onnxruntime_onnx on GPU instances, for NVIDIA's Triton image; "
        "cpu: Python-backend models running onnxruntime, for the nvidia-pytriton wheel's Triton.",
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-nemo",
        type=Path,
        metavar="EXPORT_DIR",
        help="a NeMo RNN-T/TDT ONNX export: encoder-model.onnx, decoder_joint-model.onnx, vocab.txt",
    )
    source.add_argument(
        "--from-repository",
        type=Path,
        metavar="DIR",
        help="an AMIRA source repository (e.g. the shipped one)",
    )
    build.add_argument("--output", type=Path, required=True, metavar="DEST")
    build.add_argument("--flavour", choices=["production", "cpu"], default="production")
    build.add_argument("--instances", type=positive_int, help="instances per model (default: 1 GPU, 2 CPU)")
    build.add_argument(
        "--gpus", type=gpu_list, help="GPU ids of the instance groups, e.g. 0,1 (default: all)"
    )
    build.add_argument(
        "--feature-size", type=int, choices=[80, 128], help="--from-nemo: default from the encoder"
    )

    from amira.tooling.model_fetch import add_model_command

    fetch = add_model_command(commands)
    for sub in (transcribe, serve, stream, triton, build, fetch):
        sub.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command in ("triton", "model-repo"):
        from amira.tooling.triton_launcher import TritonLaunchError

        try:
            return run_local_triton(args) if args.command == "triton" else build_model_repository(args)
        except (OSError, ValueError, TritonLaunchError) as exc:
            print(f"amira: {exc}", file=sys.stderr)
            return 2
    if args.command == "stream":
        return trio.run(stream_to_server, args)
    if args.command == "model":
        from amira.tooling.model_fetch import run_model_command

        return run_model_command(args)
    overrides = {
        key: getattr(args, key, None)
        for key in (
            "server_host",
            "server_port",
            "workers",
            "triton_endpoint",
            "model_repository",
            "model_sets_file",
        )
    }
    try:
        settings = Settings.from_env(**overrides)
        if args.command == "transcribe":
            return run_transcribe(settings, args)
        if args.command == "serve":
            if args.worker_seat is not None:
                serve_as_worker(settings, args.worker_seat)
            if settings.workers > 1:
                return supervise_workers(settings, sys.argv[1:] if argv is None else argv)
            trio.run(serve_until_signalled, settings)
            exit_at_once()
    except (SettingsError, ModelSetError, RequestError) as exc:
        print(f"amira: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
