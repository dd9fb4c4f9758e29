"""Small random-weight NeMo-layout transducer models, so that every test runs without real weights.

The graphs follow the NeMo ONNX export contract exactly (tensor names, dtypes, ranks, 8x
subsampling, TDT/RNN-T joint widths), are built with `onnx.helper` and numpy only, and are a pure
function of the seed: the same seed writes the same bytes. The weights are random, but a few gains
and biases are set so that greedy decoding of real speech looks like a transducer at work: about one
token every few frames, sometimes several on one frame, and every TDT duration in use.

    python -m amira.tooling.test_models                  # rewrite the shipped repository
    python -m amira.tooling.test_models --output DIR --parakeet-shaped
    python -m amira.tooling.test_models --output DIR --check tests/data/librivox/*.wav

Beside the offline sets, two cache-aware sets (NeMo's cache-aware export contract,
`amira.core.cache_aware`): `cache_aware` (caches [L, B, ...], RNN-T) and `cache_aware_batch_first`
(caches [B, L, ...], TDT), on the streaming preprocessor (`preprocessor_streaming`).
"""

from __future__ import annotations

import argparse
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from amira.models import model_file, shipped_repository
from amira.tooling.streaming_preprocessor import streaming_preprocessor
from amira.tooling.triton_repository import config_pbtxt, model_tensors, onnx_tensors

DEFAULT_SEED = 20240611
DEFAULT_REPOSITORY = shipped_repository()
OPSET = 17
IR_VERSION = 8
# The ONNX `producer_name`: the generator's module path when the shipped models were first written;
# kept as is so that they regenerate byte for byte.
PRODUCER = "amira.models.generate"
PREPROCESSOR_SOURCE = "onnx_asr:nemo128_conv"
BLANK = "<blk>"

TEST_VOCABULARY = "vocab_test.txt"
TEST_MODEL_SETS_TOML = """\
[model_sets.tdt]
preprocessor = "preprocessor"
encoder = "encoder_tdt"
decoder_joint = "decoder_joint_tdt"
vocabulary = "vocab_test.txt"

[model_sets.rnnt]
preprocessor = "preprocessor"
encoder = "encoder_rnnt"
decoder_joint = "decoder_joint_rnnt"
vocabulary = "vocab_test.txt"

[model_sets.cache_aware]
preprocessor = "preprocessor_streaming"
encoder = "encoder_cache_aware"
decoder_joint = "decoder_joint_rnnt"
vocabulary = "vocab_test.txt"

[model_sets.cache_aware_batch_first]
preprocessor = "preprocessor_streaming"
encoder = "encoder_cache_aware_batch_first"
decoder_joint = "decoder_joint_tdt"
vocabulary = "vocab_test.txt"
"""

# The trained demo transducer (`python -m training`, see MODEL_CARD.md) is the repository's default
# model set; it is not generated here, and it is listed in `model_sets.toml` whenever it is present.
TRAINED_FILES = (
    "encoder",
    "decoder_joint",
    "encoder_streaming",
    "decoder_joint_streaming",
    "vocab.txt",
    "MODEL_CARD.md",
)
DEFAULT_MODEL_SET_TOML = """\
[model_sets.default]
preprocessor = "preprocessor"
encoder = "encoder"
decoder_joint = "decoder_joint"
vocabulary = "vocab.txt"

"""
# The trained streaming demo transducer (`python -m training --streaming`), listed when present.
STREAMING_MODEL_SET_TOML = """\
[model_sets.default-streaming]
preprocessor = "preprocessor_streaming"
encoder = "encoder_streaming"
decoder_joint = "decoder_joint_streaming"
vocabulary = "vocab.txt"

"""


@dataclass(frozen=True)
class ModelSizes:
    """Dimensions of a generated model set; `vocab_size` counts the blank."""

    features: int = 128
    conv_channels: int = 64
    d_model: int = 128
    pred_hidden: int = 64
    pred_layers: int = 2
    joint_hidden: int = 128
    vocab_size: int = 129
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)


SMALL = ModelSizes()
PARAKEET_SHAPED = ModelSizes(
    conv_channels=256, d_model=1024, pred_hidden=640, joint_hidden=640, vocab_size=1025
)


@dataclass(frozen=True)
class CacheAwareSizes:
    """Dimensions of a generated cache-aware encoder: L layers, C channel-cache frames, K time-cache
    frames, and its streaming metadata (mel frames)."""

    layers: int = 2
    channel_cache: int = 6
    time_cache: int = 4
    chunk_size: int = 16
    pre_encode_cache_size: int = 9
    subsampling: int = 8


CACHE_AWARE_SMALL = CacheAwareSizes()
PROJECTED = 16  # mel features -> channels before the subsampling conv: keeps the shipped files small
MEL_OFFSET, MEL_SCALE = 10.0, 1 / 3.5
SUBSAMPLE_GAIN = 2.0
# Nemotron Speech Streaming 0.6B's cache and chunk sizes (design notes 3): 24 layers, C = 70, K = 8,
# 56 mel frames a chunk; with D = 1024 its caches are about 7.7 MB a stream.
CACHE_AWARE_PARAKEET = CacheAwareSizes(layers=24, channel_cache=70, time_cache=8, chunk_size=56)


