"""Configuration from the environment, validated up front.

Every variable of `api.md` plus AMIRA's own. A bad value stops the server at start-up with a
message that names the variable, rather than a guess that fails later under load.
"""

from __future__ import annotations

import enum
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from amira.core import segments
from amira.core.endpoints import parse_endpoint_list
from amira.core.model_set import ModelSetConfig, ModelSetError
from amira.models import shipped_repository

BODY_BUFFER_BODIES = 3  # the default BODY_BUFFER_BYTES, in batch body limits


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


class DecodeMode(enum.Enum):
    """How the engine drives the greedy decoders' `decoder_joint` calls (`DECODE_MODE`).

    * `batched`: a scheduler per model set runs the calls of every span in progress (batch requests
      and streams) in one worker thread, as one call with B rows per step;
    * `span`: each span runs in a worker thread of its own, one thread hand-off per span;
    * `per-call`: one worker-thread hand-off per call, the way AMIRA first worked (for comparison).

    With Triton, a repository's decode model (`TRITON_DECODE_MODEL`) replaces all three.
    """

    BATCHED = "batched"
    SPAN = "span"
    PER_CALL = "per-call"


class TritonDecodeModel(enum.Enum):
    """What Triton's decode model (`<decoder_joint>_decode`) does when Triton has it: `auto`, whole
    batch recordings in one call (when the model takes them) and every other span; `spans`, spans
    only (a batch recording's preprocessor and encoder are then AMIRA's own calls); `off`, nothing."""

    AUTO = "auto"
    SPANS = "spans"
    OFF = "off"


def _choice(kind: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    def parse(text: str) -> enum.Enum:
        try:
            return kind(text.strip().lower())
        except ValueError:
            raise ValueError(f"must be one of {', '.join(m.value for m in kind)}") from None

    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


MAX_WORKERS = 64


def workers(text: str) -> int:
    """`WORKERS` (and `amira serve --workers`)."""
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} server processes")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _endpointing_ms(text: str) -> int | None:
    if text.strip().lower() == "false":
        return None
    value = int(text)
    low, high = segments.MIN_ENDPOINTING_MS, segments.MAX_ENDPOINTING_MS
    if not low <= value <= high:
        raise ValueError(f"must be false or milliseconds from {low} to {high}")
    return value


def _max_segment_secs(text: str) -> float:
    value = float(text)
    if not segments.MIN_SEGMENT_SECS <= value <= segments.MAX_SEGMENT_SECS:
        raise ValueError(
            f"must be from {segments.MIN_SEGMENT_SECS:g} to {segments.MAX_SEGMENT_SECS:g} seconds"
        )
    return value


def _interim_secs(text: str) -> float | None:
    value = _non_negative_float(text)
    return value or None


def _milliseconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of milliseconds, 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _endpoints(text: str) -> str | None:
    """One or more Triton HTTP URLs, comma-separated, normalised; None for none (the embedded backend)."""
    return ",".join(parse_endpoint_list(text)) or None


def _checked_endpoints(value: str | None) -> str | None:
    """The `triton_endpoint` field's converter: settings made in code or from flags are checked too."""
    if value is None:
        return None
    try:
        return _endpoints(value)
    except ValueError as exc:
        raise SettingsError(f"TRITON_ENDPOINT={value!r}: {exc}") from None


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def _existing_file(text: str) -> Path | None:
    if not text:
        return None
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return path


def _name(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in text.split(",") if key.strip())


