"""Write a Triton model repository that a Triton server can load, from AMIRA's source layout.

Source layout (see `amira.models`): `<src>/<model>/1/model.onnx` or `<src>/<model>/1/model.source`
(`onnx_asr:nemo128`), `<src>/vocab.txt`, optionally `<src>/model_sets.toml`; a `config.pbtxt` in the
source is ignored, since every config is written afresh from the ONNX file's own tensors.

Two flavours:

* `cpu`: every model is a Python-backend model (`backend: "python"`) whose `1/model.py` (a copy of
  `amira/tooling/triton_python_model.py`) runs `1/model.onnx` with onnxruntime, `KIND_CPU`
  instances. This is what the Triton in the `nvidia-pytriton` wheel can serve: it carries no
  onnxruntime backend.
* `production`: `platform: "onnxruntime_onnx"`, `KIND_GPU` instances, for a real Triton image.

A **cache-aware encoder** (inputs `cache_last_channel`, `cache_last_time`, `cache_last_channel_len`;
`amira.core.cache_aware`) keeps its caches inside Triton, per stream, under the sequence batcher, so
that a call carries only the chunk's features (`keep_caches=False` writes a plain model instead, whose
caches travel with every call):

* `production`: implicit state (`sequence_batching { state [...] }`, zeros at the sequence start,
  each `..._next` output fed back as the next call's input), direct strategy, `max_batch_size: 0`
  (NeMo's caches put the batch second, which Triton's state batching cannot stack), so each model
  instance serves one stream at a time;
* `cpu`: the wheel's Python backend cannot do implicit state, so a Python model
  (`amira/tooling/triton_stateful_model.py`) keeps the caches itself, keyed by the sequence id, with
  the oldest strategy (`max_batch_size: 8`, any number of streams per instance); the chunk length
  input then has a batch axis, `[B, 1]`.

Both flavours get a **decode model** `<decoder_joint>_decode` next to every `decoder_joint` (a model
whose inputs are `targets` and `input_states_1`): a Python-backend model (`1/model.py`, a copy of
`amira/tooling/triton_decode_model.py`, with a copy of `amira/core` beside it) that decodes whole
spans next to `decoder_joint`, with dynamic batching (`amira.core.decode_model`); and a
**recording model** `<decoder_joint>_recording`, the same Python model under a config that takes a
whole recording's samples, runs the preprocessor and encoder its request names through BLS, and
decodes all their frames. It needs numpy
and attrs in Triton's Python (`pip install attrs` in a stock Triton image). In production it calls
`decoder_joint` through BLS (which runs it where its own config says: on the GPU); in the `cpu`
flavour it runs a copy of `decoder_joint`'s ONNX file itself with onnxruntime, the way the `cpu`
flavour's `decoder_joint` model does, saving two trips through Triton per emitted token.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs
import onnx

from amira.models import model_file

Flavour = Literal["cpu", "production"]
FLAVOURS: tuple[str, ...] = ("cpu", "production")

# ONNX TensorProto element types -> Triton config data types
_ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}

NEMO_ENCODER_FILE = "encoder-model.onnx"
NEMO_DECODER_JOINT_FILE = "decoder_joint-model.onnx"
JOINT_COPY = "decoder_joint.onnx"  # the CPU flavour's decode model runs this copy itself


@attrs.frozen
class ConfigTensor:
    """One input or output as it goes into `config.pbtxt`; `-1` marks a dynamic dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_properties(path: Path) -> dict[str, str]:
    """An ONNX file's `metadata_props`: a cache-aware encoder's chunk and pre-encode cache sizes go
    into its config's parameters, where AMIRA reads them through Triton."""
    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}


def onnx_tensors(path: Path) -> tuple[tuple[ConfigTensor, ...], tuple[ConfigTensor, ...]]:
    """The graph inputs (initialisers excluded) and outputs of an ONNX file, without loading weights."""
    return model_tensors(onnx.load(str(path), load_external_data=False), str(path))


