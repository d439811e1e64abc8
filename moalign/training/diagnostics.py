"""Held-out preference diagnostics: does the policy rank the validated eval pairs the right way round?

For each held-out pair and each prompt it can be asked under (the plain prompt x and AMoPO's K
dimension prompts x_k* = f(x, d_k)), the margin is the length-normalised log-likelihood difference
a(y_w | x) - a(y_l | x) under the policy, with no beta and no reference model, so the numbers mean
the same for every method. A training path that learns moves the accuracy and the mean margin within
a few steps; a broken one (a wrong mask, a swapped pair, an optimizer that never steps) leaves them
flat, which a loss curve alone can hide.

Metric names follow TRL's (``rewards/accuracies``, ``rewards/margins`` for the plain prompt) with
``<dimension>/accuracy`` and ``<dimension>/margin`` per dimension prompt; the trainer logs them with
TRL's ``eval_`` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moalign.data.schema import PreferenceRow
from moalign.dimensions import dimension_prompts
from moalign.training.batching import PairCollator, completion_token_logps, split_logps, tokenize_pair


def diagnostic_pairs(rows: Sequence[PreferenceRow], limit: int | None) -> list[PreferenceRow]:
    """At most ``limit`` pairs, one per prompt first (the first pair of each prompt, then the next...),
    so a capped set still covers as many held-out prompts as it can."""
    by_prompt: dict[str, list[PreferenceRow]] = {}
    for row in rows:
        by_prompt.setdefault(row.prompt_id, []).append(row)
    ordered: list[PreferenceRow] = []
    depth = 0
    while len(ordered) < len(rows):
        ordered.extend(group[depth] for group in by_prompt.values() if depth < len(group))
        depth += 1
    return ordered if limit is None else ordered[:limit]


@torch.no_grad()
def preference_diagnostics(
    model,
    tokenizer,
    rows: Sequence[PreferenceRow],
    dimensions: Sequence[str],
    template: str,
    *,
    max_length: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy (share of pairs with margin > 0) and mean margin, plain prompt and per dimension prompt.

    The dimension prompts carry the chosen response's scores, as in AMoPO's training. Returns {} for
    no pairs. The model is put in eval mode for the pass and returned to its previous mode.
    """
    if not rows:
        return {}
    names = ["rewards", *dimensions]
    collator = PairCollator(tokenizer.pad_token_id)
    features = [
        tokenize_pair(row, tokenizer, [row.prompt, *dimension_prompts(template, row.prompt, dimensions, row.chosen.scores)],
                      max_length)
        for row in rows
    ]
    was_training = model.training
    model.eval()
    margins = []
    try:
        for start in range(0, len(features), batch_size):
            batch = collator(features[start : start + batch_size])
            inputs = (batch[key].to(model.device) for key in ("input_ids", "attention_mask", "position_ids", "completion_mask"))
            token_logps, mask = completion_token_logps(model, *inputs)
            summed, lengths, _, _ = split_logps(token_logps, mask, len(names))
            averaged = summed / lengths  # (B, 1 + K, 2)
            margins.append(averaged[..., 0] - averaged[..., 1])
    finally:
        model.train(was_training)
    margin = torch.cat(margins).double()  # (pairs, 1 + K)
    metrics: dict[str, float] = {}
    for i, name in enumerate(names):
        plural = name == "rewards"  # TRL's own names for the plain prompt
        metrics[f"{name}/{'accuracies' if plural else 'accuracy'}"] = float((margin[:, i] > 0).double().mean())
        metrics[f"{name}/{'margins' if plural else 'margin'}"] = float(margin[:, i].mean())
    return metrics


#: beside a trained policy: the diagnostics its training logged before the first step and after the last
LOGGED_FILE = "heldout_preference.json"
_PREFIX = "eval_"


def logged_endpoints(history: Sequence[dict]) -> tuple[dict[str, float], dict[str, float]] | None:
    """The diagnostics a run logged at step 0 (its starting model) and at its last evaluation (the
    trained model), without the ``eval_`` prefix; None unless the run logged both."""
    logged = [
        (entry["step"], {key[len(_PREFIX):]: value for key, value in entry.items()
                         if key.startswith(_PREFIX) and "/" in key})
        for entry in history
    ]
    logged = [(step, metrics) for step, metrics in logged if metrics]
    if len(logged) < 2 or logged[0][0] != 0:
        return None
    return logged[0][1], logged[-1][1]


def logged_record(history: Sequence[dict], rows: Sequence[PreferenceRow], start_model: str) -> dict | None:
    """What :data:`LOGGED_FILE` holds: which pairs were scored, a fingerprint of the starting model,
    and both endpoints, so an evaluation of the same pairs and models can reuse them."""
    endpoints = logged_endpoints(history)
    if endpoints is None:
        return None
    return {"pairs": [row.id for row in rows], "start_model": start_model, "start": endpoints[0], "end": endpoints[1]}


def reuse_logged(record: dict | None, rows: Sequence[PreferenceRow], reference_model: str) -> dict[str, dict]:
    """The logged diagnostics that apply to an evaluation of ``rows``: the trained policy's (its
    ``end``) when the same pairs were scored, and the reference's (``start``) when the reference is
    also the model the training started from; {} when nothing applies."""
    if not record or record.get("pairs") != [row.id for row in rows]:
        return {}
    reused = {"policy": record["end"]}
    if record.get("start_model") == reference_model:
        reused["reference"] = record["start"]
    return reused
