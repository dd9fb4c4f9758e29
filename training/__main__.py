"""python -m training --seed 0 --output amira/models/repository  (see training/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .recipe import run


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export the AMIRA demo transducer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, required=True, help="model repository to write the demo set into"
    )
    parser.add_argument("--work", type=Path, default=Path("build/demo"), help="cache, metrics, checkpoint")
    parser.add_argument("--steps", type=int, default=6500)
    parser.add_argument(
        "--finetune-steps", type=int, default=3000, help="stage 2 (warm restart, joined utterances) steps"
    )
    parser.add_argument(
        "--resume-stage2", type=Path, default=None, help="stage-1 weights (work/stage1.pt): run stage 2 only"
    )
    parser.add_argument(
        "--continue-from",
        type=Path,
        default=None,
        help="whole-model weights (work/model.pt) to go on training from: both stages, lower peaks",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--copies", type=int, default=8, help="augmented feature versions of each training utterance"
    )
    parser.add_argument(
        "--joined-copies", type=int, default=4, help="random groupings of the training set for stage 2"
    )
    parser.add_argument("--train-utterances", type=int, default=6000)
    parser.add_argument("--test-utterances", type=int, default=400)
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="train the causal cache-aware variant (the default-streaming set) instead",
    )
    parser.add_argument("--streaming-layers", type=int, default=3, help="LSTM blocks of the causal encoder")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    metrics = run(
        args.seed,
        args.output,
        args.work,
        args.steps,
        args.train_utterances,
        args.test_utterances,
        args.batch,
        args.finetune_steps,
        args.resume_stage2,
        args.copies,
        args.joined_copies,
        args.streaming,
        args.streaming_layers,
        args.continue_from,
    )
    print(
        f"held-out WER {metrics['held_out_wer']:.3%}; real recordings exact: "
        f"{sum(r['exact'] for r in metrics['real_recordings'])}/{len(metrics['real_recordings'])}"
    )


if __name__ == "__main__":
    main()
