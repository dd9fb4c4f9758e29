"""The `amira` command: transcribe files, serve, run a local Triton, build model repositories."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile
import trio

from amira.core import audio
from amira.core.errors import RequestError
from amira.core.model_set import ModelSetError
from amira.protocols.native_batch import batch_document
from amira.recognizer import open_recognizer
from amira.settings import Settings, SettingsError

PROGRESS_MIN_FILES = 3
PROGRESS_MIN_SECONDS = 30.0


class Progress:
    """A one-line progress bar on stderr, shown only when it is worth it and stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled and sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / self.total)
            bar = "#" * filled + "-" * (30 - filled)
            print(
                f"\r[{bar}] {self.done}/{self.total} {label[-40:]:<40}", end="", file=sys.stderr, flush=True
            )
            if self.done == self.total:
                print(file=sys.stderr)


def read_audio_file(path: Path) -> npt.NDArray[np.float32]:
    """A sound file, or headerless 16 kHz s16le PCM when the name ends in .raw or .pcm."""
    data = path.read_bytes()
    if path.suffix.lower() in (".raw", ".pcm"):
        return audio.from_pcm16(data)
    return audio.from_sound_file(data)


async def transcribe_files(settings: Settings, paths: Sequence[Path], model: str, as_json: bool) -> int:
    status = 0
    async with open_recognizer(settings) as recognizer:
        loaded = []
        for path in paths:
            try:
                loaded.append((path, read_audio_file(path)))
            except (OSError, RequestError) as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                status = 1
        seconds = sum(samples.size for _, samples in loaded) / audio.MODEL_SAMPLE_RATE
        progress = Progress(len(loaded), len(loaded) >= PROGRESS_MIN_FILES or seconds >= PROGRESS_MIN_SECONDS)
        for path, samples in loaded:
            transcript = await recognizer.transcribe(samples, model)
            progress.step(str(path))
            if as_json:
                document = batch_document(transcript, model, 0.0)
                document["file"] = str(path)
                print(json.dumps(document))
            else:
                prefix = f"{path}: " if len(paths) > 1 else ""
                print(f"{prefix}{transcript.text}")
    return status


async def serve_until_signalled(settings: Settings) -> None:
    from amira.server.runner import serve

    async def shutdown_trigger() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logging.getLogger("amira.server").info(
                    "%s received: shutting down", signal.Signals(signum).name
                )
                return

    await serve(settings, shutdown_trigger=shutdown_trigger)


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1, got {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1, got {text!r}")
    return gpus


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
        "--json", action="store_true", help="print the full result as JSON, one line per file"
    )

    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", dest="server_host")
    serve.add_argument("--port", dest="server_port", type=int)
    serve.add_argument("--triton", dest="triton_endpoint", help="Triton HTTP URL (default: $TRITON_ENDPOINT)")
    serve.add_argument("--model-repository", type=Path)
    serve.add_argument("--model-sets", dest="model_sets_file", type=Path)

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
        for key in ("server_host", "server_port", "triton_endpoint", "model_repository", "model_sets_file")
    }
    try:
        settings = Settings.from_env(**overrides)
        if args.command == "transcribe":
            return trio.run(transcribe_files, settings, args.files, args.model, args.json)
        if args.command == "serve":
            trio.run(serve_until_signalled, settings)
            return 0
    except (SettingsError, ModelSetError, RequestError) as exc:
        print(f"amira: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
