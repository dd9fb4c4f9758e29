"""Average the weights of finished runs of the streaming variant and export the result.

    python -m training.average build/demo/streaming-round1.pt build/demo/streaming-round2.pt \\
        --output amira/models/repository

Two continuation rounds of one model (`--continue-from`) sit in the same basin; their mean ("model
soup") kept what each did well: see training/README.md, "The streaming variant".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import grammar
from .causal import CausalEncoder
from .export import export_streaming
from .model import Sizes, Transducer


def main() -> None:
    parser = argparse.ArgumentParser(description="Average streaming-variant weights and export them")
    parser.add_argument("weights", type=Path, nargs="+", help="state dicts of the same architecture")
    parser.add_argument("--output", type=Path, required=True, help="model repository to write into")
    parser.add_argument("--streaming-layers", type=int, default=3)
    parser.add_argument("--save", type=Path, help="also write the averaged state dict here")
    args = parser.parse_args()
    dicts = [torch.load(path) for path in args.weights]
    averaged = {
        key: sum(d[key].float() for d in dicts) / len(dicts) if value.is_floating_point() else value
        for key, value in dicts[0].items()
    }
    sizes = Sizes(vocab_size=len(grammar.PIECES))
    model = Transducer(sizes, CausalEncoder(sizes, args.streaming_layers))
    model.load_state_dict(averaged)
    model.eval()
    if args.save is not None:
        torch.save(model.state_dict(), args.save)
    export_streaming(model, args.output, grammar.PIECES)
    print(f"averaged {len(dicts)} runs into {args.output}")


if __name__ == "__main__":
    main()