def model_tensors(
    model: onnx.ModelProto, source: str = "model"
) -> tuple[tuple[ConfigTensor, ...], tuple[ConfigTensor, ...]]:
    """The graph inputs (initialisers excluded) and outputs of an ONNX model, as config tensors."""
    graph = model.graph
    initialisers = {init.name for init in graph.initializer}

    def convert(value_info: onnx.ValueInfoProto) -> ConfigTensor:
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type not in _ONNX_TO_TRITON:
            raise ValueError(
                f"{source}: tensor {value_info.name!r} has unsupported type {tensor_type.elem_type}"
            )
        dims = tuple(
            dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
            for dim in tensor_type.shape.dim
        )
        return ConfigTensor(value_info.name, _ONNX_TO_TRITON[tensor_type.elem_type], dims)

    inputs = tuple(convert(vi) for vi in graph.input if vi.name not in initialisers)
    outputs = tuple(convert(vi) for vi in graph.output)
    return inputs, outputs


def _tensor_block(kind: str, tensors: Sequence[ConfigTensor]) -> str:
    entries = []
    for tensor in tensors:
        lines = [f'    name: "{tensor.name}"', f"    data_type: {tensor.data_type}"]
        if tensor.dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]")
        else:  # a scalar: Triton wants at least one dimension
            lines.append("    dims: [ 1 ]")
            lines.append("    reshape: { shape: [ ] }")
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


CACHE_INPUTS = ("cache_last_channel", "cache_last_time", "cache_last_channel_len")
SEQUENCE_IDLE_MICROSECONDS = (
    120_000_000  # a stream silent this long loses its caches (streams time out sooner)
)
STATEFUL_MAX_BATCH = 8
SEQUENCE_STATE_PARAMETER = "sequence_state"  # as `amira.backends.triton` reads it


def is_cache_aware_encoder(inputs: Sequence[ConfigTensor]) -> bool:
    return "cache_last_channel" in {tensor.name for tensor in inputs}


def _cache_next(cache: str, outputs: Sequence[ConfigTensor]) -> ConfigTensor:
    names = (f"{cache}_next", cache.replace("_len", "_next_len"))
    found = next((tensor for tensor in outputs if tensor.name in names), None)
    if found is None:
        raise ValueError(f"cache-aware encoder: no output {names[0]!r} for its input {cache!r}")
    return found


def _sequence_block(caches: Sequence[ConfigTensor], outputs: Sequence[ConfigTensor], flavour: Flavour) -> str:
    """`sequence_batching`: implicit state of every cache (production), or the oldest strategy for the
    stateful Python model (cpu)."""
    if flavour == "cpu":
        return (
            "sequence_batching {\n"
            f"  max_sequence_idle_microseconds: {SEQUENCE_IDLE_MICROSECONDS}\n"
            "  oldest {\n    max_candidate_sequences: 1024\n    max_queue_delay_microseconds: 0\n  }\n}\n"
        )
    states = []
    for cache in caches:
        dims = ", ".join(str(d if d > 0 else 1) for d in cache.dims)  # one stream's: batch 1
        states.append(
            "    {\n"
            f'      input_name: "{cache.name}"\n'
            f'      output_name: "{_cache_next(cache.name, outputs).name}"\n'
            f"      data_type: {cache.data_type}\n"
            f"      dims: [ {dims} ]\n"
            "      initial_state: {\n"
            f"        data_type: {cache.data_type}\n"
            f"        dims: [ {dims} ]\n"
            "        zero_data: true\n"
            '        name: "zeros"\n'
            "      }\n"
            "    }"
        )
    return (
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {SEQUENCE_IDLE_MICROSECONDS}\n"
        "  direct { }\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n}\n"
    )


