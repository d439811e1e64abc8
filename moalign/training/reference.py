"""Reference log-probabilities s_ref(y | x) under the frozen starting policy, cached as data.

DPO, Cal-DPO, MODPO and SPO's first round compare the policy with the model it starts from. Those
scores depend only on the starting model, the pairs, their prompts and the truncation length, so
the ``reference_logps`` stage computes them once and DVC keeps them with the data: a sweep over
``train.beta`` or the learning rate reuses them, and training never spends a forward on them.

The cache is keyed by (pair id, prompt, response) rather than by row order, so re-ordering a pair
(MODPO's primary dimension) or dropping rows still finds the right score; a key that is missing is
computed at training time instead (with a warning), so a stale or partial cache is never wrong,
only slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from moalign.data.schema import PreferenceRow, write_json, write_jsonl

logger = logging.getLogger(__name__)

SCORES_FILE = "logps.jsonl"
META_FILE = "meta.json"


def reference_key(pair_id: str, prompt: str, response: str) -> str:
    """Stable key of one scored sequence: the response in its pair, under one prompt."""
    payload = json.dumps([pair_id, prompt, response], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def phase_keys(rows: Sequence[PreferenceRow], prompts) -> list[tuple[str, str]]:
    """(chosen key, rejected key) per row, for single-prompt phases (every reference method)."""
    keys = []
    for row in rows:
        (prompt,) = prompts(row)
        keys.append((reference_key(row.id, prompt, row.chosen.text), reference_key(row.id, prompt, row.rejected.text)))
    return keys


def score_reference(
    rows: Sequence[PreferenceRow], model_dir, *, train, dimensions, dtype: str = "auto", batch_size: int = 8
) -> tuple[dict[str, float], dict]:
    """Scores of the sequences the first training phase of ``train.method`` compares with the
    starting model, and a description of them. Reference-free methods get an empty mapping.
    """
    from moalign.models import load_model_and_tokenizer
    from moalign.training.batching import PairCollator, score_pairs
    from moalign.training.phases import features_for, plan_phases

    from moalign.training.methods import get_method

    meta = {"method": train.method, "max_length": train.max_length, "model": str(model_dir), "dtype": dtype}
    if get_method(train.method).online:
        return {}, {**meta, "needed": False, "sequences": 0,
                    "reason": f"{train.method} is trained online against the reward model"}
    phase = plan_phases(rows, train, dimensions)[0]
    if not phase.method.needs_reference:
        return {}, {**meta, "needed": False, "sequences": 0,
                    "reason": f"{phase.method.name} does not compare with a reference model"}
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
    features = features_for(phase, tokenizer, dimensions.names, train.max_length)
    scored = score_pairs(model, features, PairCollator(tokenizer.pad_token_id), batch_size)
    cache = {}
    for (chosen_key, rejected_key), (chosen, rejected) in zip(phase_keys(phase.rows, phase.prompts), scored, strict=True):
        cache[chosen_key], cache[rejected_key] = chosen, rejected
    return cache, {**meta, "needed": True, "sequences": len(cache)}


def save_reference(out_dir, cache: Mapping[str, float], meta: dict) -> None:
    out_dir = Path(out_dir)
    write_jsonl(out_dir / SCORES_FILE, [{"key": key, "logp": value} for key, value in cache.items()])
    write_json(out_dir / META_FILE, meta)


def load_reference(directory, *, max_length: int) -> dict[str, float]:
    """The cached scores in ``directory``; empty (with a warning) when they were made for another
    truncation length, since the same key would then score a different token sequence."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {META_FILE}; run the reference_logps stage (dvc repro reference_logps)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("max_length") != max_length:
        logger.warning(
            "%s was scored with max_length %s, training uses %s: recomputing reference scores",
            directory, meta.get("max_length"), max_length,
        )
        return {}
    from moalign.data.schema import read_jsonl

    return {row["key"]: float(row["logp"]) for row in read_jsonl(directory / SCORES_FILE, None)}
