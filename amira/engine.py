"""The engine: the loaded model sets and every call to the inference backend.

Batch recognition (`amira.recognizer`) and streaming sessions (`amira.stream_session`) both run on
an `Engine` and never import each other. The engine owns, per model set, one `LoadedModelSet`
record (the validated set, its streaming windows computed once, its pool of decoder states); it
makes the backend calls (preprocessor + encoder, the `decoder_joint` loop), counts and times them,
and rides through a backend outage by retrying under a kind of work's `CallPolicy`.

Decoding a span (`Engine.decode`) drives the sans-IO `GreedyDecoder` through `amira.core.joint`
in one of the ways `DECODE_MODE` names (see `amira.settings.DecodeMode`): batched across spans by
the model set's `JointScheduler` (while the engine runs, `Engine.run`), one worker thread per span,
or one worker-thread hand-off per call; or, with Triton, in Triton's decode model.

Cache-aware model sets (`amira.core.cache_aware`) are encoded chunk by chunk: a
`CacheAwareEncoding` per stream (or batch request) holds the sans-IO chunker and either the
stream's pooled numpy caches or, where the backend keeps the caches (Triton's sequence batcher),
the stream's sequence id. `Engine.encode_chunks` makes one preprocessor call for the new audio and
one encoder call per chunk; leaving `Engine.cache_aware_encoding` always ends a backend sequence
that was started, whatever ended the stream.

Files (vocabularies) are read here, not in `amira.core`, which stays free of I/O.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import numpy as np
import numpy.typing as npt
import trio

from amira.backends.base import Backend
from amira.backends.triton_pool import TritonPool
from amira.batching import JointScheduler
from amira.core.cache_aware import (
    HALF_WINDOW,
    HISTORY,
    HOP,
    WINDOW,
    CacheAwareChunker,
    CacheAwareSpec,
    CachePool,
    Chunk,
    EncoderCaches,
)
from amira.core.decode_model import (
    DECODE_OUTPUTS,
    RECORDING_MODELS,
    RECORDING_OUTPUTS,
    apply_response,
    decode_model_name,
    read_lengths,
    recording_model_name,
    recording_request,
    span_request,
)
from amira.core.decoding import GreedyDecoder
from amira.core.errors import BackendError, BackendFailure, BackendUnavailable, UnknownModel
from amira.core.joint import JOINT_OUTPUTS, Array, Span, joint_inputs, joint_step, receive_outputs
from amira.core.model_set import ModelSet, ModelSetConfig, ModelSetError, validate_model_set
from amira.core.state_pool import StatePool
from amira.core.tensors import SequenceFlags
from amira.core.vocabulary import Vocabulary, VocabularyError
from amira.core.windowing import BATCH_WINDOW_SETTINGS, StreamingConfig, StreamingConfigError
from amira.settings import DecodeMode, Settings, TritonDecodeModel

T = TypeVar("T")
log = logging.getLogger(__name__)
OUTAGE_RETRY_SECS = 0.25
STATES_PER_STREAM = 3  # a stream's committed state, a scratch copy for tails, a checkpoint before each window
NO_FRAMES = np.zeros((0, 0), np.float32)  # the frames of a span decoded where they were made
PROBE_SAMPLES = 40_960  # 2.56 s: a power-of-two number of 10 ms feature frames, so ratios come out whole


@attrs.frozen
class CallPolicy:
    """How a kind of work calls the backend: under which limiter, and how long it rides through an
    outage (the backend unreachable) by retrying before it gives up. Calls are pure functions of
    their inputs, so a retry is safe."""

    limiter: trio.CapacityLimiter
    ride_through_secs: float = 0.0


@attrs.frozen
class Encoded:
    """Encoder output of one utterance or window: `frames` is `[D, T']`, `length` the valid T'."""

    frames: npt.NDArray[np.float32]
    length: int
    features_length: int