def config_pbtxt(
    name: str,
    inputs: Sequence[ConfigTensor],
    outputs: Sequence[ConfigTensor],
    flavour: Flavour,
    *,
    instance_count: int = 1,
    gpus: Sequence[int] | None = None,
    parameters: Mapping[str, str] | None = None,
    keep_caches: bool = True,
) -> str:
    """The text of one model's `config.pbtxt` (`max_batch_size: 0`: dims include the batch dim; a
    cache-aware encoder that keeps its caches: see the module docstring)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be at least 1, got {instance_count}")
    parts = [f'name: "{name}"\n']
    if flavour == "cpu":
        parts.append('backend: "python"\n')
    else:
        parts.append('platform: "onnxruntime_onnx"\n')
    sequence = ""
    if keep_caches and is_cache_aware_encoder(inputs):
        caches = [tensor for tensor in inputs if tensor.name in CACHE_INPUTS]
        nexts = {_cache_next(cache.name, outputs).name for cache in caches}
        sequence = _sequence_block(caches, outputs, flavour)
        inputs = [tensor for tensor in inputs if tensor.name not in CACHE_INPUTS]
        outputs = [tensor for tensor in outputs if tensor.name not in nexts]
        if flavour == "cpu":  # batched by the sequence batcher: dims without the batch axis
            inputs = [attrs.evolve(tensor, dims=tensor.dims[1:]) for tensor in inputs]
            outputs = [attrs.evolve(tensor, dims=tensor.dims[1:]) for tensor in outputs]
            parameters = {**(parameters or {}), SEQUENCE_STATE_PARAMETER: ",".join(c.name for c in caches)}
    parts.append(f"max_batch_size: {STATEFUL_MAX_BATCH if sequence and flavour == 'cpu' else 0}\n")
    parts.append(_tensor_block("input", inputs))
    parts.append(_tensor_block("output", outputs))
    parts.append(sequence)
    if flavour == "cpu":
        group = f"  {{\n    kind: KIND_CPU\n    count: {instance_count}\n  }}"
    else:
        gpu_line = f"\n    gpus: [ {', '.join(str(g) for g in gpus)} ]" if gpus else ""
        group = f"  {{\n    kind: KIND_GPU\n    count: {instance_count}{gpu_line}\n  }}"
    parts.append(f"instance_group [\n{group}\n]\n")
    for key, value in (parameters or {}).items():
        value_text = json.dumps(str(value))
        parts.append(
            f"parameters {{\n  key: {json.dumps(key)}\n  value: {{ string_value: {value_text} }}\n}}\n"
        )
    return "".join(parts)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` where the file system allows it (model files are large), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _external_data_files(path: Path) -> list[str]:
    """Relative names of the external-data files an ONNX file refers to (large encoders have one)."""
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(names)


def python_model_source() -> Path:
    """The generic Python-backend model that CPU-flavour repositories use as `1/model.py`."""
    return Path(__file__).with_name("triton_python_model.py")


def stateful_model_source() -> Path:
    """The Python-backend model that keeps a cache-aware encoder's caches per sequence (cpu flavour)."""
    return Path(__file__).with_name("triton_stateful_model.py")


DECODE_MAX_BATCH = 64
DECODE_QUEUE_DELAY_US = 500


def decode_model_source() -> Path:
    """The Python-backend decode model that every repository gets beside each `decoder_joint`."""
    return Path(__file__).with_name("triton_decode_model.py")


def is_decoder_joint(inputs: Sequence[ConfigTensor]) -> bool:
    return {"targets", "input_states_1", "encoder_outputs"} <= {tensor.name for tensor in inputs}


