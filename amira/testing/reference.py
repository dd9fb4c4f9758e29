"""onnx-asr as an independent reference decoder for a model set of an AMIRA repository."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_asr

from amira.models import model_file


@dataclass(frozen=True)
class ReferenceDecoder:
    """onnx-asr's greedy decoding of 16 kHz float32 waveforms with one model set."""

    adapter: Any  # onnx_asr's TextResultsAsrAdapter

    def __call__(self, waveform: npt.NDArray[np.float32]) -> tuple[list[int], list[int]]:
        """`(token_ids, token_frames)`: what onnx-asr emits and at which encoder frame."""
        ids, frames, _ = self.emissions(waveform)
        return ids, frames

    def emissions(self, waveform: npt.NDArray[np.float32]) -> tuple[list[int], list[int], list[float]]:
        """`(token_ids, token_frames, probabilities)`: onnx-asr's own log-softmax of the token logits."""
        asr = self.adapter.asr
        waveforms = np.asarray(waveform, dtype=np.float32)[None]
        features = asr._preprocessor(waveforms, np.array([waveforms.shape[1]], np.int64))
        ((ids, frames, logprobs),) = asr._decoding(*asr._encode(*features), need_logprobs=True)
        return [int(i) for i in ids], [int(t) for t in frames], [float(np.exp(p)) for p in logprobs]

    def text(self, waveform: npt.NDArray[np.float32]) -> str:
        """onnx-asr's own transcript."""
        return str(self.adapter.recognize(np.asarray(waveform, dtype=np.float32), sample_rate=16_000))


def reference_decoder(repository: Path, model_set: str, tmp_path: Path) -> ReferenceDecoder:
    """onnx-asr loaded with a model set of `repository`: call it for `(token_ids, token_frames)`.

    onnx-asr loads a NeMo export from a directory of fixed file names, so the set's models are
    symlinked into `tmp_path`; its ONNX preprocessor graph is the same one the repository names.
    """
    sets = tomllib.loads((repository / "model_sets.toml").read_text(encoding="utf-8"))["model_sets"]
    names = sets[model_set]
    directory = tmp_path / f"onnx_asr_{model_set}"
    directory.mkdir()
    (directory / "encoder-model.onnx").symlink_to(model_file(repository, names["encoder"]))
    (directory / "decoder_joint-model.onnx").symlink_to(model_file(repository, names["decoder_joint"]))
    (directory / "vocab.txt").symlink_to(repository / names["vocabulary"])
    config = {"features_size": 128, "subsampling_factor": 8, "max_tokens_per_step": 10}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    width = model_output_width(model_file(repository, names["decoder_joint"]))
    vocab_size = sum(1 for _ in (repository / names["vocabulary"]).open(encoding="utf-8"))
    kind = "nemo-conformer-tdt" if width > vocab_size else "nemo-conformer-rnnt"
    adapter = onnx_asr.load_model(
        kind,
        directory,
        providers=["CPUExecutionProvider"],
        preprocessor_config={"use_numpy_preprocessors": False, "use_conv_preprocessors": True},
    )
    return ReferenceDecoder(adapter)


def model_output_width(path: Path) -> int:
    """W, the last dimension of a decoder_joint's `outputs`."""
    import onnx

    graph = onnx.load(str(path)).graph
    (outputs,) = (o for o in graph.output if o.name == "outputs")
    return int(outputs.type.tensor_type.shape.dim[-1].dim_value)


@dataclass(frozen=True)
class FrameByFrame:
    """The greedy loop of `models-and-decoding.md`, one `decoder_joint` call per frame, on onnxruntime.

    Written here from the spec, sharing nothing with `amira.core.decoding`, and told the durations
    by the test (onnx-asr takes a duration logit's index as the duration, so it cannot judge a model
    whose durations are not 0, 1, 2, ...). `taken` counts the duration values the loop used.
    """

    repository: Path
    encoder: str
    decoder_joint: str
    vocab_size: int
    durations: tuple[int, ...]
    max_symbols: int = 10

    def __call__(self, waveform: npt.NDArray[np.float32]) -> tuple[list[int], list[int], dict[int, int]]:
        """`(token_ids, token_frames, taken)` for 16 kHz float32 samples."""
        import onnxruntime as ort

        def session(name: str) -> ort.InferenceSession:
            path = str(model_file(self.repository, name))
            return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        pre, enc, dec = session("preprocessor"), session(self.encoder), session(self.decoder_joint)
        waveforms = np.asarray(waveform, np.float32)[None]
        features, lengths = pre.run(None, {"waveforms": waveforms, "waveforms_lens": [waveforms.shape[1]]})
        (encoded,), (frames,) = enc.run(None, {"audio_signal": features, "length": lengths})
        return greedy_frame_by_frame(
            dec, encoded[:, :frames], self.vocab_size, self.durations, self.max_symbols
        )


def greedy_frame_by_frame(
    joint: Any,
    encoded: npt.NDArray[np.float32],
    vocab_size: int,
    durations: tuple[int, ...] = (),
    max_symbols: int = 10,
) -> tuple[list[int], list[int], dict[int, int]]:
    """The spec's greedy loop over encoder frames `encoded` [D, T], one call of the onnxruntime
    session `joint` (a `decoder_joint`) per step: `(token_ids, token_frames, taken)`, where `taken`
    counts the duration values used. Written from the spec, sharing nothing with `amira.core`."""
    shape = joint.get_inputs()[3].shape  # input_states_1: [L, B, H]
    h = c = np.zeros((shape[0], 1, shape[2]), np.float32)
    blank = vocab_size - 1
    last, t, symbols = blank, 0, 0
    tokens: list[int] = []
    token_frames: list[int] = []
    taken: dict[int, int] = {}
    while t < encoded.shape[1]:
        logits, _, h_next, c_next = joint.run(
            None,
            {
                "encoder_outputs": encoded[None, :, t : t + 1],
                "targets": np.array([[last]], np.int32),
                "target_length": np.array([1], np.int32),
                "input_states_1": h,
                "input_states_2": c,
            },
        )
        row = logits[0, 0, 0]
        token = int(row[:vocab_size].argmax())
        duration = durations[int(row[vocab_size:].argmax())] if durations else 1
        taken[duration] = taken.get(duration, 0) + 1
        if token == blank:
            t, symbols = t + max(duration, 1), 0
            continue
        tokens.append(token)
        token_frames.append(t)
        last, h, c, symbols = token, h_next, c_next, symbols + 1
        if durations and duration > 0:
            t, symbols = t + duration, 0
        elif symbols == max_symbols:
            t, symbols = t + 1, 0
    return tokens, token_frames, taken