@attrs.frozen
class LoadedModelSet:
    """A model set ready to serve: validated, its streaming and batch windows in frames, its state
    pool, and for a cache-aware set whose caches AMIRA keeps, its pool of encoder caches."""

    model_set: ModelSet
    streaming: StreamingConfig
    states: StatePool
    batch_windows: StreamingConfig  # the windows of batch recordings longer than one of them
    caches: CachePool | None = None

    @property
    def name(self) -> str:
        return self.model_set.name

    def describe(self) -> dict[str, object]:
        """The set as `/v2/models` shows it: its model set, and how it streams."""
        described = self.model_set.describe()
        spec = self.model_set.cache_aware
        if spec is None:
            streaming = self.streaming
            frame_seconds = self.model_set.frame_seconds
            described["streaming"] = {
                "kind": "windowed",
                "chunk_seconds": streaming.chunk_frames * frame_seconds,
                "left_context_seconds": streaming.left_frames * frame_seconds,
                "right_context_seconds": streaming.right_frames * frame_seconds,
            }
        else:
            described["streaming"] = {
                "kind": "cache_aware",
                "chunk_seconds": spec.chunk_frames * self.model_set.hop_samples / self.model_set.sample_rate,
                "chunk_mel_frames": spec.chunk_frames,
                "pre_encode_cache_mel_frames": spec.pre_encode_frames,
                "caches_kept_by": "backend" if spec.backend_state else "amira",
                "cache_shapes": {cache.name: list(cache.shape) for cache in spec.caches},
            }
        return described


class SequencePhase(enum.Enum):
    """A cache-aware encoding's backend sequence: `UNUSED` until its first call is sent, `OPEN` from
    then on (the backend may hold state for it, even if that call failed), `ENDED` once a call with
    the end flag was answered or the end was sent on the way out."""

    UNUSED = "unused"
    OPEN = "open"
    ENDED = "ended"


@attrs.define
class CacheAwareEncoding:
    """One stream's (or batch request's) cache-aware encoder: the sans-IO chunker, the numpy caches
    when AMIRA keeps them, and the backend sequence id when the backend does. A stream restarts it
    for each segment, which is encoded from fresh caches."""

    spec: CacheAwareSpec
    chunker: CacheAwareChunker
    caches: EncoderCaches | None
    sequence_id: int
    phase: SequencePhase = SequencePhase.UNUSED

    def restart(self, chunker: CacheAwareChunker) -> None:
        """A fresh encoder on `chunker`: zeroed caches, a new backend sequence. The previous sequence
        must have been ended (`Engine.end_sequence`)."""
        if self.phase is SequencePhase.OPEN:
            raise RuntimeError(f"sequence {self.sequence_id} was not ended before the encoder restarted")
        self.chunker = chunker
        if self.caches is not None:
            self.caches.reset()
        self.sequence_id = new_sequence_id()
        self.phase = SequencePhase.UNUSED


def new_sequence_id() -> int:
    """A random non-zero 63-bit id: unique across AMIRA replicas sharing one Triton."""
    return secrets.randbits(63) | 1


@attrs.frozen
class EncodedChunk:
    """One chunk's encoder output: frames `first_frame ...` of the chunker's audio (`encoded.length`)."""

    chunk: Chunk
    encoded: Encoded

    @property
    def first_frame(self) -> int:
        return self.chunk.first_frame

    @property
    def stop_frame(self) -> int:
        return self.first_frame + self.encoded.length


def create_backend(settings: Settings) -> Backend:
    """The embedded backend, or a pool of the Triton endpoints (one or more) that the settings name;
    a pool must run (`Engine.run`) to serve."""
    if settings.triton_endpoints:
        return TritonPool(
            settings.triton_endpoints,
            {model for config in settings.model_set_configs().values() for model in config.models.values()},
            inference_timeout=settings.inference_timeout_secs,
            max_calls_per_endpoint=settings.max_calls_per_endpoint,
            max_queued_calls=settings.max_queued_calls,
        )
    from amira.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.model_repository, max_running_calls=settings.inference_threads)


def read_vocabulary(config: ModelSetConfig) -> Vocabulary:
    path = config.vocabulary
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSetError(f"model set {config.name!r}: cannot read vocabulary {path}: {exc}") from exc
    try:
        return Vocabulary.parse(text, source=str(path))
    except VocabularyError as exc:
        raise ModelSetError(f"model set {config.name!r}: {exc}") from exc