def read_model_sets_file(path: Path, repository: Path) -> dict[str, ModelSetConfig]:
    """Parse a TOML file of `[model_sets.<name>]` tables; vocabulary paths are relative to the repository."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelSetError(f"cannot read model sets file {path}: {exc}") from exc
    tables = document.get("model_sets")
    if not isinstance(tables, dict) or not tables:
        raise ModelSetError(f"{path}: expected at least one [model_sets.<name>] table")
    known = {f.name for f in attrs.fields(ModelSetConfig)} - {"name"}
    configs = {}
    for name, table in tables.items():
        if not isinstance(table, dict) or set(table) - known:
            raise ModelSetError(f"{path}: [model_sets.{name}] may only have the keys {sorted(known)}")
        values = dict(table)
        values["vocabulary"] = repository / values.get("vocabulary", "vocab.txt")
        if "durations" in values:
            values["durations"] = tuple(values["durations"])
        try:
            configs[name] = ModelSetConfig(name=name, **values)
        except TypeError as exc:
            raise ModelSetError(f"{path}: [model_sets.{name}]: {exc}") from exc
    return configs


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (also 1/0, yes/no, on/off)")


@attrs.frozen
class Settings:
    # comma-separated Triton HTTP URLs (`triton_endpoints` splits them); None: the embedded backend
    triton_endpoint: str | None = attrs.field(default=None, converter=_checked_endpoints)
    model_repository: Path = attrs.field(factory=shipped_repository)
    vocabulary_path: Path | None = None
    model_sets_file: Path | None = None
    preprocessor_model_name: str = "preprocessor"
    encoder_model_name: str = "encoder"
    decoder_joint_model_name: str = "decoder_joint"
    server_host: str = "0.0.0.0"
    server_port: int = 8057
    # server processes on one port (`amira.server.workers`); the caps are per process
    workers: int = 1
    inference_timeout_secs: float = 5.0
    max_concurrent_streams: int = 10
    max_concurrent_batches: int = 50
    inference_threads: int | None = None  # embedded: model calls running at once; None: the cores
    stream_timeout_secs: float = 30.0
    max_batch_audio_secs: float = 4 * 3600.0
    max_batch_body_bytes: int = 256 * 1_048_576
    max_frame_bytes: int = 1_048_576
    batch_whole_secs: float = 30.0
    batch_chunk_secs: float = 4.0  # from bench.batch_windows: README "Long recordings"
    batch_left_context_secs: float = 4.0
    batch_right_context_secs: float = 1.6
    stream_chunk_secs: float = 1.6
    stream_left_context_secs: float = 4.0
    stream_right_context_secs: float = 1.2
    frames_per_call: int | None = None
    shutdown_drain_secs: float = 10.0
    api_keys: tuple[str, ...] = ()
    cors_allow_origins: tuple[str, ...] = ()
    max_stream_audio_secs: float = 3600.0
    max_frames_per_sec: int = 200
    stream_outage_secs: float = 10.0
    max_connections: int = 1000
    keep_alive_timeout_secs: float = 5.0
    body_timeout_secs: float = 60.0
    body_buffer_bytes: int | None = None
    stream_max_idle_secs: float = 300.0
    max_streams_per_key: int | None = None
    stream_endpointing_ms: int | None = segments.DEFAULT_ENDPOINTING_MS
    stream_max_segment_secs: float = segments.DEFAULT_MAX_SEGMENT_SECS
    stream_interim_secs: float | None = segments.DEFAULT_INTERIM_SECS
    decode_mode: DecodeMode = DecodeMode.BATCHED
    decoder_batch_window_ms: float = 0.0
    triton_decode_model: TritonDecodeModel = TritonDecodeModel.AUTO
    max_calls_per_endpoint: int = 32
    max_queued_calls: int = 100
    # None: the browser page at `/` is on for the embedded backend (a newcomer's first run), off
    # behind Triton (production), where an operator turns it on with WEB_UI=true.
    web_ui: bool | None = None

    def __attrs_post_init__(self) -> None:
        if self.body_buffer_bytes is not None and self.body_buffer_bytes < self.max_body_bytes:
            raise SettingsError(
                f"BODY_BUFFER_BYTES={self.body_buffer_bytes}: must be at least the batch body limit, "
                f"MAX_BATCH_BODY_BYTES = {self.max_body_bytes}"
            )

    @property
    def max_body_bytes(self) -> int:
        """The largest batch request body (`MAX_BATCH_BODY_BYTES`: sized for compressed audio)."""
        return self.max_batch_body_bytes

    @property
    def body_budget(self) -> int:
        """Bytes of request bodies held at once, all requests together (`BODY_BUFFER_BYTES`)."""
        return self.body_buffer_bytes or BODY_BUFFER_BODIES * self.max_body_bytes

    @property
    def triton_endpoints(self) -> tuple[str, ...]:
        """The Triton endpoints calls are spread over; empty for the embedded backend."""
        return tuple(self.triton_endpoint.split(",")) if self.triton_endpoint else ()

    @property
    def web_ui_enabled(self) -> bool:
        return self.web_ui if self.web_ui is not None else self.triton_endpoint is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every known variable that is set; `overrides` (e.g. command-line flags) win."""
        environ = os.environ if environ is None else environ
        both = [environ.get(name) for name in ("TRITON_ENDPOINT", "TRITON_ENDPOINTS")]
        if all(value is not None and value.strip() for value in both) and both[0] != both[1]:
            raise SettingsError("TRITON_ENDPOINT and TRITON_ENDPOINTS are both set and differ: set one")
        values: dict[str, Any] = {}  # field -> value of the field's type, as its ENVIRONMENT parser makes it
        for variable, (field, parse) in ENVIRONMENT.items():
            text = environ.get(variable)
            if text is None:
                continue
            try:
                value = parse(text)
            except ValueError as exc:
                raise SettingsError(f"{variable}={text!r}: {exc}") from exc
            if value is not None or values.get(field) is None:  # an empty alias does not unset
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def segment_options(self) -> segments.SegmentOptions:
        """The streams' segment options unless a stream's query says otherwise."""
        return segments.SegmentOptions(
            endpointing_ms=self.stream_endpointing_ms,
            max_segment_secs=self.stream_max_segment_secs,
            interim_secs=self.stream_interim_secs,
        )

    def model_set_configs(self) -> dict[str, ModelSetConfig]:
        """The model sets to serve: those of `MODEL_SETS_FILE`, else one set named `default`."""
        if self.model_sets_file is not None:
            return read_model_sets_file(self.model_sets_file, self.model_repository)
        vocabulary = self.vocabulary_path or self.model_repository / "vocab.txt"
        return {
            "default": ModelSetConfig(
                name="default",
                preprocessor=self.preprocessor_model_name,
                encoder=self.encoder_model_name,
                decoder_joint=self.decoder_joint_model_name,
                vocabulary=vocabulary,
            )
        }


