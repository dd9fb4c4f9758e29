"""A model set of an AMIRA repository in the files sherpa-onnx's NeMo transducer loads, same weights.

sherpa-onnx wants a NeMo transducer as three files: the encoder with NeMo metadata, a *decoder*
(prediction network: `targets`, `target_length`, two states in; its output, the length and two
states out) and a *joiner* (encoder frame and decoder output in, logits out). AMIRA's contract has
one `decoder_joint`; `split_decoder_joint` cuts it at the prediction network's output with `onnx`
graph surgery (no torch), every initialiser and node kept as it is. A joint that also reads
`targets` (the random-weight test models' does) gets them through the decoder output: one extra
channel carrying the target id, sliced off again in the joiner, so the split is exact
(`tests/test_sherpa_models.py` checks max |diff| = 0 against `decoder_joint`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from amira.models import model_file

PRED = "pred"  # the prediction network's output inside the test models' decoder_joint: [B, 1, H]


def _tensor(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
    )


def split_decoder_joint(source: Path, decoder_path: Path, joiner_path: Path, pred: str = PRED) -> None:
    """Write sherpa-onnx's decoder and joiner for the `decoder_joint` at `source`."""
    model = onnx.load(str(source))
    hidden = _last_dim(model, "input_states_1")
    model = onnx.shape_inference.infer_shapes(model)
    if not any(info.name == pred for info in model.graph.value_info):  # LSTM outputs are not inferred
        model.graph.value_info.append(
            helper.make_tensor_value_info(pred, TensorProto.FLOAT, ["B", 1, hidden])
        )
    extractor = onnx.utils.Extractor(model)
    uses_targets = _joint_reads_targets(model, pred)

    decoder = extractor.extract_model(
        ["targets", "target_length", "input_states_1", "input_states_2"],
        [pred, "prednet_lengths", "output_states_1", "output_states_2"],
    )
    if uses_targets:  # carry the target id in one more channel of the decoder output
        decoder.graph.node.extend(
            [
                helper.make_node("Cast", ["targets"], ["targets_f"], to=TensorProto.FLOAT),
                _tensor("targets_shape", [-1, 1, 1]),
                helper.make_node("Reshape", ["targets_f", "targets_shape"], ["targets_3d"]),
                helper.make_node("Concat", [pred, "targets_3d"], ["decoder_out"], axis=2),
            ]
        )
    else:
        decoder.graph.node.append(helper.make_node("Identity", [pred], ["decoder_out"]))
    width = hidden + 1 if uses_targets else hidden
    out = helper.make_tensor_value_info("decoder_out", TensorProto.FLOAT, ["B", 1, width])
    outputs = [out, *list(decoder.graph.output)[1:]]
    del decoder.graph.output[:]
    decoder.graph.output.extend(outputs)

    inputs = ["encoder_outputs", pred, "targets"] if uses_targets else ["encoder_outputs", pred]
    joiner = extractor.extract_model(inputs, ["outputs"])
    prologue = [
        _tensor("zero", [0]),
        _tensor("hidden", [hidden]),
        _tensor("axis2", [2]),
        helper.make_node("Slice", ["decoder_out", "zero", "hidden", "axis2"], [pred]),
    ]
    if uses_targets:
        prologue += [
            _tensor("hidden_end", [hidden + 1]),
            _tensor("targets_2d", [-1, 1]),
            helper.make_node("Slice", ["decoder_out", "hidden", "hidden_end", "axis2"], ["targets_f"]),
            helper.make_node("Reshape", ["targets_f", "targets_2d"], ["targets_f2"]),
            helper.make_node("Cast", ["targets_f2"], ["targets"], to=TensorProto.INT32),
        ]
    nodes = [*prologue, *joiner.graph.node]
    del joiner.graph.node[:]
    joiner.graph.node.extend(nodes)
    encoder_input = next(i for i in model.graph.input if i.name == "encoder_outputs")
    del joiner.graph.input[:]
    joiner.graph.input.extend(
        [encoder_input, helper.make_tensor_value_info("decoder_out", TensorProto.FLOAT, ["B", 1, width])]
    )
    for part, path in ((decoder, decoder_path), (joiner, joiner_path)):
        onnx.checker.check_model(part)
        onnx.save(part, str(path))


def _last_dim(model: onnx.ModelProto, name: str) -> int:
    value = next(i for i in model.graph.input if i.name == name)
    return int(value.type.tensor_type.shape.dim[-1].dim_value)


def _joint_reads_targets(model: onnx.ModelProto, pred: str) -> bool:
    """Whether computing `outputs` from `pred` and the encoder frames also needs `targets`."""
    producers = {output: node for node in model.graph.node for output in node.output}
    needed, frontier = set(), ["outputs"]
    while frontier:
        name = frontier.pop()
        if name in needed or name in (pred, "encoder_outputs"):
            continue
        needed.add(name)
        if name in producers:
            frontier.extend(i for i in producers[name].input if i)
    return "targets" in needed


def nemo_encoder(source: Path, destination: Path, *, vocab_size: int, layers: int, hidden: int) -> None:
    """The encoder at `source` with the NeMo metadata sherpa-onnx reads (`vocab_size` counts the blank)."""
    model = onnx.load(str(source))
    metadata = {
        "model_type": "EncDecRNNTBPEModel",
        "vocab_size": str(vocab_size - 1),  # NeMo's count leaves the blank out
        "subsampling_factor": "8",
        "normalize_type": "per_feature",
        "pred_rnn_layers": str(layers),
        "pred_hidden": str(hidden),
        "feat_dim": "128",
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(destination))


def sherpa_model_dir(repository: Path, encoder: str, decoder_joint: str, vocabulary: str, dest: Path) -> Path:
    """`encoder.onnx`, `decoder.onnx`, `joiner.onnx` and `tokens.txt` for sherpa-onnx in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    joint = model_file(repository, decoder_joint)
    split_decoder_joint(joint, dest / "decoder.onnx", dest / "joiner.onnx")
    model = onnx.load(str(joint), load_external_data=False)
    tokens = (repository / vocabulary).read_text(encoding="utf-8")
    layers = next(i for i in model.graph.input if i.name == "input_states_1").type.tensor_type.shape.dim
    nemo_encoder(
        model_file(repository, encoder),
        dest / "encoder.onnx",
        vocab_size=len(tokens.splitlines()),
        layers=layers[0].dim_value,
        hidden=layers[2].dim_value,
    )
    (dest / "tokens.txt").write_text(tokens, encoding="utf-8")
    return dest
