"""The end-to-end recipe: synthesise, train (step-counted, seeded), evaluate, export, check the export."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import grammar
from .causal import CausalEncoder
from .data import cache_path, log, make_data
from .export import OnnxGreedy, OnnxStreamingGreedy, export, export_streaming
from .features import SAMPLE_RATE, Preprocessor, augment, spec_augment
from .joining import held_out_joined, join
from .model import Sizes, Transducer, encoded_length

WINDOW_CONSISTENCY = 0.3  # stage 2: weight of the streamed-window agreement loss
HELD_OUT_SHIPPED = 12  # joined held-out recordings written beside the shipped model, in tests/data/held_out
Draw = Callable[[np.random.Generator], tuple[list[np.ndarray], list[list[int]]]]


def _waves(data: dict, name: str) -> list[np.ndarray]:
    audio, offsets = data[f"{name}_audio"], data[f"{name}_offsets"]
    return [audio[a:b] for a, b in itertools.pairwise(offsets)]


def word_errors(ref: str, hyp: str) -> int:
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[len(h)]


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 1e-5 + (peak - 1e-5) * 0.5 * (1 + math.cos(math.pi * progress))


def clean_features(pre: Preprocessor, waves: list[np.ndarray]) -> list[np.ndarray]:
    """Features of each waveform alone (as the server computes them), int16 -> float32."""
    out = []
    for wave in waves:
        features, lengths = pre([wave.astype(np.float32) / 32768.0])
        out.append(features[0, :, : int(lengths[0])])
    return out


def augmented_pool(
    pre: Preprocessor, waves: list[np.ndarray], order: np.ndarray, copies: int, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """`copies` independently augmented feature versions of every training utterance, computed once
    (float16, [128, T] each), so that a training step costs only the model; batches of similar length."""
    started = time.time()
    pool: list[list[np.ndarray]] = []
    for _ in range(copies):
        version: list[np.ndarray] = [np.empty(0)] * len(waves)
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            features, lengths = pre([augment(rng, waves[i]) for i in rows])
            for row, i in enumerate(rows):
                version[i] = features[row, :, : int(lengths[row])].astype(np.float16)
        pool.append(version)
    log(f"augmented feature pool: {copies} x {len(waves)} utterances in {time.time() - started:.0f} s")
    return pool


def joined_pool(
    pre: Preprocessor,
    waves: list[np.ndarray],
    targets: list[list[int]],
    copies: int,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, list[int]]]:
    """Long-audio examples: `copies` random groupings of the training utterances into runs of 1-4
    joined with pauses (up to ~15 s, the shape of a stream's windows and of batch requests), each
    augmented and featurised once as a whole; sorted by length."""
    started = time.time()
    examples: list[tuple[np.ndarray, list[int]]] = []
    for _ in range(copies):
        order, groups, start = rng.permutation(len(waves)), [], 0
        while start < len(order):
            size = int(rng.integers(1, 5))
            groups.append(order[start : start + size])
            start += size
        audio = [augment(rng, join(rng, [waves[i] for i in group], (0.15, 1.5))) for group in groups]
        by_length = np.argsort([len(a) for a in audio], kind="stable")
        for begin in range(0, len(by_length), 16):
            rows = by_length[begin : begin + 16]
            features, lengths = pre([audio[i] for i in rows])
            for row, i in enumerate(rows):
                target = [token for u in groups[i] for token in targets[u]]
                examples.append((features[row, :, : int(lengths[row])].astype(np.float16), target))
    examples.sort(key=lambda example: example[0].shape[1])
    log(f"joined feature pool: {len(examples)} examples in {time.time() - started:.0f} s")
    return examples


def stream_windows(rng: np.random.Generator, lengths: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per row a streaming window (w0, c0, c1, w1) in encoder frames (80 ms), cut as the server cuts a
    stream: a 1.6 s chunk [c0, c1) with up to 4 s of left context and 0.4-1.6 s of look-ahead, both
    clipped at the ends of the audio."""
    windows = []
    for n in map(int, lengths):
        c0 = int(rng.integers(0, n))
        c1 = min(n, c0 + 20)
        w0 = c0 - min(c0, int(rng.integers(0, 51)))
        w1 = c1 + min(n - c1, int(rng.integers(5, 21)))
        windows.append((w0, c0, c1, w1))
    return windows


def evaluate(model: Transducer, features: list[np.ndarray], texts: list[str]) -> tuple[float, list[str]]:
    model.eval()
    hyps = [grammar.decode(model.greedy(torch.from_numpy(f), f.shape[1])) for f in features]
    errors = sum(word_errors(r, h) for r, h in zip(texts, hyps, strict=True))
    return errors / sum(len(t.split()) for t in texts), hyps


def write_held_out(recordings: list[tuple[np.ndarray, str]], directory: Path) -> None:
    """FLAC files and a `transcripts.tsv` (file, reference) for the streamed-vs-batch test and bench."""
    import soundfile

    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (wave, text) in enumerate(recordings):
        name = f"{index:02d}.flac"
        soundfile.write(directory / name, wave, SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{name}\t{text}\n")
    (directory / "transcripts.tsv").write_text("".join(lines), encoding="utf-8")


def real_recordings(repo_root: Path) -> list[tuple[str, np.ndarray, str]]:
    """The pocketsphinx test recordings, only to report on them (never trained on)."""
    import soundfile

    data = repo_root / "tests" / "data"
    out = []
    transcription = (data / "cards" / "cards.transcription").read_text().splitlines()
    for line in transcription:
        words = line.replace("<s>", "").replace("</s>", "").split()
        name, text = words[-1].strip("()"), " ".join(words[:-1]).lower()
        wave, _ = soundfile.read(data / "cards" / f"{name}.wav", dtype="int16")
        out.append((f"cards/{name}.wav", wave, text))
    raw = np.fromfile(data / "goforward.raw", dtype="<i2")
    out.append(("goforward.raw", raw, "go forward ten meters"))
    return out


def run(
    seed: int,
    output: Path,
    work: Path,
    steps: int,
    n_train: int,
    n_test: int,
    batch: int,
    finetune_steps: int = 0,
    resume: Path | None = None,
    copies: int = 8,
    joined_copies: int = 4,
    streaming: bool = False,
    streaming_layers: int = 3,
    continue_from: Path | None = None,
) -> dict:
    """The whole recipe; `streaming` trains the causal cache-aware variant (`training/causal.py`) on
    the streaming features instead, and exports it as the `default-streaming` set. `continue_from`
    starts both stages from a finished model's weights with a third of their peak learning rates
    (more training of a model without starting over)."""
    torch.set_num_threads(1)
    prefix = "streaming-" if streaming else ""  # of the files in `work`
    repo_root = Path(__file__).resolve().parent.parent
    torch.manual_seed(seed)
    np_rng = np.random.default_rng(seed)
    started = time.time()
    data = make_data(seed, n_train, n_test, cache_path(work, seed, n_train, n_test))
    synth_s = time.time() - started
    train_waves, train_texts = _waves(data, "train"), [str(t) for t in data["train_texts"]]
    test_waves, test_texts = _waves(data, "test"), [str(t) for t in data["test_texts"]]
    train_targets = [grammar.encode(t) for t in train_texts]
    order = np.argsort([len(w) for w in train_waves], kind="stable")
    pre = Preprocessor(streaming)
    test_features = clean_features(pre, test_waves)

    sizes = Sizes(vocab_size=len(grammar.PIECES))
    model = Transducer(sizes, CausalEncoder(sizes, streaming_layers) if streaming else None)
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters; {steps} + {finetune_steps} steps")
    peak_scale = 1.0
    if continue_from is not None:
        model.load_state_dict(torch.load(continue_from))
        peak_scale = 1 / 3
        np_rng = np.random.default_rng(seed + 2)  # other augmentations and draws than the first run's
        torch.manual_seed(seed + 2)
        log(f"going on from {continue_from}")
    train_started = time.time()

    def train(
        stage_steps: int,
        peak: float,
        warmup: int,
        np_rng: np.random.Generator,
        draw: Draw,
        consistency: float = 0.0,
    ) -> None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=1e-3)
        stage_started = time.time()
        for step in range(stage_steps):
            model.train()
            chosen, targets = draw(np_rng)
            lengths = np.array([f.shape[1] for f in chosen], np.int64)
            features = np.zeros((len(chosen), chosen[0].shape[0], int(lengths.max())), np.float32)
            for row, f in enumerate(chosen):
                features[row, :, : f.shape[1]] = f
            features = spec_augment(np_rng, features, lengths)
            target_lengths = torch.tensor([len(t) for t in targets])
            padded = torch.zeros(len(chosen), int(target_lengths.max()), dtype=torch.long)
            for row, target in enumerate(targets):
                padded[row, : len(target)] = torch.tensor(target)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, stage_steps, peak, warmup)
            inputs = torch.from_numpy(features)
            rnnt, ctc, encoded = model.losses(inputs, torch.from_numpy(lengths), padded, target_lengths)
            loss = rnnt + 0.3 * ctc
            agreement = torch.zeros(())
            if consistency:
                windows = stream_windows(np_rng, encoded_length(torch.from_numpy(lengths)).numpy())
                agreement = model.window_consistency(inputs, encoded, windows)
                loss = loss + consistency * agreement
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if step % 100 == 0 or step == stage_steps - 1:
                log(
                    f"step {step}: rnnt {rnnt.item():.3f} ctc {ctc.item():.3f} window {agreement.item():.3f} "
                    f"({(time.time() - stage_started) / (step + 1):.2f} s/step)"
                )
            if step % 1000 == 999:
                wer, _ = evaluate(model, test_features[:100], test_texts[:100])
                log(f"step {step}: held-out WER (first 100) {wer:.3%}")

    # Stage 1: isolated utterances, warm-up and cosine decay from 2e-3. Stage 2: a warm restart from
    # 1e-3 with a fresh optimizer and fresh seeds on joined utterances (long audio with pauses), so
    # that it depends on the stage-1 weights alone (--resume-stage2).
    if resume is None:
        pool = augmented_pool(pre, train_waves, order, copies, np_rng)
        if isinstance(model.encoder, CausalEncoder) and continue_from is None:  # standardise inside
            frames = torch.from_numpy(np.concatenate(pool[0], axis=1).astype(np.float32))
            model.encoder.set_statistics(frames.mean(1), frames.std(1))

        def draw_utterances(rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[int]]]:
            start = int(rng.integers(0, len(order) - batch + 1))
            rows = order[start : start + batch]
            picks = rng.integers(0, len(pool), len(rows))
            chosen = [pool[c][i] for c, i in zip(picks, rows, strict=True)]
            return chosen, [train_targets[i] for i in rows]

        train(steps, 2e-3 * peak_scale, min(500, steps // 10), np_rng, draw_utterances)
        del pool
        torch.save(model.state_dict(), work / f"{prefix}stage1.pt")
    else:
        model.load_state_dict(torch.load(resume))
        log(f"stage 1 weights from {resume}")
    if finetune_steps:
        torch.set_num_threads(2)  # longer rows and a second encoder pass: both cores (deterministic too)
        torch.manual_seed(seed + 1)
        stage2_rng = np.random.default_rng(seed + 1)
        examples = joined_pool(pre, train_waves, train_targets, joined_copies, stage2_rng)
        budget = batch * 200  # feature frames per step: 32 utterances of 2 s, as in stage 1

        def draw_joined(rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[int]]]:
            start, size = int(rng.integers(0, len(examples))), 1
            while start + size < len(examples) and (size + 1) * examples[start + size][0].shape[1] <= budget:
                size += 1
            chosen = examples[start : start + size]
            return [f for f, _ in chosen], [t for _, t in chosen]

        # a causal encoder streams exactly as it encodes whole: no window agreement to learn
        train(
            finetune_steps,
            1e-3 * peak_scale,
            100,
            stage2_rng,
            draw_joined,
            0.0 if streaming else WINDOW_CONSISTENCY,
        )
    train_s = time.time() - train_started

    wer, hyps = evaluate(model, test_features, test_texts)
    log(f"held-out synthetic WER {wer:.3%} over {len(test_texts)} utterances")
    joined = held_out_joined(test_waves, test_texts, seed)
    joined_wer, _ = evaluate(
        model,
        clean_features(pre, [wave for wave, _ in joined]),
        [text for _, text in joined],
    )
    log(f"held-out joined WER {joined_wer:.3%} over {len(joined)} recordings (3+ utterances, 8+ s)")
    shipping = output.resolve() == (repo_root / "amira" / "models" / "repository").resolve()
    onnx_greedy: OnnxGreedy | OnnxStreamingGreedy
    if streaming:
        export_streaming(model, output, grammar.PIECES)
        onnx_greedy = OnnxStreamingGreedy(output)
    else:
        write_held_out(
            joined[:HELD_OUT_SHIPPED],
            repo_root / "tests" / "data" / "held_out" if shipping else work / "held_out",
        )
        export(model, output, grammar.PIECES)
        onnx_greedy = OnnxGreedy(output)
    mismatches = 0
    for f, hyp in zip(test_features, hyps, strict=True):
        mismatches += grammar.decode(onnx_greedy(f, f.shape[1])) != hyp
    log(f"ONNX export vs torch greedy: {mismatches} of {len(hyps)} held-out utterances differ")
    real = []
    for name, wave, ref in real_recordings(repo_root):
        (f,) = clean_features(pre, [wave])
        hyp = grammar.decode(onnx_greedy(f, f.shape[1]))
        real.append({"file": name, "reference": ref, "hypothesis": hyp, "exact": hyp == ref})
        log(f"{name}: {hyp!r} ({'exact' if hyp == ref else 'expected ' + repr(ref)})")
    metrics = {
        "seed": seed,
        "streaming": streaming,
        "streaming_layers": streaming_layers if streaming else None,
        "steps": steps,
        "finetune_steps": finetune_steps,
        "batch": batch,
        "pool_copies": copies,
        "train_utterances": n_train,
        "test_utterances": n_test,
        "train_hours": float(data["train_offsets"][-1] / 16000 / 3600),
        "held_out_wer": wer,
        "held_out_joined_wer": joined_wer,
        "export_mismatches": mismatches,
        "real_recordings": real,
        "synthesis_s": round(synth_s),
        "training_s": round(train_s),
        "voices": sorted(set(map(str, data["train_voices"]))),
        "total_s": round(time.time() - started),
    }
    (work / f"{prefix}metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    torch.save(model.state_dict(), work / f"{prefix}model.pt")
    return metrics