ENVIRONMENT: dict[str, tuple[str, Callable[[str], object]]] = {
    "TRITON_ENDPOINT": ("triton_endpoint", _endpoints),
    "TRITON_ENDPOINTS": ("triton_endpoint", _endpoints),
    "MODEL_REPOSITORY": ("model_repository", _existing_dir),
    "VOCABULARY_PATH": ("vocabulary_path", _existing_file),
    "MODEL_SETS_FILE": ("model_sets_file", _existing_file),
    "PREPROCESSOR_MODEL_NAME": ("preprocessor_model_name", _name),
    "ENCODER_MODEL_NAME": ("encoder_model_name", _name),
    "DECODER_JOINT_MODEL_NAME": ("decoder_joint_model_name", _name),
    "SERVER_HOST": ("server_host", _name),
    "SERVER_PORT": ("server_port", _port),
    "WORKERS": ("workers", workers),
    "INFERENCE_TIMEOUT_SECS": ("inference_timeout_secs", _positive_float),
    "MAX_CONCURRENT_STREAMS": ("max_concurrent_streams", _positive_int),
    "MAX_CONCURRENT_BATCHES": ("max_concurrent_batches", _positive_int),
    "INFERENCE_THREADS": ("inference_threads", _positive_int),
    "STREAM_TIMEOUT_SECS": ("stream_timeout_secs", _positive_float),
    "MAX_BATCH_AUDIO_SECS": ("max_batch_audio_secs", _positive_float),
    "MAX_BATCH_BODY_BYTES": ("max_batch_body_bytes", _positive_int),
    "MAX_FRAME_BYTES": ("max_frame_bytes", _positive_int),
    "BATCH_WHOLE_SECS": ("batch_whole_secs", _positive_float),
    "BATCH_CHUNK_SECS": ("batch_chunk_secs", _positive_float),
    "BATCH_LEFT_CONTEXT_SECS": ("batch_left_context_secs", _non_negative_float),
    "BATCH_RIGHT_CONTEXT_SECS": ("batch_right_context_secs", _non_negative_float),
    "STREAM_CHUNK_SECS": ("stream_chunk_secs", _positive_float),
    "STREAM_LEFT_CONTEXT_SECS": ("stream_left_context_secs", _non_negative_float),
    "STREAM_RIGHT_CONTEXT_SECS": ("stream_right_context_secs", _non_negative_float),
    "FRAMES_PER_CALL": ("frames_per_call", _positive_int),
    "SHUTDOWN_DRAIN_SECS": ("shutdown_drain_secs", _non_negative_float),
    "API_KEYS": ("api_keys", _comma_list),
    "CORS_ALLOW_ORIGINS": ("cors_allow_origins", _comma_list),
    "MAX_STREAM_AUDIO_SECS": ("max_stream_audio_secs", _positive_float),
    "MAX_FRAMES_PER_SEC": ("max_frames_per_sec", _positive_int),
    "STREAM_OUTAGE_SECS": ("stream_outage_secs", _non_negative_float),
    "MAX_CONNECTIONS": ("max_connections", _positive_int),
    "KEEP_ALIVE_TIMEOUT_SECS": ("keep_alive_timeout_secs", _positive_float),
    "BODY_TIMEOUT_SECS": ("body_timeout_secs", _positive_float),
    "BODY_BUFFER_BYTES": ("body_buffer_bytes", _positive_int),
    "STREAM_MAX_IDLE_SECS": ("stream_max_idle_secs", _positive_float),
    "MAX_STREAMS_PER_KEY": ("max_streams_per_key", _positive_int),
    "STREAM_ENDPOINTING_MS": ("stream_endpointing_ms", _endpointing_ms),
    "STREAM_MAX_SEGMENT_SECS": ("stream_max_segment_secs", _max_segment_secs),
    "STREAM_INTERIM_SECS": ("stream_interim_secs", _interim_secs),
    "DECODE_MODE": ("decode_mode", _choice(DecodeMode)),
    "DECODER_BATCH_WINDOW_MS": ("decoder_batch_window_ms", _milliseconds),
    "TRITON_DECODE_MODEL": ("triton_decode_model", _choice(TritonDecodeModel)),
    "WEB_UI": ("web_ui", _boolean),
    "MAX_CALLS_PER_ENDPOINT": ("max_calls_per_endpoint", _positive_int),
    "MAX_QUEUED_CALLS": ("max_queued_calls", _non_negative_int),
}
