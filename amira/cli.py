"""The `amira` command: transcribe files, serve, run a local Triton, build model repositories."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trio

from amira.core import audio
from amira.core.errors import RequestError
from amira.core.model_set import ModelSetError
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


def read_audio_file(path: Path) -> np.ndarray:
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
                document = transcript.to_json(model, 0.0)
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

    for sub in (transcribe, serve):
        sub.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
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