def decode_config_pbtxt(
    name: str,
    decoder_joint: str,
    inputs: Sequence[ConfigTensor],
    instance_count: int,
    joint_onnx: str | None = None,
    recordings: bool = False,
) -> str:
    """`config.pbtxt` of the decode model of `decoder_joint` (whose ONNX inputs are `inputs`), or with
    `recordings` of its recording model (a recording's samples in place of encoder frames, and
    its lengths out); `joint_onnx`: its copy of that model's ONNX file, run in its own process."""
    tensors = {tensor.name: tensor.dims for tensor in inputs}
    dim = tensors["encoder_outputs"][1]
    layers, hidden = tensors["input_states_1"][0], tensors["input_states_1"][2]

    def block(direction: str, entries: Sequence[tuple[str, str, Sequence[int], Sequence[str]]]) -> str:
        items = []
        for tensor, data_type, dims, flags in entries:
            lines = [
                f'    name: "{tensor}"',
                f"    data_type: {data_type}",
                f"    dims: [ {', '.join(map(str, dims))} ]",
                *(f"    {flag}: true" for flag in flags),
            ]
            items.append("  {\n" + "\n".join(lines) + "\n  }")
        return f"{direction} [\n" + ",\n".join(items) + "\n]\n"

    ragged: tuple[str, ...] = ("allow_ragged_batch",)
    state = [layers, hidden]
    frames_in: list[tuple[str, str, list[int], tuple[str, ...]]] = [
        ("encoder_outputs", "TYPE_FP32", [dim, -1], ragged)
    ]
    if recordings:  # amira.core.decode_model
        frames_in = [("waveforms", "TYPE_FP32", [-1], ragged), ("waveforms_lens", "TYPE_INT64", [1], ())]
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {DECODE_MAX_BATCH}\n'
        + block(
            "input",
            [
                *frames_in,
                ("states_1", "TYPE_FP32", state, ()),
                ("states_2", "TYPE_FP32", state, ()),
                ("state", "TYPE_INT32", [2], ()),
                ("spec", "TYPE_INT32", [-1], ragged),
            ],
        )
        + block(
            "output",
            [
                ("tokens", "TYPE_INT32", [-1], ()),
                ("token_frames", "TYPE_INT32", [-1], ()),
                ("token_probabilities", "TYPE_FP64", [-1], ()),
                ("blank_probabilities", "TYPE_FP64", [-1], ()),
                ("token_durations", "TYPE_INT32", [-1], ()),
                ("states_1", "TYPE_FP32", state, ()),
                ("states_2", "TYPE_FP32", state, ()),
                ("state", "TYPE_INT32", [3], ()),
                ("calls", "TYPE_INT32", [1], ()),
                *([("lengths", "TYPE_INT32", [2], ())] if recordings else []),
            ],
        )
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {DECODE_QUEUE_DELAY_US}\n}}\n"
        + f"instance_group [\n  {{\n    kind: KIND_CPU\n    count: {instance_count}\n  }}\n]\n"
        + 'parameters {\n  key: "decoder_joint"\n'
        + f"  value: {{ string_value: {json.dumps(decoder_joint)} }}\n}}\n"
        + (
            ""
            if joint_onnx is None
            else 'parameters {\n  key: "decoder_joint_onnx"\n'
            + f"  value: {{ string_value: {json.dumps(joint_onnx)} }}\n}}\n"
        )
    )


def write_decode_model(
    joint_onnx: Path, dest: Path, decoder_joint: str, instance_count: int, in_process: bool
) -> list[Path]:
    """Write `<dest>/<decoder_joint>_decode/` and `<dest>/<decoder_joint>_recording/`: each a config,
    `1/model.py` and the copy of `amira/core`; `in_process` (the CPU flavour): also
    `decoder_joint`'s ONNX file, which the model then runs itself instead of calling
    `decoder_joint` through BLS."""
    from amira.core.decode_model import decode_model_name, recording_model_name

    inputs, _ = onnx_tensors(joint_onnx)
    written = []
    for name, recordings in (
        (decode_model_name(decoder_joint), False),
        (recording_model_name(decoder_joint), True),
    ):
        version_dir = dest / name / "1"
        core = version_dir / "amira" / "core"
        if core.exists():
            shutil.rmtree(core)
        core.mkdir(parents=True)
        (version_dir / "amira" / "__init__.py").write_text(
            '"""AMIRA\'s sans-IO core, copied for the decode model."""\n'
        )
        for module in sorted(Path(__file__).parents[1].joinpath("core").glob("*.py")):
            shutil.copyfile(module, core / module.name)
        shutil.copyfile(decode_model_source(), version_dir / "model.py")
        joint_copy = None
        if in_process:
            joint_copy = JOINT_COPY
            _link_or_copy(joint_onnx, version_dir / joint_copy)
            for data_name in _external_data_files(joint_onnx):
                _link_or_copy(joint_onnx.parent / data_name, version_dir / data_name)
        text = decode_config_pbtxt(name, decoder_joint, inputs, instance_count, joint_copy, recordings)
        (dest / name / "config.pbtxt").write_text(text, encoding="utf-8")
        written.append(dest / name)
    return written