class Engine:
    """The configured model sets on one backend, and the calls that run them."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.configs: dict[str, ModelSetConfig] = settings.model_set_configs()
        self.vocabularies: dict[str, Vocabulary] = {}
        self.model_sets: dict[str, LoadedModelSet] = {}
        self.stream_calls = CallPolicy(
            trio.CapacityLimiter(settings.max_concurrent_streams), settings.stream_outage_secs
        )
        self.batch_calls = CallPolicy(trio.CapacityLimiter(settings.max_concurrent_batches))
        self.calls: Counter[str] = Counter()
        self.on_call: Callable[[str, str, float], None] | None = None
        self.schedulers: dict[str, JointScheduler] = {}
        self.decode_models: dict[str, str] = {}  # model set -> its Triton decode model, where it has one
        self.recording_models: dict[
            str, str
        ] = {}  # model set -> its Triton recording model, where it has one
        self._nursery: trio.Nursery | None = None

    @property
    def pool(self) -> TritonPool | None:
        """The Triton endpoints, when the backend is Triton's."""
        return self.backend if isinstance(self.backend, TritonPool) else None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run, until cancelled, the Triton endpoints' watchers and the batching schedulers
        (`DECODE_MODE=batched`).

        `serve` and `open_recognizer` run it (`serving`). It is started once every Triton endpoint
        has been probed, so that loading the model sets right after finds the healthy ones. An
        engine that is not running decodes each span in a worker thread of its own instead, and a
        Triton pool that is not running refuses calls.
        """
        if self.running:
            raise RuntimeError("the engine is running already")
        try:
            async with trio.open_nursery() as nursery:
                if self.pool is not None:
                    await nursery.start(self.pool.run)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.schedulers.clear()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Run the engine (`run`) for the body of an `async with`. An exception of the body leaves
        as itself, not inside the exception group of the nursery that runs the engine."""
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield
            except Exception as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def check_admission(self) -> None:
        """Load shedding: refuse new work at once when no Triton endpoint is healthy
        (`backend_unavailable`, 1013) or more calls wait for one than `MAX_QUEUED_CALLS`
        (`capacity_exceeded`). The embedded backend queues no calls."""
        if self.pool is not None:
            self.pool.check_admission()

    def _scheduler(self, model_set: ModelSet) -> JointScheduler | None:
        """The set's batching scheduler, started on first use; None when spans are not batched."""
        if self.settings.decode_mode is not DecodeMode.BATCHED or self._nursery is None:
            return None
        scheduler = self.schedulers.get(model_set.name)
        if scheduler is None:
            model = model_set.config.decoder_joint
            scheduler = JointScheduler(self.backend, model, self.settings.decoder_batch_window_ms / 1000)
            self.schedulers[model_set.name] = scheduler
            self._nursery.start_soon(scheduler.run)
        return scheduler

    def load_vocabularies(self) -> None:
        """Read every vocabulary now: a missing or malformed file is a start-up error, not a runtime one."""
        for name, config in self.configs.items():
            self.vocabularies[name] = read_vocabulary(config)

    @property
    def loaded(self) -> bool:
        return len(self.model_sets) == len(self.configs)

    async def load(self) -> None:
        """Validate every model set against the backend's metadata and measure its frame rate.

        Raises `ModelSetError` when a set does not fit, and a `BackendFailure` when the backend
        cannot be asked; the server retries the latter until the backend answers.
        """
        if not self.vocabularies:
            self.load_vocabularies()
        for name, config in self.configs.items():
            if name in self.model_sets:
                continue
            metadata = {
                role: await self.backend.model_metadata(model) for role, model in config.models.items()
            }
            model_set = validate_model_set(config, self.vocabularies[name], metadata)
            decoding = attrs.evolve(model_set.decoding, frames_per_call=self.settings.frames_per_call)
            model_set = await self._probe_frame_rate(attrs.evolve(model_set, decoding=decoding))
            settings = self.settings
            try:
                streaming = StreamingConfig.from_seconds(
                    chunk=settings.stream_chunk_secs,
                    left=settings.stream_left_context_secs,
                    right=settings.stream_right_context_secs,
                    frame_samples=model_set.frame_samples,
                    sample_rate=model_set.sample_rate,
                )
                batch_windows = StreamingConfig.from_seconds(
                    chunk=settings.batch_chunk_secs,
                    left=settings.batch_left_context_secs,
                    right=settings.batch_right_context_secs,
                    frame_samples=model_set.frame_samples,
                    sample_rate=model_set.sample_rate,
                    settings=BATCH_WINDOW_SETTINGS,
                )
            except StreamingConfigError as exc:
                raise ModelSetError(f"model set {name!r}: {exc}") from exc
            states = StatePool(
                model_set.decoding.blank,
                model_set.state_layers,
                model_set.state_hidden,
                STATES_PER_STREAM * settings.max_concurrent_streams + settings.max_concurrent_batches,
            )
            await self._find_decode_model(model_set)
            spec = model_set.cache_aware
            caches = CachePool(spec, settings.max_concurrent_streams) if spec and spec.caches else None
            self.model_sets[name] = LoadedModelSet(model_set, streaming, states, batch_windows, caches)

    async def _find_decode_model(self, model_set: ModelSet) -> None:
        """With Triton and `TRITON_DECODE_MODEL` not `off`, use the set's decode model when Triton has
        it ready (every healthy endpoint, with several), and with `auto` its recording model for
        whole batch recordings (a repository written before it had one sends them in three calls)."""
        mode = self.settings.triton_decode_model
        if self.backend.kind != "triton" or mode is TritonDecodeModel.OFF:
            return
        decoder_joint = model_set.config.decoder_joint
        wanted = [(decode_model_name(decoder_joint), self.decode_models)]
        if mode is TritonDecodeModel.AUTO and model_set.cache_aware is None:
            wanted.append((recording_model_name(decoder_joint), self.recording_models))
        for name, found in wanted:
            if not await self.backend.is_model_ready(name):
                continue
            found[model_set.name] = name
            if self.pool is not None:  # an endpoint without it can no longer serve the set
                self.pool.require(name)

    async def _probe_frame_rate(self, model_set: ModelSet) -> ModelSet:
        """Feature hop and subsampling are not in the metadata: measure them on silence."""
        if model_set.cache_aware is not None:
            await self._probe_cache_aware(model_set, model_set.cache_aware)
            return model_set
        encoded = await self.encode(model_set, np.zeros(PROBE_SAMPLES, np.float32), self.batch_calls)
        if encoded.features_length < 1 or encoded.length < 1:
            raise ModelSetError(f"model set {model_set.name!r} gives no frames for {PROBE_SAMPLES} samples")
        hop = PROBE_SAMPLES // encoded.features_length
        subsampling = round(encoded.features_length / encoded.length)
        return attrs.evolve(model_set, hop_samples=hop, subsampling=subsampling)

    async def _probe_cache_aware(self, model_set: ModelSet, spec: CacheAwareSpec) -> None:
        """The preprocessor must frame 'valid' (the streaming preprocessor), and one chunk of silence
        must give a chunk of encoder frames (and caches of the shapes the metadata says)."""
        prefix = f"model set {model_set.name!r}"
        pre = await self._infer(
            model_set,
            "preprocessor",
            {
                "waveforms": np.zeros((1, PROBE_SAMPLES), np.float32),
                "waveforms_lens": np.array([PROBE_SAMPLES], np.int64),
            },
            ("features", "features_lens"),
            self.batch_calls,
        )
        frames = (PROBE_SAMPLES - HISTORY - WINDOW) // HOP + 1
        if int(pre["features_lens"][0]) != frames or pre["features"].shape[1:] != (spec.feature_size, frames):
            raise ModelSetError(
                f"{prefix}: a cache-aware encoder needs the streaming preprocessor (valid framing, no "
                f"normalisation; `preprocessor_streaming`): {PROBE_SAMPLES} samples gave "
                f"{int(pre['features_lens'][0])} frames, not {frames}"
            )
        async with self.cache_aware_encoding(model_set, CachePool(spec, 0), self.batch_calls) as encoding:
            encoding.chunker.feed(np.zeros(spec.chunk_frames * HOP + HALF_WINDOW, np.float32))
            chunks = await self.encode_chunks(model_set, encoding, self.batch_calls)
        if not chunks or chunks[0].encoded.length != spec.chunk_encoder_frames:
            got = chunks[0].encoded.length if chunks else 0
            raise ModelSetError(
                f"{prefix}: a chunk of {spec.chunk_frames} mel frames gave {got} encoder frames, not "
                f"{spec.chunk_encoder_frames} (subsampling {spec.subsampling}): check chunk_size and "
                "the encoder's subsampling_factor"
            )

    @asynccontextmanager
    async def cache_aware_encoding(
        self, model_set: ModelSet, pool: CachePool | None, policy: CallPolicy
    ) -> AsyncIterator[CacheAwareEncoding]:
        """A cache-aware encoding for one stream or batch request, its caches from `pool` (None: the
        backend keeps them); on the way out, by any route, the caches go back to the pool and a
        backend sequence that was started is ended."""
        spec = model_set.cache_aware
        if spec is None:
            raise ValueError(f"model set {model_set.name!r} is not cache-aware")
        caches = pool.acquire() if pool is not None and spec.caches else None
        encoding = CacheAwareEncoding(spec, CacheAwareChunker(spec), caches, new_sequence_id())
        try:
            yield encoding
        finally:
            if caches is not None and pool is not None:
                pool.release(caches)
            with trio.CancelScope(shield=True):
                await self.end_sequence(model_set, encoding, policy)

    async def end_sequence(
        self, model_set: ModelSet, encoding: CacheAwareEncoding, policy: CallPolicy
    ) -> None:
        """Send the end of an open backend sequence (a call that encodes nothing), so that the backend
        frees its state now rather than at its idle timeout; best effort, bounded by the inference
        timeout: a backend that is gone has lost the state anyway."""
        if encoding.phase is not SequencePhase.OPEN:
            return
        encoding.phase = SequencePhase.ENDED
        flags = SequenceFlags(encoding.sequence_id, end=True)
        spec = encoding.spec
        with trio.move_on_after(self.settings.inference_timeout_secs + 1.0):
            try:
                await self.backend.infer(
                    model_set.config.encoder, spec.end_inputs(), spec.outputs, policy.limiter, flags
                )
            except BackendFailure as exc:
                log.info("model set %s: the end of sequence %d failed: %s", model_set.name, flags.id, exc)
            else:
                self.calls["encoder_sequence_end"] += 1

    async def encode_chunks(
        self, model_set: ModelSet, encoding: CacheAwareEncoding, policy: CallPolicy
    ) -> list[EncodedChunk]:
        """Encode every chunk the audio fed to `encoding.chunker` so far allows (after `finish`, to the
        end): one preprocessor call for the new audio, one encoder call per chunk."""
        await self.featurize(model_set, encoding, policy)
        encoded: list[EncodedChunk] = []
        while (chunk := encoding.chunker.next_chunk()) is not None:
            encoded.append(await self.encode_chunk(model_set, encoding, chunk, policy))
        return encoded

    async def featurize(self, model_set: ModelSet, encoding: CacheAwareEncoding, policy: CallPolicy) -> None:
        """One streaming-preprocessor call for the mel frames the new audio allows (none if it allows
        none); `encoding.chunker.next_chunk()` then cuts the chunks they complete."""
        chunker, spec = encoding.chunker, encoding.spec
        request = chunker.features_request()
        if request is not None:
            pre = await self._infer(
                model_set,
                "preprocessor",
                {"waveforms": request[None, :], "waveforms_lens": np.array([request.size], np.int64)},
                ("features", "features_lens"),
                policy,
            )
            count = (request.size - HISTORY - WINDOW) // HOP + 1
            features = pre["features"]
            if int(pre["features_lens"][0]) != count or features.shape[:2] != (1, spec.feature_size):
                raise BackendError(
                    f"the streaming preprocessor gave features {features.shape} ({pre['features_lens']}) "
                    f"for {request.size} samples, expected {count} frames"
                )
            chunker.add_features(features[0, :, :count])

    async def encode_chunk(
        self, model_set: ModelSet, encoding: CacheAwareEncoding, chunk: Chunk, policy: CallPolicy
    ) -> EncodedChunk:
        """One encoder call: `chunk` with the stream's caches (or in its backend sequence)."""
        spec = encoding.spec
        inputs = spec.chunk_inputs(chunk.signal, chunk.length, encoding.caches)
        if spec.backend_state:
            # Never retried: the backend's state moves on with every call that reaches it, so a call
            # whose answer was lost cannot be sent again; the stream ends instead.
            flags = SequenceFlags(
                encoding.sequence_id, start=encoding.phase is SequencePhase.UNUSED, end=chunk.final
            )
            encoding.phase = SequencePhase.OPEN
            started = time.perf_counter()
            try:
                out = await self.backend.infer(
                    model_set.config.encoder, inputs, spec.outputs, policy.limiter, flags
                )
            finally:
                self._record(model_set, "encoder", [time.perf_counter() - started])
            if chunk.final:
                encoding.phase = SequencePhase.ENDED
        else:
            out = await self._infer(model_set, "encoder", inputs, spec.outputs, policy)
        frames, length = out[spec.encoded], int(np.ravel(out[spec.encoded_length])[0])
        expected = chunk.frames if chunk.final else spec.chunk_encoder_frames
        if (
            frames.ndim != 3
            or length > frames.shape[2]
            or length > expected
            or (not chunk.final and length != expected)
        ):
            raise BackendError(
                f"the cache-aware encoder returned {spec.encoded} {frames.shape} and length {length} "
                f"for a chunk of {expected} frames"
            )
        if encoding.caches is not None:
            try:
                encoding.caches.update(spec, out)
            except ValueError as exc:
                raise BackendError(f"the cache-aware encoder returned unusable caches: {exc}") from exc
        features = chunk.length - spec.pre_encode_frames
        return EncodedChunk(chunk, Encoded(frames[0, :, :length], length, features))

    async def ready(self) -> bool:
        """Whether the backend answers and every model of every set is ready."""
        for config in self.configs.values():
            for model in config.models.values():
                if not await self.backend.is_model_ready(model):
                    return False
        return True

    def check_known(self, name: str) -> None:
        """The one "unknown model" check: `name` must be a configured model set."""
        if name not in self.configs:
            raise UnknownModel(f"unknown model {name!r}; configured: {', '.join(sorted(self.configs))}")

    def model_set(self, name: str) -> LoadedModelSet:
        """A configured and loaded model set; `UnknownModel` or `BackendUnavailable` otherwise."""
        self.check_known(name)
        try:
            return self.model_sets[name]
        except KeyError:
            raise BackendUnavailable(
                f"model set {name!r} is not loaded yet: the backend has not answered"
            ) from None

    def _record(self, model_set: ModelSet, role: str, timings: list[float]) -> None:
        """Count and time calls of `role`, one per entry of `timings` (seconds)."""
        self.calls[role] += len(timings)
        if self.on_call is not None:
            for seconds in timings:
                self.on_call(model_set.name, role, seconds)

    async def _riding_through(self, policy: CallPolicy, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, retried while the backend is unreachable, for up to the policy's ride-through."""
        give_up_at = trio.current_time() + policy.ride_through_secs
        while True:
            try:
                return await attempt()
            except BackendUnavailable:
                if trio.current_time() + OUTAGE_RETRY_SECS > give_up_at:
                    raise
            await trio.sleep(OUTAGE_RETRY_SECS)

    async def _infer(
        self,
        model_set: ModelSet,
        role: str,
        inputs: dict[str, npt.NDArray[Any]],
        outputs: tuple[str, ...],
        policy: CallPolicy,
        *,
        model: str | None = None,
        parameters: dict[str, str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """One backend call, counted and timed as `role`, retried through an outage: of the set's
        model of that role, or of `model` (with request `parameters`)."""
        name = model or model_set.config.models[role]

        async def attempt() -> dict[str, npt.NDArray[Any]]:
            started = time.perf_counter()
            try:
                return await self.backend.infer(name, inputs, outputs, policy.limiter, parameters=parameters)
            finally:
                self._record(model_set, role, [time.perf_counter() - started])

        return await self._riding_through(policy, attempt)

    async def encode(
        self, model_set: ModelSet, samples: npt.NDArray[np.float32], policy: CallPolicy
    ) -> Encoded:
        """Preprocessor and encoder over one piece of 16 kHz audio."""
        pre = await self._infer(
            model_set,
            "preprocessor",
            {"waveforms": samples[None, :], "waveforms_lens": np.array([samples.size], np.int64)},
            ("features", "features_lens"),
            policy,
        )
        features_length = int(pre["features_lens"][0])
        enc = await self._infer(
            model_set,
            "encoder",
            {"audio_signal": pre["features"], "length": pre["features_lens"]},
            ("outputs", "encoded_lengths"),
            policy,
        )
        frames = enc["outputs"][0]
        length = int(enc["encoded_lengths"][0])
        if frames.ndim != 2 or length > frames.shape[1]:
            raise BackendError(
                f"encoder returned outputs of shape {enc['outputs'].shape} for length {length}"
            )
        return Encoded(frames, length, features_length)

    async def decode(
        self,
        model_set: ModelSet,
        decoder: GreedyDecoder,
        encoded: Encoded,
        offset: int,
        policy: CallPolicy,
    ) -> None:
        """Run `decoder` to its end; `encoded` holds absolute frames `offset`, `offset + 1`, ..."""
        span = Span(decoder, encoded.frames, offset)
        decode_model = self.decode_models.get(model_set.name)
        if decode_model is not None:
            await self._decode_in_triton(model_set, decode_model, span, policy)
            return
        if self.settings.decode_mode is DecodeMode.PER_CALL:
            while (request := span.request()) is not None:
                outputs = await self._infer(
                    model_set, "decoder_joint", joint_inputs([request]), JOINT_OUTPUTS, policy
                )
                receive_outputs([request], outputs)
                span.answered()
            return
        await self._riding_through(policy, lambda: self._decode_span(model_set, span, policy))

    async def decode_recording(
        self,
        model_set: ModelSet,
        samples: npt.NDArray[np.float32],
        decoder: GreedyDecoder,
        policy: CallPolicy,
    ) -> tuple[int, int]:
        """A whole recording in one call of the set's recording model (`recording_models`): Triton
        runs the preprocessor and encoder, and `decoder`, fresh, goes on to the encoder's last frame.
        Returns the feature and encoder frame counts."""
        if decoder.state.frame != 0 or decoder.emissions:
            raise ValueError("a recording is decoded from a fresh decoder")
        outputs = await self._infer(
            model_set,
            "recording",
            recording_request(samples, decoder),
            RECORDING_OUTPUTS,
            policy,
            model=self.recording_models[model_set.name],
            parameters={role: model_set.config.models[role] for role in RECORDING_MODELS},
        )
        features, encoded = read_lengths(outputs)
        decoder.stop = encoded
        self.calls["decoder_joint"] += apply_response(Span(decoder, NO_FRAMES), outputs)
        return features, encoded

    async def _decode_in_triton(
        self, model_set: ModelSet, decode_model: str, span: Span, policy: CallPolicy
    ) -> None:
        """The rest of `span` in one call of Triton's decode model; its `decoder_joint` calls are counted
        (not timed: they happen inside Triton)."""
        inputs = span_request(span)
        if inputs is None:
            return
        outputs = await self._infer(model_set, "decode", inputs, DECODE_OUTPUTS, policy, model=decode_model)
        self.calls["decoder_joint"] += apply_response(span, outputs)

    async def _decode_span(self, model_set: ModelSet, span: Span, policy: CallPolicy) -> None:
        """The rest of `span` in one go: batched by the set's scheduler, or in a thread of its own."""
        timings: list[float] = []
        try:
            scheduler = self._scheduler(model_set)
            if scheduler is not None:
                await scheduler.decode(span, policy.limiter, timings)
                return
            model = model_set.config.decoder_joint

            def run(inputs: dict[str, Array]) -> dict[str, Array]:
                started = time.perf_counter()
                try:
                    return self.backend.infer_blocking(model, inputs, JOINT_OUTPUTS)
                finally:
                    timings.append(time.perf_counter() - started)

            def work() -> None:
                while True:
                    trio.from_thread.check_cancelled()  # a cancelled request stops at the next call
                    if not joint_step([span], run):
                        return

            await self.backend.run_blocking(work, policy.limiter)
        finally:
            self._record(model_set, "decoder_joint", timings)
