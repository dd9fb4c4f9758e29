"""AMIRA: real-time speech recognition (RNN-T/TDT) over HTTP and WebSocket, in front of Triton.

The public API, for trio programs that embed the recogniser or the server:

* `open_recognizer(settings)`: an async context manager giving a loaded `Recognizer`;
  `await rec.transcribe(samples)` returns a `Transcript`, `rec.open_stream(model)` a `Stream`
  whose results are `StreamResult`s;
* `Settings`: the configuration (`Settings.from_env()` reads the environment);
* `serve(settings)`: the HTTP/WebSocket server, to run in the caller's nursery.

Names are imported lazily (PEP 562), so that `import amira.core...` loads no server code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Recognizer": "amira.recognizer",
    "open_recognizer": "amira.recognizer",
    "Settings": "amira.settings",
    "Transcript": "amira.core.transcript",
    "StreamResult": "amira.core.transcript",
    "Stream": "amira.stream_session",
    "serve": "amira.server.runner",
}

__all__ = [
    "Recognizer",
    "Settings",
    "Stream",
    "StreamResult",
    "Transcript",
    "__version__",
    "open_recognizer",
    "serve",
]

if TYPE_CHECKING:
    from amira.core.transcript import StreamResult, Transcript
    from amira.recognizer import Recognizer, open_recognizer
    from amira.server.runner import serve
    from amira.settings import Settings
    from amira.stream_session import Stream


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'amira' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