def source_models(source_repo: Path) -> list[str]:
    """Names of the models in a source repository: directories with `1/model.onnx` or `1/model.source`."""
    return sorted(
        entry.name
        for entry in source_repo.iterdir()
        if entry.is_dir()
        and ((entry / "1" / "model.onnx").is_file() or (entry / "1" / "model.source").is_file())
    )


def _per_model(value: int | Mapping[str, int] | None, model: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, Mapping):
        return int(value.get(model, default))
    return int(value)


def write_model(
    onnx_path: Path,
    dest: Path,
    name: str,
    flavour: Flavour,
    *,
    instance_count: int | None = None,
    gpus: Sequence[int] | None = None,
    parameters: Mapping[str, str] | None = None,
    decode_model: bool = True,
    decode_in_process: bool | None = None,
    keep_caches: bool = True,
) -> Path:
    """Write `<dest>/<name>/` (config, `1/model.onnx` with its external data, `1/model.py` for cpu);
    for a `decoder_joint`, its decode model too (unless `decode_model` is False), which runs its own
    copy of the joint if `decode_in_process` (default: the cpu flavour) and calls `<name>` through
    BLS otherwise; a cache-aware encoder keeps its caches in Triton unless `keep_caches` is False."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    model_dir = dest / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    _link_or_copy(onnx_path, version_dir / "model.onnx")
    for data_name in _external_data_files(onnx_path):
        _link_or_copy(onnx_path.parent / data_name, version_dir / data_name)
    inputs, outputs = onnx_tensors(onnx_path)
    if flavour == "cpu":
        stateful = keep_caches and is_cache_aware_encoder(inputs)
        source = stateful_model_source() if stateful else python_model_source()
        shutil.copyfile(source, version_dir / "model.py")
    count = instance_count if instance_count is not None else (2 if flavour == "cpu" else 1)
    text = config_pbtxt(
        name,
        inputs,
        outputs,
        flavour,
        instance_count=count,
        gpus=gpus,
        parameters={**onnx_properties(onnx_path), **(parameters or {})},
        keep_caches=keep_caches,
    )
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    if decode_model and is_decoder_joint(inputs):
        in_process = flavour == "cpu" if decode_in_process is None else decode_in_process
        write_decode_model(onnx_path, dest, name, 2 if flavour == "cpu" else 1, in_process=in_process)
    return model_dir


def build_repository(
    source_repo: Path,
    dest: Path,
    flavour: Flavour = "cpu",
    *,
    models: Iterable[str] | None = None,
    instance_count: int | Mapping[str, int] | None = None,
    gpus: Sequence[int] | None = None,
    parameters: Mapping[str, Mapping[str, str]] | None = None,
    clean: bool = False,
    keep_caches: bool = True,
) -> Path:
    """Write a ready Triton repository at `dest` from the source repository `source_repo`.

    `instance_count` is one count for every model or a per-model mapping (default: 2 per model on
    the CPU, 1 per GPU model); `gpus` lists the GPU ids of production instance groups (default: all);
    `parameters` maps a model name to its string parameters (e.g. `{"slow": {"delay_seconds": "2"}}`
    for a deliberately slow CPU model). `clean` removes `dest` first; `keep_caches` False makes cache-aware
    encoders plain models whose caches travel with every call (to measure what that costs). Returns `dest`.
    """
    source_repo = Path(source_repo)
    dest = Path(dest)
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    if not source_repo.is_dir():
        raise FileNotFoundError(f"source repository {source_repo} is not a directory")
    if clean and dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = list(models) if models is not None else source_models(source_repo)
    default_count = 2 if flavour == "cpu" else 1
    for name in names:
        write_model(
            model_file(source_repo, name),
            dest,
            name,
            flavour,
            instance_count=_per_model(instance_count, name, default_count),
            gpus=gpus,
            parameters=(parameters or {}).get(name),
            keep_caches=keep_caches,
        )
    for extra in source_repo.iterdir():  # vocabularies, model_sets.toml, the model card
        if extra.is_file():
            shutil.copyfile(extra, dest / extra.name)
    return dest


def nemo_feature_size(export_dir: Path) -> int:
    """Feature size (128 or 80) of a NeMo ONNX export: the encoder's input channel count, or `config.json`."""
    inputs, _ = onnx_tensors(export_dir / NEMO_ENCODER_FILE)
    if inputs and len(inputs[0].dims) == 3 and inputs[0].dims[1] > 0:
        return inputs[0].dims[1]
    config_path = export_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "features_size" in config:
            return int(config["features_size"])
    raise ValueError(f"{export_dir}: cannot tell the feature size; pass feature_size=128 or 80")