# Hand-tuned on the LibriVox clips in tests/data (see --check) rather than fitted in the generator, so
# that the bytes depend on the seed alone. With the default seed, greedy decoding emits about one token
# per 2-3 encoder frames, sometimes several on one frame, and TDT takes all five durations.
LSTM_INPUT_GAIN = (2.0, 6.0)  # per layer: keeps the prediction net's output well above zero
LOGIT_GAIN = 3.0  # spread of the token logits
PRED_GAIN = 1.5  # weight of the prediction network in the token units of the joint
BLANK_GAIN = 3.0  # spread of the blank logit
PRED_BLANK_GAIN = 1.5  # weight of the prediction network in the blank units: emitting changes the argmax
ENC_BLANK_GAIN = 1.5  # weight of the encoder in the blank units: speech vs silence
REPEAT_GAIN = 1.7  # blank gain on how much the frame favours the token just emitted
BLANK_BIAS = 0.0  # RNN-T blank logit offset: sets the emission rate
TDT_BLANK_BIAS = -2.0  # TDT blank offset: lower, since TDT blanks skip frames
DURATION_GAIN = 1.0  # spread of the TDT duration logits
DURATION_BIAS = (0.2, 0.5, 0.3, -0.3, 0.3)  # TDT duration logit offsets, durations 0..4


# --- vocabulary ---------------------------------------------------------------------------------------

_WORDS = [
    "the",
    "and",
    "of",
    "to",
    "in",
    "he",
    "was",
    "his",
    "that",
    "it",
    "be",
    "for",
    "with",
    "had",
    "him",
    "not",
    "have",
    "her",
    "as",
    "at",
    "by",
    "but",
    "on",
    "all",
    "she",
    "so",
    "they",
    "is",
    "which",
    "my",
    "this",
    "from",
    "one",
    "were",
    "you",
    "been",
    "more",
    "their",
    "there",
    "man",
    "made",
    "might",
    "what",
    "would",
    "could",
    "very",
    "no",
    "any",
    "much",
    "how",
    "when",
    "will",
    "son",
    "wife",
    "own",
    "young",
    "then",
    "them",
    "some",
    "such",
    "well",
]
_SUFFIXES = [
    "s",
    "ed",
    "ing",
    "er",
    "ly",
    "es",
    "en",
    "re",
    "on",
    "an",
    "or",
    "al",
    "ar",
    "th",
    "ou",
    "st",
    "nd",
    "ion",
    "ous",
    "ent",
    "ter",
    "ble",
    "ish",
    "ful",
    "ness",
    "ment",
    "ant",
    "ate",
    "ive",
    "ight",
    "ere",
    "ers",
    "est",
    "ity",
    "ong",
    "own",
    "ure",
]
_PREFIXES = ["con", "re", "de", "pro", "un", "dis", "com", "ex"]


def vocabulary(vocab_size: int) -> list[str]:
    """SentencePiece-like pieces: `▁`-words and `▁`-letters begin words, bare letters and suffixes
    continue them; the blank is last. Larger vocabularies are padded with two-word-fragment pieces."""
    pieces = [f"\u2581{w}" for w in _WORDS] + [f"\u2581{p}" for p in _PREFIXES] + _SUFFIXES
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces += [f"\u2581{c}" for c in letters if f"\u2581{c}" not in pieces] + list(letters) + ["'"]
    pieces = list(dict.fromkeys(pieces))
    extra = (f"{a[1:3]}{b}" for a in pieces if a.startswith("\u2581") for b in _SUFFIXES)
    for piece in extra:
        if len(pieces) >= vocab_size - 1:
            break
        if piece not in pieces:
            pieces.append(piece)
    if len(pieces) < vocab_size - 1:
        raise ValueError(f"cannot make {vocab_size - 1} distinct pieces")
    return [*pieces[: vocab_size - 1], BLANK]


def write_vocabulary(path: Path, pieces: Sequence[str]) -> None:
    """One `<piece> <id>` per line, as NeMo's SentencePiece vocab exports are read."""
    path.write_text("".join(f"{piece} {i}\n" for i, piece in enumerate(pieces)), encoding="utf-8")


# --- Triton configuration -----------------------------------------------------------------------------

# --- graphs -------------------------------------------------------------------------------------------


