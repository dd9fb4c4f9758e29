"""`amira model fetch NAME`: a real model from the Hugging Face Hub, checked, built, ready to serve.

A newcomer should not need NeMo to try a real model: onnx-asr publishes ONNX exports of the
Parakeet transducers in exactly the layout AMIRA's repository builder reads (`encoder-model.onnx`
with its external data, `decoder_joint-model.onnx`, `vocab.txt`, `config.json`). This command

1. resolves the revision to a commit (so every file comes from the same one) and checks that the
   repository has the files of that layout;
2. downloads them with `huggingface_hub` into its cache (`HF_HOME`; `HF_ENDPOINT` for a mirror,
   `HF_HUB_OFFLINE=1` to use only what is cached), which resumes a dropped connection from the
   bytes it has, keeps every finished file when a run fails anyway (so running the command again
   fetches only what is missing), and shows progress bars on a terminal;
3. checks every file against its checksum (the ETag the hub gave it: SHA-256 for large files, the
   git blob hash for small ones), and the model set against the contract of `models-and-decoding.md`
   with the server's own validation (tensor names, types and ranks, vocabulary, joint width), so a
   wrong file fails here and not at the first request;
4. builds a model repository (`production`: onnxruntime models, served by NVIDIA's Triton and by
   the embedded backend alike; `cpu`: the `nvidia-pytriton` wheel's Triton), hard-linking the large
   files from the cache, writes `model_sets.toml` with one entry, and prints the one command that
   serves it.

`huggingface_hub` is the `fetch` extra; it is imported only when a fetch runs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import attrs
import numpy as np

from amira.core.model_set import ModelSetConfig, ModelSetError, validate_model_set
from amira.core.tensors import ModelMetadata, TensorSpec
from amira.core.vocabulary import Vocabulary, VocabularyError
from amira.models import nemo_preprocessor, onnx_asr_preprocessor
from amira.tooling import triton_repository

ENCODER_FILE = "encoder-model.onnx"
DECODER_JOINT_FILE = "decoder_joint-model.onnx"
VOCABULARY_FILE = "vocab.txt"
CONFIG_FILE = "config.json"
REQUIRED_FILES = (ENCODER_FILE, DECODER_JOINT_FILE, VOCABULARY_FILE)
SHA256_ETAG = re.compile(r"[0-9a-f]{64}")
GIT_BLOB_ETAG = re.compile(r"[0-9a-f]{40}")
HASH_CHUNK = 8 * 1024 * 1024


@attrs.frozen
class KnownModel:
    """A model that `amira model fetch` knows by a short name."""

    name: str
    repo_id: str
    description: str


# onnx-asr's exports (its `model_repos`): NeMo RNN-T/TDT transducers in the layout above. The
# cache-aware streaming model joins this table when the server can serve it.
KNOWN_MODELS: dict[str, KnownModel] = {
    model.name: model
    for model in (
        KnownModel(
            "parakeet-tdt-0.6b-v2",
            "istupakov/parakeet-tdt-0.6b-v2-onnx",
            "NVIDIA Parakeet-TDT 0.6B v2, English (TDT, 1025 tokens; about 2.5 GB)",
        ),
        KnownModel(
            "parakeet-tdt-0.6b-v3",
            "istupakov/parakeet-tdt-0.6b-v3-onnx",
            "NVIDIA Parakeet-TDT 0.6B v3, 25 European languages (TDT; about 2.5 GB)",
        ),
        KnownModel(
            "parakeet-rnnt-0.6b",
            "istupakov/parakeet-rnnt-0.6b-onnx",
            "NVIDIA Parakeet-RNNT 0.6B, English (RNN-T; about 2.5 GB)",
        ),
    )
}
ALIASES = {f"nemo-{name}": name for name in KNOWN_MODELS}  # onnx-asr's own names


class FetchError(Exception):
    """The model could not be downloaded, does not fit the contract, or could not be built."""


@attrs.frozen
class FetchResult:
    """What a fetch produced: the repository, its model-sets file, and how to serve it."""

    repo_id: str
    commit: str | None
    repository: Path
    model_sets_file: Path
    set_name: str
    kind: str
    flavour: str

    @property
    def serve_command(self) -> str:
        return shlex.join(
            [
                "amira",
                "serve",
                "--model-repository",
                str(self.repository),
                "--model-sets",
                str(self.model_sets_file),
            ]
        )


def resolve_name(name: str) -> tuple[str, str]:
    """(Hub repository id, model-set name) of a known short name, onnx-asr name or `owner/repo` id."""
    name = ALIASES.get(name, name)
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].repo_id, name
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name, name.split("/", 1)[1].removesuffix("-onnx")
    known = ", ".join(KNOWN_MODELS)
    raise FetchError(f"unknown model {name!r}: use one of {known}, or a Hub repository id (owner/name)")


def _hub() -> ModuleType:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as exc:
        raise FetchError("downloading needs huggingface_hub: pip install 'amira[fetch]'") from exc
    return huggingface_hub


def file_digest(path: Path, etag: str) -> str:
    """The digest of `path` in the form of its ETag: SHA-256, or the git blob SHA-1 of small files."""
    if SHA256_ETAG.fullmatch(etag):
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checked(path: str) -> Path:
    """A downloaded file, once its checksum is verified (before anything parses it)."""
    verify_checksum(Path(path))
    return Path(path)


def verify_checksum(path: Path) -> None:
    """Check a downloaded file against the ETag it is stored under in the hub cache (the blob's name);
    a mismatch removes it, so that the next run downloads it again."""
    blob = path.resolve()
    etag = blob.name
    if not (SHA256_ETAG.fullmatch(etag) or GIT_BLOB_ETAG.fullmatch(etag)):
        return  # a local directory or an ETag that is no checksum: nothing to compare with
    actual = file_digest(blob, etag)
    if actual != etag:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise FetchError(
            f"{path.name} is corrupt: its checksum is {actual}, the hub says {etag}; "
            "it was removed, run the command again to download it afresh"
        )


def onnx_metadata(path: Path, name: str) -> ModelMetadata:
    """What the server's validation reads from a backend, read from the ONNX file (no weights)."""
    import onnx  # here, not at the top: `amira serve` imports this module's parser

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {tensor.name for tensor in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim
        )
        return TensorSpec(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims)

    inputs = tuple(spec(v) for v in graph.input if v.name not in initialisers)
    return ModelMetadata(name, inputs, tuple(spec(v) for v in graph.output))


def external_data_files(path: Path) -> list[str]:
    """Names of the external-data files an ONNX file refers to (Parakeet's encoder has one)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return sorted(names)


def verify_contract(export_dir: Path, set_name: str) -> tuple[str, int]:
    """Validate the export as the server will: returns its kind (`rnnt`/`tdt`) and feature size."""
    from google.protobuf.message import DecodeError

    try:
        feature_size = triton_repository.nemo_feature_size(export_dir)
        if feature_size not in (80, 128):
            raise FetchError(
                f"the encoder wants {feature_size} features; NeMo's preprocessors make 80 or 128"
            )
        vocabulary_path = export_dir / VOCABULARY_FILE
        vocabulary = Vocabulary.parse(vocabulary_path.read_text(encoding="utf-8"), str(vocabulary_path))
        metadata = {
            "preprocessor": onnx_metadata(
                onnx_asr_preprocessor(nemo_preprocessor(feature_size)), "preprocessor"
            ),
            "encoder": onnx_metadata(export_dir / ENCODER_FILE, "encoder"),
            "decoder_joint": onnx_metadata(export_dir / DECODER_JOINT_FILE, "decoder_joint"),
        }
        model_set = validate_model_set(ModelSetConfig(name=set_name), vocabulary, metadata)
    except (ModelSetError, VocabularyError, ValueError, OSError, DecodeError) as exc:
        raise FetchError(f"the downloaded model does not fit AMIRA's model contract: {exc}") from exc
    return model_set.kind, feature_size


def download_export(repo_id: str, revision: str) -> tuple[Path, str, list[str]]:
    """Download (or find in the cache) the export's files: their snapshot directory, the commit and
    the names of the files that were fetched."""
    hub = _hub()
    commit: str | None = None
    offline = hub.constants.HF_HUB_OFFLINE
    try:
        if not offline:
            info = hub.HfApi().model_info(repo_id, revision=revision)
            commit = info.sha
            present = {sibling.rfilename for sibling in info.siblings or ()}
            missing = [name for name in REQUIRED_FILES if name not in present]
            if missing:
                raise FetchError(
                    f"{repo_id} is not a NeMo RNN-T/TDT ONNX export in onnx-asr's layout: "
                    f"it has no {', '.join(missing)}"
                )
            wanted = [name for name in (CONFIG_FILE, *REQUIRED_FILES) if name in present]
        else:
            wanted = list(REQUIRED_FILES)
        # By the revision's name, so that the cache records it for offline use; files that moved on
        # to another commit meanwhile would land in another snapshot, which is checked below.
        paths = {name: checked(hub.hf_hub_download(repo_id, name, revision=revision)) for name in wanted}
        for model in (ENCODER_FILE, DECODER_JOINT_FILE):
            for data in external_data_files(paths[model]):
                paths[data] = checked(hub.hf_hub_download(repo_id, data, revision=revision))
    except FetchError:
        raise
    except hub.errors.LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else f"{hub.constants.ENDPOINT} cannot be reached"
        raise FetchError(
            f"{repo_id} ({revision}) is not in the cache ({hub.constants.HF_HUB_CACHE}) and {why}"
        ) from exc
    except hub.errors.RepositoryNotFoundError as exc:
        raise FetchError(f"no repository {repo_id} on {hub.constants.ENDPOINT} (or it is gated)") from exc
    except hub.errors.RevisionNotFoundError as exc:
        raise FetchError(f"{repo_id} has no revision {revision!r}") from exc
    except hub.errors.EntryNotFoundError as exc:
        raise FetchError(f"{repo_id} lacks a file its ONNX models refer to: {exc}") from exc
    except (hub.errors.HfHubHTTPError, OSError) as exc:
        raise FetchError(
            f"downloading {repo_id} from {hub.constants.ENDPOINT} failed: {exc}. "
            "Run the same command again: the files it finished are kept"
        ) from exc
    directories = {path.parent for path in paths.values()}
    if len(directories) != 1 or (commit and directories != {paths[ENCODER_FILE].parent.with_name(commit)}):
        raise FetchError(f"{repo_id} changed while it was downloaded ({revision}): run the command again")
    snapshot = directories.pop()
    return snapshot, commit or snapshot.name, sorted(paths)  # offline: the snapshot names the commit


def stage_export(snapshot: Path, names: Sequence[str], stage: Path) -> None:
    """Real files (hard links to the cache's blobs where the file system allows, else copies) in
    place of the snapshot's symbolic links: a hard link made to a symbolic link is one to the link
    itself, which would dangle in the repository."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in names:
        blob = (snapshot / name).resolve()
        try:
            os.link(blob, stage / name)
        except OSError:
            shutil.copy2(blob, stage / name)


def model_sets_entry(result_name: str, repo_id: str, commit: str | None, kind: str) -> str:
    """The `model_sets.toml` of a fetched repository: one set, named after the model."""
    origin = f"{repo_id} at {commit}" if commit else repo_id
    return (
        f"# Written by `amira model fetch`: {origin} ({kind}).\n"
        f"[model_sets.{_toml_key(result_name)}]\n"
        'preprocessor = "preprocessor"\n'
        'encoder = "encoder"\n'
        'decoder_joint = "decoder_joint"\n'
        'vocabulary = "vocab.txt"\n'
    )


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def fetch_model(
    name: str,
    output: Path,
    *,
    revision: str = "main",
    flavour: triton_repository.Flavour = "production",
    set_name: str | None = None,
    instances: int | None = None,
    gpus: Sequence[int] | None = None,
) -> FetchResult:
    """Download, verify and build `name` into the model repository `output`."""
    repo_id, default_set = resolve_name(name)
    set_name = set_name or default_set
    if not re.fullmatch(r"[\w.-]+", set_name):
        raise FetchError(
            f"model-set name {set_name!r}: use letters, digits, '.', '_' and '-' (it goes in URLs)"
        )
    export_dir, commit, names = download_export(repo_id, revision)
    kind, feature_size = verify_contract(export_dir, set_name)
    output = Path(output).absolute()
    stage = output / ".fetch-staging"
    try:
        stage_export(export_dir, names, stage)
        triton_repository.build_repository_from_nemo_export(
            stage, output, flavour, feature_size=feature_size, instance_count=instances, gpus=gpus
        )
    except (OSError, ValueError) as exc:
        raise FetchError(f"building the repository in {output} failed: {exc}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    sets_file = output / "model_sets.toml"
    sets_file.write_text(model_sets_entry(set_name, repo_id, commit, kind), encoding="utf-8")
    return FetchResult(repo_id, commit, output, sets_file, set_name, kind, flavour)


# ---------------------------------------------------------------------------------------------------
# The command line: `amira model fetch`


def add_model_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add `amira model fetch` to the `amira` command; returns the `fetch` parser."""
    model: argparse.ArgumentParser = commands.add_parser(
        "model", help="real models from the Hugging Face Hub"
    )
    model_commands = model.add_subparsers(dest="model_command", required=True)
    known = "; ".join(f"{m.name}: {m.description}" for m in KNOWN_MODELS.values())
    fetch = model_commands.add_parser(
        "fetch",
        help="download a model, verify it and build a repository ready to serve",
        description="Download a NeMo RNN-T/TDT ONNX export (onnx-asr's layout) with huggingface_hub, "
        "verify its checksums and the model contract, build a model repository with a model-sets "
        f"entry, and print the command that serves it. Known models: {known}. Honours HF_HOME, "
        "HF_ENDPOINT and HF_HUB_OFFLINE; a dropped connection resumes, and after a failed run the "
        "same command fetches only the files that are still missing.",
    )
    fetch.add_argument("name", help="a known model, onnx-asr's name for it, or a Hub repository id")
    fetch.add_argument("--output", type=Path, help="repository directory (default: models/NAME)")
    fetch.add_argument("--revision", default="main", help="branch, tag or commit (default: %(default)s)")
    fetch.add_argument(
        "--flavour",
        choices=["production", "cpu"],
        default="production",
        help="production: onnxruntime models for NVIDIA's Triton and the embedded backend (default); "
        "cpu: Python-backend models for the nvidia-pytriton wheel's Triton",
    )
    fetch.add_argument("--set-name", help="model-set name in URLs (default: the model's name)")
    fetch.add_argument("--instances", type=int, help="Triton instances per model")
    fetch.add_argument("--gpus", help="GPU ids of the Triton instance groups, e.g. 0,1")
    return fetch


def run_model_command(args: argparse.Namespace) -> int:
    """`amira model fetch`: prints the serve command on stdout, everything else on stderr."""
    try:
        gpus = [int(part) for part in args.gpus.split(",")] if args.gpus else None
    except ValueError:
        print(f"amira: --gpus: expected GPU ids like 0,1, got {args.gpus!r}", file=sys.stderr)
        return 2
    if not args.verbose:  # one line per HTTP request is noise next to the progress bars
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if not sys.stderr.isatty():
            _hub().utils.disable_progress_bars()  # bars on a terminal only, not in logs
        repo_id, default_set = resolve_name(args.name)
        output = args.output or Path("models") / (args.set_name or default_set)
        print(f"amira: fetching {repo_id} ({args.revision}) into {output}", file=sys.stderr, flush=True)
        result = fetch_model(
            args.name,
            output,
            revision=args.revision,
            flavour=args.flavour,
            set_name=args.set_name,
            instances=args.instances,
            gpus=gpus,
        )
    except FetchError as exc:
        print(f"amira: {exc}", file=sys.stderr)
        return 1
    commit = f" at {result.commit[:12]}" if result.commit else ""
    print(
        f"amira: {result.repo_id}{commit} verified ({result.kind}); {result.flavour} repository in "
        f"{result.repository}, model set {result.set_name!r} in {result.model_sets_file}. Serve it with:",
        file=sys.stderr,
    )
    print(result.serve_command, flush=True)
    if result.flavour == "production":
        print(
            f"amira: or mount {result.repository} as /models in NVIDIA's Triton image and run AMIRA with "
            "TRITON_ENDPOINT and MODEL_SETS_FILE=/models/model_sets.toml (README, 'Production')",
            file=sys.stderr,
        )
    return 0