def build_repository_from_nemo_export(
    export_dir: Path,
    dest: Path,
    flavour: Flavour = "production",
    *,
    feature_size: int | None = None,
    preprocessor_name: str = "preprocessor",
    encoder_name: str = "encoder",
    decoder_joint_name: str = "decoder_joint",
    instance_count: int | Mapping[str, int] | None = None,
    gpus: Sequence[int] | None = None,
    clean: bool = False,
) -> Path:
    """Write a Triton repository from a NeMo RNN-T/TDT ONNX export (as onnx-asr loads it).

    `export_dir` holds `encoder-model.onnx` (with its external data file, if any),
    `decoder_joint-model.onnx` and `vocab.txt`; the preprocessor is onnx-asr's `nemo<feature_size>_conv`,
    or for a cache-aware encoder (NeMo's export with `cache_support`) the streaming preprocessor made
    from it (`amira.tooling.streaming_preprocessor`); such a set needs `chunk_size` and
    `pre_encode_cache_size` in its model-sets table unless the encoder's metadata has them.
    """
    from amira.models import nemo_preprocessor, onnx_asr_preprocessor
    from amira.tooling.streaming_preprocessor import write_streaming_preprocessor

    export_dir = Path(export_dir)
    dest = Path(dest)
    for required in (NEMO_ENCODER_FILE, NEMO_DECODER_JOINT_FILE, "vocab.txt"):
        if not (export_dir / required).is_file():
            raise FileNotFoundError(f"{export_dir / required} is missing")
    size = feature_size if feature_size is not None else nemo_feature_size(export_dir)
    if size not in (128, 80):
        raise ValueError(f"feature size must be 128 or 80, got {size}")
    if clean and dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    default_count = 2 if flavour == "cpu" else 1
    preprocessor = onnx_asr_preprocessor(nemo_preprocessor(size))
    if is_cache_aware_encoder(onnx_tensors(export_dir / NEMO_ENCODER_FILE)[0]):
        preprocessor = dest / f".{preprocessor_name}-streaming.onnx"
        write_streaming_preprocessor(preprocessor, size)
    sources = {
        preprocessor_name: preprocessor,
        encoder_name: export_dir / NEMO_ENCODER_FILE,
        decoder_joint_name: export_dir / NEMO_DECODER_JOINT_FILE,
    }
    for name, path in sources.items():
        write_model(
            path,
            dest,
            name,
            flavour,
            instance_count=_per_model(instance_count, name, default_count),
            gpus=gpus,
        )
    shutil.copyfile(export_dir / "vocab.txt", dest / "vocab.txt")
    if preprocessor.parent == dest:
        preprocessor.unlink()
    return dest