class _Weights:
    """Seeded tensors, each drawn from its own stream keyed by name so that shapes do not interact."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.initializers: list[TensorProto] = []

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def add(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER, doc_string=doc
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def encoder_graph(sizes: ModelSizes, seed: int) -> onnx.ModelProto:
    """Three stride-2 kernel-3 convs (NeMo's length formula holds), a kernel-3 context conv, LayerNorm.

    Padding frames are zeroed after every layer, so a batch row gives the same frames as that audio
    alone; the context conv makes a window's frames differ from the whole recording's near its edges.
    """
    w = _Weights(seed)
    f, c, d = sizes.features, sizes.conv_channels, sizes.d_model
    nodes = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["axis1"], value=numpy_helper.from_array(np.array([1], np.int64))),
    ]

    def mask(x: str, length: str, tag: str) -> str:
        """x * (t < length) over the time axis of [B, C, T]."""
        nodes.extend(
            [
                helper.make_node("Shape", [x], [f"{tag}_shape"], start=2, end=3),
                helper.make_node("Squeeze", [f"{tag}_shape"], [f"{tag}_t"]),
                helper.make_node("Range", ["zero", f"{tag}_t", "one"], [f"{tag}_range"]),
                helper.make_node("Unsqueeze", [length, "axis1"], [f"{tag}_len"]),
                helper.make_node("Less", [f"{tag}_range", f"{tag}_len"], [f"{tag}_valid"]),
                helper.make_node("Unsqueeze", [f"{tag}_valid", "axis1"], [f"{tag}_valid3"]),
                helper.make_node("Cast", [f"{tag}_valid3"], [f"{tag}_mask"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [x, f"{tag}_mask"], [f"{tag}_out"]),
            ]
        )
        return f"{tag}_out"

    x = mask("audio_signal", "length", "in")
    length = "length"
    for i, (cin, cout) in enumerate(((f, c), (c, c), (c, d)), start=1):
        weight = w.add(f"conv{i}.weight", w.normal(f"conv{i}.weight", (cout, cin, 3), np.sqrt(2 / (3 * cin))))
        bias = w.add(f"conv{i}.bias", np.zeros(cout, np.float32))
        nodes.append(helper.make_node("Conv", [x, weight, bias], [f"conv{i}"], strides=[2], pads=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        # NeMo: floor((L + 2 * 1 - 3) / 2) + 1 == (L + 1) // 2 for L >= 0
        nodes.append(helper.make_node("Add", [length, "one"], [f"len{i}_plus1"]))
        nodes.append(helper.make_node("Div", [f"len{i}_plus1", "two"], [f"len{i}"]))
        length = f"len{i}"
        x = mask(f"relu{i}", length, f"sub{i}")
    ctx_weight = w.add("context.weight", w.normal("context.weight", (d, 1, 3), 1.0))
    nodes += [
        helper.make_node("Conv", [x, ctx_weight], ["context"], pads=[1, 1], group=d),
        helper.make_node("Tanh", ["context"], ["context_tanh"]),
        helper.make_node("Add", [x, "context_tanh"], ["residual"]),
        helper.make_node("Transpose", ["residual"], ["residual_btd"], perm=[0, 2, 1]),
        helper.make_node(
            "LayerNormalization",
            [
                "residual_btd",
                w.add("norm.weight", np.ones(d, np.float32)),
                w.add("norm.bias", np.zeros(d, np.float32)),
            ],
            ["normed"],
            axis=-1,
        ),
        helper.make_node("Transpose", ["normed"], ["outputs"], perm=[0, 2, 1]),
        helper.make_node("Identity", [length], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", f, "T"]),
            helper.make_tensor_value_info("length", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", d, "T_out"]),
            helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"]),
        ],
        w.initializers,
    )
    return _model(graph, "random-weight NeMo-layout encoder (8x subsampling)")


def cache_aware_encoder_graph(
    sizes: ModelSizes, cache: CacheAwareSizes, seed: int, *, batch_first: bool = False
) -> onnx.ModelProto:
    """A random cache-aware encoder with NeMo's cache-aware export contract.

    The chunk's unnormalised mel frames, with the `P` pre-encode frames before them, are standardised
    by fixed constants and go through a pointwise conv to `PROJECTED` channels and one valid conv of
    kernel P + 8 and stride 8 with a ReLU (so an encoder frame sees its 8 frames and the P before,
    whichever chunk they came in), then L layers of
    `x + tanh(causal depthwise conv(x) + mean of the channel cache)`:
    the time cache holds each layer's last K inputs, the channel cache its last C (a chunk-level
    context, as a limited-context attention has), and a LayerNorm. `cache_last_channel_len` counts
    the valid channel-cache frames (up to C). `batch_first` exports the caches as [B, L, ...].
    """
    w = _Weights(seed)
    f, d = sizes.features, sizes.d_model
    n_layers, c, k, p = cache.layers, cache.channel_cache, cache.time_cache, cache.pre_encode_cache_size
    kernel = p + cache.subsampling

    def const(name: str, value: npt.NDArray[Any]) -> str:
        return w.add(name, value)

    nodes = [
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Shape", ["processed_signal"], ["t_shape"], start=2, end=3),
        helper.make_node("Squeeze", ["t_shape"], ["t"]),
        helper.make_node(
            "Range",
            ["zero", "t", "one"],
            ["steps"],
        ),
        helper.make_node(
            "Unsqueeze", ["processed_signal_length", const("axis1", np.array([1], np.int64))], ["len2"]
        ),
        helper.make_node("Less", ["steps", "len2"], ["valid"]),
        helper.make_node("Unsqueeze", ["valid", "axis1"], ["valid3"]),
        helper.make_node("Cast", ["valid3"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["processed_signal", "mask"], ["masked"]),
        # unnormalised log-mel (about -10 +- 3.5 on speech): a fixed standardisation, as a trained
        # streaming encoder learns one
        helper.make_node(
            "Add", ["masked", const("mel.offset", np.array([MEL_OFFSET], np.float32))], ["shifted"]
        ),
        helper.make_node(
            "Mul", ["shifted", const("mel.scale", np.array([MEL_SCALE], np.float32))], ["signal"]
        ),
        helper.make_node(
            "Conv",
            [
                "signal",
                const("project.weight", w.normal("project.weight", (PROJECTED, f, 1), 1 / np.sqrt(f))),
            ],
            ["projected"],
        ),
        helper.make_node(
            "Conv",
            [
                "projected",
                const(
                    "subsample.weight",
                    w.normal(
                        "subsample.weight",
                        (d, PROJECTED, kernel),
                        SUBSAMPLE_GAIN / np.sqrt(PROJECTED * kernel),
                    ),
                ),
            ],
            ["subsampled"],
            strides=[cache.subsampling],
        ),
        helper.make_node("Relu", ["subsampled"], ["x0"]),
        # encoded_len = max(0, ceil((length - P) / 8))
        helper.make_node(
            "Sub",
            ["processed_signal_length", const("p", np.array(p + 1 - cache.subsampling, np.int64))],
            ["len_shift"],
        ),
        helper.make_node(
            "Div", ["len_shift", const("sub", np.array(cache.subsampling, np.int64))], ["len_div"]
        ),
        helper.make_node("Max", ["len_div", "zero"], ["encoded_len"]),
        helper.make_node("Add", ["cache_last_channel_len", "encoded_len"], ["len_sum"]),
        helper.make_node(
            "Min", ["len_sum", const("c", np.array(c, np.int64))], ["cache_last_channel_len_next"]
        ),
    ]
    const("axis0", np.array([0], np.int64))
    channel_in, time_in = "cache_last_channel", "cache_last_time"
    if batch_first:  # work in NeMo's [L, B, ...] inside
        nodes += [
            helper.make_node("Transpose", ["cache_last_channel"], ["channel_lb"], perm=[1, 0, 2, 3]),
            helper.make_node("Transpose", ["cache_last_time"], ["time_lb"], perm=[1, 0, 2, 3]),
        ]
        channel_in, time_in = "channel_lb", "time_lb"
    x = "x0"
    channel_next, time_next = [], []
    for layer in range(n_layers):
        q = f"layer{layer}"
        index = const(f"{q}.index", np.array([layer], np.int64))
        nodes += [
            helper.make_node("Gather", [time_in, index], [f"{q}_time1"]),
            helper.make_node("Squeeze", [f"{q}_time1", "axis0"], [f"{q}_time"]),  # [B, D, K]
            helper.make_node("Concat", [f"{q}_time", x], [f"{q}_history"], axis=2),
            helper.make_node(
                "Slice",
                [
                    f"{q}_history",
                    const(f"{q}.k", np.array([-k], np.int64)),
                    const(f"{q}.end", np.array([2**62], np.int64)),
                    const(f"{q}.axis2", np.array([2], np.int64)),
                ],
                [f"{q}_time_next"],
            ),
            helper.make_node(
                "Conv",
                [f"{q}_history", const(f"{q}.dw", w.normal(f"{q}.dw", (d, 1, k + 1), 1 / np.sqrt(k + 1)))],
                [f"{q}_conv"],
                group=d,
            ),
            helper.make_node("Gather", [channel_in, index], [f"{q}_channel1"]),
            helper.make_node("Squeeze", [f"{q}_channel1", "axis0"], [f"{q}_channel"]),  # [B, C, D]
            helper.make_node("ReduceMean", [f"{q}_channel"], [f"{q}_context"], axes=[1], keepdims=1),
            helper.make_node("Transpose", [f"{q}_context"], [f"{q}_context_t"], perm=[0, 2, 1]),  # [B, D, 1]
            helper.make_node("Add", [f"{q}_conv", f"{q}_context_t"], [f"{q}_pre"]),
            helper.make_node("Tanh", [f"{q}_pre"], [f"{q}_act"]),
            helper.make_node("Transpose", [x], [f"{q}_xt"], perm=[0, 2, 1]),  # [B, n, D]
            helper.make_node("Concat", [f"{q}_channel", f"{q}_xt"], [f"{q}_seen"], axis=1),
            helper.make_node(
                "Slice",
                [f"{q}_seen", const(f"{q}.c", np.array([-c], np.int64)), f"{q}.end", "axis1"],
                [f"{q}_channel_next"],
            ),
            helper.make_node("Add", [x, f"{q}_act"], [f"{q}_out"]),
            helper.make_node(
                "Unsqueeze",
                [f"{q}_channel_next", "axis0"],
                [f"{q}_channel_next4"],
            ),
            helper.make_node("Unsqueeze", [f"{q}_time_next", "axis0"], [f"{q}_time_next4"]),
        ]
        channel_next.append(f"{q}_channel_next4")
        time_next.append(f"{q}_time_next4")
        x = f"{q}_out"
    channel_out = "cache_last_channel_next_lb" if batch_first else "cache_last_channel_next"
    time_out = "cache_last_time_next_lb" if batch_first else "cache_last_time_next"
    nodes += [
        helper.make_node("Concat", channel_next, [channel_out], axis=0),
        helper.make_node("Concat", time_next, [time_out], axis=0),
        helper.make_node("Transpose", [x], ["x_btd"], perm=[0, 2, 1]),
        helper.make_node(
            "LayerNormalization",
            [
                "x_btd",
                const("norm.weight", np.ones(d, np.float32)),
                const("norm.bias", np.zeros(d, np.float32)),
            ],
            ["normed"],
            axis=-1,
        ),
        helper.make_node("Transpose", ["normed"], ["encoded"], perm=[0, 2, 1]),
    ]
    if batch_first:
        nodes += [
            helper.make_node("Transpose", [channel_out], ["cache_last_channel_next"], perm=[1, 0, 2, 3]),
            helper.make_node("Transpose", [time_out], ["cache_last_time_next"], perm=[1, 0, 2, 3]),
        ]
    channel_shape: list[int | str] = ["B", n_layers, c, d] if batch_first else [n_layers, "B", c, d]
    time_shape: list[int | str] = ["B", n_layers, d, k] if batch_first else [n_layers, "B", d, k]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("processed_signal", TensorProto.FLOAT, ["B", f, "T"]),
            helper.make_tensor_value_info("processed_signal_length", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("cache_last_channel", TensorProto.FLOAT, channel_shape),
            helper.make_tensor_value_info("cache_last_time", TensorProto.FLOAT, time_shape),
            helper.make_tensor_value_info("cache_last_channel_len", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["B", d, "T_out"]),
            helper.make_tensor_value_info("encoded_len", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("cache_last_channel_next", TensorProto.FLOAT, channel_shape),
            helper.make_tensor_value_info("cache_last_time_next", TensorProto.FLOAT, time_shape),
            helper.make_tensor_value_info("cache_last_channel_len_next", TensorProto.INT64, ["B"]),
        ],
        w.initializers,
    )
    layout = "[B, L, ...]" if batch_first else "[L, B, ...]"
    model = _model(graph, f"random-weight NeMo cache-aware encoder (caches {layout})")
    for key, value in (
        ("chunk_size", cache.chunk_size),
        ("pre_encode_cache_size", p),
        ("subsampling_factor", cache.subsampling),
    ):
        model.metadata_props.add(key=key, value=str(value))
    return model


def decoder_joint_graph(sizes: ModelSizes, seed: int, *, tdt: bool) -> onnx.ModelProto:
    """Embedding + L-layer LSTM prediction net and a tanh joint, scoring K frames against one state.

    The joint is per frame (a row-wise MatMul), so one call with K frames equals K calls with one.
    Besides NeMo's tanh(enc_proj + pred_proj) -> linear, the blank logit gets a CTC-like term from
    `targets` (how much the frame still favours the token just emitted): random weights alone either
    never emit or repeat one token up to max_symbols_per_step on most frames.
    """
    w = _Weights(seed)
    d, h, j, v = sizes.d_model, sizes.pred_hidden, sizes.joint_hidden, sizes.vocab_size
    n_durations = len(sizes.durations) if tdt else 0
    width = v + n_durations

    embedding = w.normal("embed", (v, h), 1.0)
    embedding[v - 1] = 0.0  # NeMo: the blank is the padding index of the embedding
    nodes = [
        helper.make_node("Gather", [w.add("embed", embedding), "targets"], ["embedded"]),  # [B, 1, H]
        helper.make_node("Transpose", ["embedded"], ["lstm0_in"], perm=[1, 0, 2]),  # [1, B, H]
    ]
    states_h, states_c = [], []
    x = "lstm0_in"
    for layer in range(sizes.pred_layers):
        p = f"lstm{layer}"
        index = w.add(f"{p}.index", np.array([layer], np.int64))
        std = 1 / np.sqrt(h)
        weights = w.add(f"{p}.W", w.normal(f"{p}.W", (1, 4 * h, h), LSTM_INPUT_GAIN[min(layer, 1)] * std))
        recurrence = w.add(f"{p}.R", w.normal(f"{p}.R", (1, 4 * h, h), std))
        bias = w.add(f"{p}.B", w.normal(f"{p}.B", (1, 8 * h), 0.1))
        nodes += [
            helper.make_node("Gather", ["input_states_1", index], [f"{p}_h0"]),
            helper.make_node("Gather", ["input_states_2", index], [f"{p}_c0"]),
            helper.make_node(
                "LSTM",
                [x, weights, recurrence, bias, "", f"{p}_h0", f"{p}_c0"],
                [f"{p}_y", f"{p}_h", f"{p}_c"],
                hidden_size=h,
            ),
            helper.make_node(
                "Squeeze", [f"{p}_y", w.add(f"{p}.axis", np.array([1], np.int64))], [f"{p}_out"]
            ),
        ]
        states_h.append(f"{p}_h")
        states_c.append(f"{p}_c")
        x = f"{p}_out"

    # The first quarter of the joint units decides blank vs token and hears mostly the prediction net,
    # whose output changes with every emitted token: a frame then rarely takes a long run of tokens,
    # as with a trained model, rather than repeating one token up to max_symbols_per_step.
    blank_units = j // 4
    enc_proj = w.normal("joint.enc.weight", (d, j), 1 / np.sqrt(d))
    enc_proj[:, :blank_units] *= ENC_BLANK_GAIN
    pred_proj = w.normal("joint.pred.weight", (h, j), PRED_GAIN / np.sqrt(h))
    pred_proj[:, :blank_units] *= PRED_BLANK_GAIN / PRED_GAIN
    out = w.normal("joint.out.weight", (j, width), LOGIT_GAIN / np.sqrt(j))
    out[:blank_units, v - 1] *= BLANK_GAIN * np.sqrt(j / blank_units) / LOGIT_GAIN
    out[blank_units:, v - 1] = 0.0
    out[:blank_units, : v - 1] = 0.0
    out_bias = np.zeros(width, np.float32)
    out_bias[v - 1] = TDT_BLANK_BIAS if tdt else BLANK_BIAS
    if tdt:
        out[:, v:] *= DURATION_GAIN / LOGIT_GAIN
        out_bias[v:] = DURATION_BIAS[:n_durations]
    repeat_gain = np.zeros(width, np.float32)
    repeat_gain[v - 1] = REPEAT_GAIN
    nodes += [
        helper.make_node("Concat", states_h, ["output_states_1"], axis=0),
        helper.make_node("Concat", states_c, ["output_states_2"], axis=0),
        helper.make_node("Transpose", [x], ["pred"], perm=[1, 0, 2]),  # [B, 1, H]
        helper.make_node("MatMul", ["pred", w.add("joint.pred.weight", pred_proj)], ["pred_j"]),
        helper.make_node("Transpose", ["encoder_outputs"], ["enc"], perm=[0, 2, 1]),  # [B, K, D]
        helper.make_node("MatMul", ["enc", w.add("joint.enc.weight", enc_proj)], ["enc_j"]),
        helper.make_node("Add", ["enc_j", "pred_j"], ["joint_sum"]),
        helper.make_node(
            "Add", ["joint_sum", w.add("joint.bias", w.normal("joint.bias", (j,), 0.1))], ["joint_in"]
        ),
        helper.make_node("Tanh", ["joint_in"], ["joint_hidden"]),
        helper.make_node("MatMul", ["joint_hidden", w.add("joint.out.weight", out)], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", w.add("joint.out.bias", out_bias)], ["logits_joint"]),
        # CTC-like: while a frame still favours the token just emitted, lean to blank, so that a frame
        # takes one token, sometimes a few, rather than repeating one up to max_symbols_per_step.
        helper.make_node("Cast", ["targets"], ["targets64"], to=TensorProto.INT64),
        helper.make_node(
            "Unsqueeze", ["targets64", w.add("last_axis", np.array([2], np.int64))], ["last_idx"]
        ),
        helper.make_node("Shape", ["logits_joint"], ["logits_shape"]),
        helper.make_node(
            "Slice",
            [
                "logits_shape",
                w.add("starts", np.array([0], np.int64)),
                w.add("ends", np.array([2], np.int64)),
            ],
            ["bk"],
        ),
        helper.make_node("Concat", ["bk", w.add("one1", np.array([1], np.int64))], ["bk1"], axis=0),
        helper.make_node("Expand", ["last_idx", "bk1"], ["last_idx_k"]),
        helper.make_node("GatherElements", ["logits_joint", "last_idx_k"], ["last_logit"], axis=2),
        helper.make_node("Equal", ["targets", w.add("blank_id", np.array(v - 1, np.int32))], ["is_blank"]),
        helper.make_node("Not", ["is_blank"], ["not_blank"]),
        helper.make_node("Cast", ["not_blank"], ["not_blank_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["not_blank_f", "last_axis"], ["not_blank_3"]),
        helper.make_node(
            "Slice",
            [
                "logits_joint",
                "starts",
                w.add("tokens_end", np.array([v - 1], np.int64)),
                w.add("tokens_axis", np.array([2], np.int64)),
            ],
            ["token_logits"],
        ),
        helper.make_node("ReduceMean", ["token_logits"], ["mean_logit"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["last_logit", "mean_logit"], ["last_margin"]),
        helper.make_node("Mul", ["last_margin", "not_blank_3"], ["repeat_score"]),
        helper.make_node("Mul", ["repeat_score", w.add("repeat_gain", repeat_gain)], ["repeat_term"]),
        helper.make_node("Add", ["logits_joint", "repeat_term"], ["logits"]),
        helper.make_node("Unsqueeze", ["logits", w.add("frame_axis", np.array([2], np.int64))], ["outputs"]),
        helper.make_node("Identity", ["target_length"], ["prednet_lengths"]),
    ]
    l = sizes.pred_layers  # noqa: E741
    graph = helper.make_graph(
        nodes,
        "decoder_joint",
        [
            helper.make_tensor_value_info("encoder_outputs", TensorProto.FLOAT, ["B", d, "K"]),
            helper.make_tensor_value_info("targets", TensorProto.INT32, ["B", 1]),
            helper.make_tensor_value_info("target_length", TensorProto.INT32, ["B"]),
            helper.make_tensor_value_info("input_states_1", TensorProto.FLOAT, [l, "B", h]),
            helper.make_tensor_value_info("input_states_2", TensorProto.FLOAT, [l, "B", h]),
        ],
        [
            helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["B", "K", 1, width]),
            helper.make_tensor_value_info("prednet_lengths", TensorProto.INT32, ["B"]),
            helper.make_tensor_value_info("output_states_1", TensorProto.FLOAT, [l, "B", h]),
            helper.make_tensor_value_info("output_states_2", TensorProto.FLOAT, [l, "B", h]),
        ],
        w.initializers,
    )
    kind = f"TDT, durations {list(sizes.durations)}" if tdt else "RNN-T"
    return _model(graph, f"random-weight NeMo-layout decoder_joint ({kind})")


# --- repository ---------------------------------------------------------------------------------------


def _write_onnx_model(repository: Path, name: str, model: onnx.ModelProto) -> None:
    version = repository / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.onnx").write_bytes(model.SerializeToString())
    properties = {entry.key: entry.value for entry in model.metadata_props}  # a cache-aware chunk
    config = config_pbtxt(name, *model_tensors(model, name), "production", parameters=properties)
    (repository / name / "config.pbtxt").write_text(config, encoding="utf-8")


def generate_repository(
    repository: Path,
    *,
    seed: int = DEFAULT_SEED,
    sizes: ModelSizes = SMALL,
    cache_sizes: CacheAwareSizes = CACHE_AWARE_SMALL,
) -> None:
    """Write the random-weight TDT (`tdt`) and RNN-T (`rnnt`) model sets, sharing preprocessor,
    encoder weights and vocabulary, and the two cache-aware sets on their decoders, with
    `model_sets.toml` and Triton configs. The trained demo sets (`TRAINED_FILES`) are left alone, and
    listed in `model_sets.toml` as `default` and `default-streaming` when present."""
    repository.mkdir(parents=True, exist_ok=True)
    preprocessor = repository / "preprocessor"
    (preprocessor / "1").mkdir(parents=True, exist_ok=True)
    (preprocessor / "1" / "model.source").write_text(PREPROCESSOR_SOURCE + "\n", encoding="utf-8")
    tensors = onnx_tensors(model_file(repository, "preprocessor"))
    config = config_pbtxt("preprocessor", *tensors, "production")
    (preprocessor / "config.pbtxt").write_text(config, encoding="utf-8")

    encoder = encoder_graph(sizes, seed)
    _write_onnx_model(repository, "encoder_tdt", encoder)
    _write_onnx_model(repository, "encoder_rnnt", encoder)
    _write_onnx_model(repository, "decoder_joint_tdt", decoder_joint_graph(sizes, seed, tdt=True))
    _write_onnx_model(repository, "decoder_joint_rnnt", decoder_joint_graph(sizes, seed + 1, tdt=False))
    _write_onnx_model(repository, "preprocessor_streaming", streaming_preprocessor(sizes.features))
    _write_onnx_model(
        repository, "encoder_cache_aware", cache_aware_encoder_graph(sizes, cache_sizes, seed + 2)
    )
    _write_onnx_model(
        repository,
        "encoder_cache_aware_batch_first",
        cache_aware_encoder_graph(sizes, cache_sizes, seed + 3, batch_first=True),
    )
    write_vocabulary(repository / TEST_VOCABULARY, vocabulary(sizes.vocab_size))
    default = DEFAULT_MODEL_SET_TOML if (repository / "encoder").is_dir() else ""
    default += STREAMING_MODEL_SET_TOML if (repository / "encoder_streaming").is_dir() else ""
    (repository / "model_sets.toml").write_text(default + TEST_MODEL_SETS_TOML, encoding="utf-8")


# --- calibration check --------------------------------------------------------------------------------


@dataclass
class DecodeStats:
    """What greedy decoding of some audio did: the numbers the gains above were tuned on."""

    frames: int = 0
    tokens: int = 0
    tokens_per_frame: Counter[int] = field(default_factory=Counter)
    durations: Counter[int] = field(default_factory=Counter)

    def __str__(self) -> str:
        rate = self.frames / max(self.tokens, 1)
        text = f"{self.tokens} tokens / {self.frames} frames (one per {rate:.2f} frames)"
        text += f"; frames by tokens emitted: {dict(sorted((self.tokens_per_frame or Counter()).items()))}"
        if self.durations:
            text += f"; durations taken: {dict(sorted(self.durations.items()))}"
        return text


def greedy_stats(
    repository: Path,
    encoder: str,
    decoder_joint: str,
    waveforms: Sequence[npt.NDArray[np.float32]],
    max_symbols: int = 10,
) -> tuple[DecodeStats, list[list[int]]]:
    """Greedy-decode 16 kHz waveforms one frame per call (the spec's loop) and count what happened."""
    import onnxruntime as ort

    from amira.models import model_file

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(model_file(repository, name)), providers=["CPUExecutionProvider"])

    pre, enc, dec = session("preprocessor"), session(encoder), session(decoder_joint)
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    layers, hidden = shapes["input_states_1"][0], shapes["input_states_1"][2]
    width = dec.get_outputs()[0].shape[3]
    vocab_size = sum(1 for _ in (repository / TEST_VOCABULARY).open(encoding="utf-8"))
    durations = SMALL.durations if width > vocab_size else ()
    stats = DecodeStats(tokens_per_frame=Counter(), durations=Counter())
    all_tokens = []
    for waveform in waveforms:
        features, features_lens = pre.run(
            None, {"waveforms": waveform[None], "waveforms_lens": [len(waveform)]}
        )
        (encoded,), (n_frames,) = enc.run(None, {"audio_signal": features, "length": features_lens})
        last, h, c = (
            vocab_size - 1,
            np.zeros((layers, 1, hidden), np.float32),
            np.zeros((layers, 1, hidden), np.float32),
        )
        tokens, t, emitted = [], 0, 0
        while t < n_frames:
            logits, _, h_new, c_new = dec.run(
                None,
                {
                    "encoder_outputs": encoded[None, :, t : t + 1],
                    "targets": np.array([[last]], np.int32),
                    "target_length": np.array([1], np.int32),
                    "input_states_1": h,
                    "input_states_2": c,
                },
            )
            token = int(logits[0, 0, 0, :vocab_size].argmax())
            step = durations[int(logits[0, 0, 0, vocab_size:].argmax())] if durations else 1
            if durations:
                stats.durations[step] += 1
            if token == vocab_size - 1:
                stats.tokens_per_frame[emitted] += 1
                t, emitted = t + max(step, 1), 0
                continue
            tokens.append(token)
            last, h, c, emitted = token, h_new, c_new, emitted + 1
            if durations and step > 0:
                stats.tokens_per_frame[emitted] += 1
                t, emitted = t + step, 0
            elif emitted == max_symbols:
                stats.tokens_per_frame[emitted] += 1
                t, emitted = t + 1, 0
        stats.frames += int(n_frames)
        stats.tokens += len(tokens)
        all_tokens.append(tokens)
    return stats, all_tokens


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weights seed (default: %(default)s)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="repository directory (default: the shipped one)",
    )
    parser.add_argument(
        "--parakeet-shaped",
        action="store_true",
        help="Parakeet-TDT-0.6B tensor sizes (D=1024, LSTM 2x640, 1025 tokens, W=1030): for benchmarks only",
    )
    parser.add_argument("--check", type=Path, nargs="*", default=[], help="16 kHz wav files to greedy-decode")
    args = parser.parse_args(argv)
    if args.parakeet_shaped and args.output.resolve() == DEFAULT_REPOSITORY.resolve():
        parser.error("--parakeet-shaped models are never written into the shipped repository; give --output")
    generate_repository(
        args.output,
        seed=args.seed,
        sizes=PARAKEET_SHAPED if args.parakeet_shaped else SMALL,
        cache_sizes=CACHE_AWARE_PARAKEET if args.parakeet_shaped else CACHE_AWARE_SMALL,
    )
    if args.check:
        import soundfile

        waveforms = [soundfile.read(path, dtype="float32")[0] for path in args.check]
        pieces = vocabulary(sum(1 for _ in (args.output / TEST_VOCABULARY).open(encoding="utf-8")))
        for name, encoder, decoder_joint in (
            ("tdt", "encoder_tdt", "decoder_joint_tdt"),
            ("rnnt", "encoder_rnnt", "decoder_joint_rnnt"),
        ):
            stats, tokens = greedy_stats(args.output, encoder, decoder_joint, waveforms)
            print(f"{name}: {stats}")
            print(f"  e.g. {''.join(pieces[i] for i in tokens[0]).replace(chr(0x2581), ' ').strip()!r}")


if __name__ == "__main__":
    main()
