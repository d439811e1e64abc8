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
from moalign.training.preference import PairCollator, completion_token_logps, split_logps, tokenize_pair


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
