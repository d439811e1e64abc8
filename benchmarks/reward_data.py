"""Which data makes MOSLIM's reward heads generalise: the paired responses or every scored candidate.

Trains the ``train_reward`` stage's model (``params.yaml``'s ``reward`` section, the demo's heads)
once per row, on the demo's annotation, and measures every row on the same held-out responses (all
scored candidates of the eval prompts). Each cell is eval accuracy / majority-class floor and the
gain's 95 % bootstrap interval (``moalign.rewards.training.head_metrics``):

* ``pairs``      -- each distinct response of the validated train pairs (``responses_of``), what the
  stage trained on before it read ``candidates.jsonl``;
* ``candidates`` -- every scored candidate of the train prompts, what the stage trains on now.

Run from the repository root after ``dvc repro train_reward`` (it needs ``models/base``,
``data/annotated`` and ``data/validated``)::

    .venv/bin/python benchmarks/reward_data.py --epochs 2 4

Each row is a full training (minutes on 2 cores): run it alone on the machine. Nothing is saved
except checkpoints in a temporary folder; the script measures, it never fails on a missed target.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moalign.annotation import responses_of
from moalign.config import load_params
from moalign.data.schema import PreferenceRow, ScoredCandidate, read_jsonl
from moalign.models import resolve_dtype
from moalign.rewards.model import MultiHeadRewardModel
from moalign.rewards.training import reward_examples, split_candidates, train_reward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, default=Path("models/base"))
    parser.add_argument("--candidates", type=Path, default=Path("data/annotated/candidates.jsonl"))
    parser.add_argument("--pairs", type=Path, default=Path("data/validated/train.jsonl"))
    parser.add_argument("--data", nargs="+", choices=["pairs", "candidates"], default=["pairs", "candidates"])
    parser.add_argument("--epochs", nargs="+", type=float, default=None, help="default: reward.epochs")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    config = load_params(args.params)
    dims, classes, section = list(config.dimensions.names), config.reward_classes, config.reward
    train_candidates, eval_candidates = split_candidates(read_jsonl(args.candidates, ScoredCandidate))
    sources = {"pairs": responses_of(read_jsonl(args.pairs, PreferenceRow)), "candidates": train_candidates}
    held_out = reward_examples(eval_candidates, dims, classes)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    print(f"held-out: {len(held_out)} responses to the eval prompts; heads {dims}")
    print("| training data | responses | epochs | seconds | " + " | ".join(dims) + " |")
    print("|---" * (4 + len(dims)) + "|")
    for epochs in args.epochs or [section.epochs]:
        for name in args.data:
            train = reward_examples(sources[name], dims, classes)
            model = MultiHeadRewardModel.from_backbone(args.model, dims, classes, dtype=resolve_dtype(config.model.dtype),
                                                       seed=config.seed)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as checkpoints:
                result = train_reward_model(
                    model, tokenizer, train, held_out, output_dir=checkpoints, learning_rate=section.learning_rate,
                    epochs=epochs, batch_size=section.batch_size, max_length=section.max_length, seed=config.seed,
                    save_steps=10**9, top_layers=section.top_layers,
                )
            seconds = time.perf_counter() - start
            cells = [f"{m['accuracy']:.2f} / {m['majority_baseline']:.2f} [{m['gain_ci95'][0]:+.2f}, "
                     f"{m['gain_ci95'][1]:+.2f}]" for m in (result["eval"][d] for d in dims)]
            print(f"| {name} | {len(train)} | {epochs:g} | {seconds:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
