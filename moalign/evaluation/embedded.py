"""Evaluation of a policy against its reference on held-out prompts with a per-dimension judge.

For each prompt: both responses scored per dimension, and a pairwise verdict with position swap
(derived from the judge's scores, see :func:`moalign.evaluation.winrate.score_preference`). Pure:
generation happens before, files are written after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import mean

from moalign.data.schema import TaskPrompt
from moalign.evaluation.winrate import (
    Outcome,
    bootstrap_ci,
    bootstrap_mean_ci,
    compare_with_swap,
    length_controlled_win_rate,
    score_preference,
    win_rate,
)
from moalign.judges.base import Judge, score_many


def _summary(scores: list[dict[str, int]], responses: Sequence[str], dimensions: Sequence[str]) -> dict:
    # a dimension an LLM judge failed on is left out of that response's mean, and counted
    per_dimension = {d: mean(s[d] for s in scores if d in s) if any(d in s for s in scores) else None for d in dimensions}
    known = [v for v in per_dimension.values() if v is not None]
    return {
        "scores": per_dimension,
        "mean_score": mean(known) if known else None,
        "judge_failures": sum(d not in s for s in scores for d in dimensions),
        # reported beside every win rate, as the papers do, because judges favour length
        "avg_words": mean(len(r.split()) for r in responses),
    }


def win_rate_report(
    outcomes: Sequence[Outcome | None], policy: Sequence[str], reference: Sequence[str], seed: int = 0
) -> dict:
    """The win rate with its 95% bootstrap interval and the length-controlled win rate (characters,
    as AlpacaEval counts them), since judges favour longer answers and the papers report both, and
    both sides' average length in words beside them.

    A None outcome (the judge gave no verdict) is left out and counted in ``failures``; with no
    verdict at all the rates are None rather than an error, so the other results still get written.
    """
    if not (len(outcomes) == len(policy) == len(reference)):
        raise ValueError(f"{len(outcomes)} outcomes but {len(policy)} and {len(reference)} responses")
    judged = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    lengths = {
        "avg_words": mean(len(t.split()) for t in policy) if policy else None,
        "baseline_avg_words": mean(len(t.split()) for t in reference) if reference else None,
        "failures": len(outcomes) - len(judged),
    }
    if not judged:
        return {"win_rate": None, "ci95_low": None, "ci95_high": None, "length_controlled_win_rate": None,
                "wins": 0, "ties": 0, "losses": 0, "n": 0, **lengths}
    kept = [outcomes[i] for i in judged]
    report = win_rate(kept)
    report["ci95_low"], report["ci95_high"] = bootstrap_ci(kept, seed=seed)
    controlled = length_controlled_win_rate(
        kept, [len(policy[i]) for i in judged], [len(reference[i]) for i in judged]
    )
    report["length_controlled_win_rate"] = controlled["length_controlled_win_rate"]
    report["length_term_identifiable"] = controlled["length_term_identifiable"]
    return {**report, **lengths}


#: (prompt, policy answer, reference answer) -> the policy's outcome per item, None where the judge
#: gave no verdict (an LLM pairwise judge asked in both orders)
PairwiseOutcomes = Callable[[Sequence[tuple[TaskPrompt, str, str]]], list[Outcome | None]]


def evaluate_against_reference(
    tasks: Sequence[TaskPrompt],
    policy: Sequence[str],
    reference: Sequence[str],
    judge: Judge,
    pairwise: PairwiseOutcomes | None = None,
    pairwise_name: str | None = None,
) -> tuple[list[dict], dict]:
    """Per-prompt rows and the metrics dict (policy, reference, win rate of policy vs reference).

    The win rate comes from ``pairwise`` when given (an LLM asked which answer is better, named
    ``pairwise_name`` in the metrics), else from the judge's per-dimension scores.
    """
    if not (len(tasks) == len(policy) == len(reference)):
        raise ValueError(f"{len(tasks)} prompts but {len(policy)} policy and {len(reference)} reference responses")
    rows, outcomes, policy_scores, reference_scores = [], [], [], []
    # one batch for every response: an LLM judge then runs its calls concurrently
    scored = score_many(judge, [(task, text) for task, ours, theirs in zip(tasks, policy, reference, strict=True) for text in (ours, theirs)])
    verdicts = pairwise(list(zip(tasks, policy, reference, strict=True))) if pairwise is not None else None
    for index, (task, ours, theirs) in enumerate(zip(tasks, policy, reference, strict=True)):
        cache = {ours: scored[2 * index], theirs: scored[2 * index + 1]}
        if verdicts is not None:
            outcome = verdicts[index]
        else:
            outcome = compare_with_swap(lambda a, b, cache=cache: score_preference(cache[a], cache[b]), ours, theirs)
        outcomes.append(outcome)
        policy_scores.append(cache[ours])
        reference_scores.append(cache[theirs])
        rows.append(
            {
                "prompt_id": task.id,
                "category": task.category,
                "prompt": task.prompt,
                "policy": {"text": ours, "scores": cache[ours]},
                "reference": {"text": theirs, "scores": cache[theirs]},
                "outcome": outcome,
            }
        )
    dims = judge.dimensions
    metrics = {
        "policy": _summary(policy_scores, policy, dims),
        "reference": _summary(reference_scores, reference, dims),
        "win_rate_vs_reference": {
            **win_rate_report(outcomes, policy, reference),
            "judge": pairwise_name if pairwise is not None else "per-dimension scores",
        },
        "score_changes": score_changes(policy_scores, reference_scores, dims),
        "n_prompts": len(tasks),
    }
    return rows, metrics


def score_changes(policy: Sequence[dict[str, int]], reference: Sequence[dict[str, int]], dimensions: Sequence[str]) -> dict:
    """Policy minus reference per dimension and on the mean score, with a 95% paired bootstrap interval
    over prompts: a run that buys one dimension with another shows it, with its uncertainty.

    Only prompts where both answers were scored on a dimension count for it (``n``); the mean score's
    change uses the prompts scored on every dimension.
    """
    changes: dict[str, dict] = {}
    for name in (*dimensions, "mean_score"):
        dims = dimensions if name == "mean_score" else (name,)
        deltas = [
            mean(ours[d] for d in dims) - mean(theirs[d] for d in dims)
            for ours, theirs in zip(policy, reference, strict=True)
            if all(d in ours and d in theirs for d in dims)
        ]
        if not deltas:
            changes[name] = {"delta": None, "ci95_low": None, "ci95_high": None, "n": 0}
            continue
        low, high = bootstrap_mean_ci(deltas)
        changes[name] = {"delta": mean(deltas), "ci95_low": low, "ci95_high": high, "n": len(deltas)}
    return changes
