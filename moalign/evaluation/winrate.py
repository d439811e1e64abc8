"""Pairwise win rates with position swap, their uncertainty, and judge verdict parsing.

A judge that sees two answers tends to favour one position. Each comparison is
therefore made twice, once in each order; the candidate wins only when both orders
agree, loses only when both agree against it, and the pair counts as a tie when the two
verdicts disagree (MT-bench's rule, Zheng et al. 2023, "Judging LLM-as-a-Judge";
Arena-Hard instead counts the two orders as separate battles, see
:mod:`moalign.evaluation.arenahard`). The win rate counts a tie as half a win.

Beside the win rate: a seeded percentile-bootstrap interval (:func:`bootstrap_ci`),
AlpacaEval 2's length-controlled win rate (:func:`length_controlled_win_rate`) and
the strict parsing of an LLM pairwise judge's verdict (:func:`parse_pairwise_verdict`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "loss", "tie"]

#: compare(first, second) -> which position the judge prefers
PairwiseJudge = Callable[[str, str], Verdict]


def swap_outcome(candidate_first: Verdict, candidate_second: Verdict) -> Outcome:
    """Combine the verdicts with the candidate shown first (as A) and second (as B)."""
    won_first = candidate_first == "A"
    won_second = candidate_second == "B"
    lost_first = candidate_first == "B"
    lost_second = candidate_second == "A"
    if won_first and won_second:
        return "win"
    if lost_first and lost_second:
        return "loss"
    return "tie"


def compare_with_swap(judge: PairwiseJudge, candidate: str, baseline: str) -> Outcome:
    return swap_outcome(judge(candidate, baseline), judge(baseline, candidate))


def win_rate(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Win rate (ties count half), with the raw counts.

    An empty list is an error, not 0 or NaN.
    """
    if not outcomes:
        raise ValueError("no comparisons to compute a win rate from")
    wins = sum(o == "win" for o in outcomes)
    ties = sum(o == "tie" for o in outcomes)
    losses = sum(o == "loss" for o in outcomes)
    n = len(outcomes)
    return {
        "win_rate": (wins + 0.5 * ties) / n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "n": n,
    }


def score_preference(scores_a: dict[str, int], scores_b: dict[str, int]) -> Verdict:
    """A pairwise verdict from per-dimension scores: the higher mean wins, equal ties.

    Only the dimensions both sides were scored on count (an LLM judge may fail on one);
    with none in common the verdict is a tie.
    """
    shared = [d for d in scores_a if d in scores_b]
    if not shared:
        return "tie"
    mean_a = sum(scores_a[d] for d in shared) / len(shared)
    mean_b = sum(scores_b[d] for d in shared) / len(shared)
    return "A" if mean_a > mean_b else "B" if mean_b > mean_a else "tie"


# -------------------------------------------------------------------------------------
# Uncertainty and length control

_OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def outcome_scores(outcomes: Sequence[Outcome]) -> np.ndarray:
    """Per-prompt scores: win 1, tie 0.5, loss 0 (what :func:`win_rate` averages)."""
    if len(outcomes) == 0:
        raise ValueError("no comparisons to compute a win rate from")
    scores = np.empty(len(outcomes))
    for index, outcome in enumerate(outcomes):
        if outcome not in _OUTCOME_SCORE:
            raise ValueError(
                f"outcome {index} is {outcome!r}; allowed: win, tie, loss"
            )
        scores[index] = _OUTCOME_SCORE[outcome]
    return scores


def bootstrap_ci(
    outcomes: Sequence[Outcome],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the win rate (ties count half), prompts resampled."""
    return bootstrap_mean_ci(outcome_scores(outcomes), n_resamples=n_resamples, confidence=confidence, seed=seed)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Seeded percentile-bootstrap confidence interval of the mean of per-prompt ``values``.

    The prompts are the resampled unit (:func:`scipy.stats.bootstrap`, ``method="percentile"``).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly in (0, 1), got {confidence}")
    scores = np.asarray(values, dtype=float)
    if scores.size == 0:
        raise ValueError("no values to compute an interval from")
    if scores.size == 1:  # scipy refuses one observation; every resample of it is that value
        return float(scores[0]), float(scores[0])
    result = stats.bootstrap(
        (scores,),
        np.mean,
        n_resamples=n_resamples,
        # blocks of at most ~4M indices (32 MiB), so a large evaluation set stays cheap
        batch=max(1, (1 << 22) // scores.size),
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# far tighter than scipy's defaults (which stop the coefficients around 1e-5), so the fit is settled
_LBFGS_OPTIONS = {"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12}


def _fit_logistic(features: np.ndarray, targets: np.ndarray, l2: float) -> np.ndarray:
    """Ridge-penalised logistic regression with soft targets in [0, 1], no intercept.

    Minimises ``mean(log(1 + exp(x.b)) - y * x.b) + l2 / 2 * |b|^2`` (strictly convex for l2 > 0).
    A soft target y equals AlpacaEval's row labelled 1 weighted y plus a row labelled 0 weighted
    1 - y. scipy, not scikit-learn: the latter is only a transitive dependency (of mlflow).
    """
    n, k = features.shape

    def loss_and_gradient(beta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = features @ beta
        loss = np.mean(np.logaddexp(0.0, margin) - targets * margin) + 0.5 * l2 * beta @ beta
        gradient = features.T @ (special.expit(margin) - targets) / n + l2 * beta
        return float(loss), gradient

    fit = optimize.minimize(
        loss_and_gradient, np.zeros(k), jac=True, method="L-BFGS-B", options=_LBFGS_OPTIONS
    )
    return fit.x


def _length_controlled_features(
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    instruction_difficulty: Sequence[float] | None,
    n: int,
) -> tuple[np.ndarray, list[str], float | None]:
    """The GLM's columns (model identity, tanh of the standardised length gap, difficulty if given),
    their names, and the length gap's standard deviation (None when 0 or undefined)."""
    policy = np.asarray(policy_lengths, dtype=float)
    baseline = np.asarray(baseline_lengths, dtype=float)
    if policy.shape != (n,) or baseline.shape != (n,):
        raise ValueError(f"{n} outcomes but {policy.size} policy and {baseline.size} baseline lengths")
    if not (np.all(np.isfinite(policy)) and np.all(np.isfinite(baseline))):
        raise ValueError("lengths must be finite numbers")
    delta = policy - baseline
    std = float(np.std(delta, ddof=1)) if n > 1 else 0.0
    identifiable = np.isfinite(std) and std > 0
    columns = [np.ones(n), np.tanh(delta / std) if identifiable else np.zeros(n)]
    names = ["model", "length"]
    if instruction_difficulty is not None:
        difficulty = np.asarray(instruction_difficulty, dtype=float)
        if difficulty.shape != (n,) or not np.all(np.isfinite(difficulty)):
            raise ValueError(f"instruction_difficulty must be {n} finite numbers, got shape {difficulty.shape}")
        columns.append(difficulty)
        names.append("instruction_difficulty")
    return np.column_stack(columns), names, std if identifiable else None


# Length control as AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval"; read in
# tatsu-lab/alpaca_eval src/alpaca_eval/metrics/glm_winrate.py, GLM_INFO["length_controlled_v1"]).
# AlpacaEval fits, without intercept, P(model preferred on i) = sigmoid(theta + phi * tanh(delta_i /
# std(delta)) + psi * difficulty_i) on soft targets, and reports LC = mean_i sigmoid(theta + psi *
# difficulty_i). Its delta is baseline minus model (only the sign of phi differs from ours). Kept
# here: the features, pandas' ddof=1 std, soft targets (AlpacaEval's duplicated weighted rows).
# Left out: the instruction difficulty by default (AlpacaEval precomputed it from many models'
# annotations of its own 805 instructions; one policy against one baseline cannot estimate it), the
# rows of two "gamed" verbose/concise baselines (total weight 0.2; we have no such annotations),
# and LogisticRegressionCV's L1 penalty with C chosen by 5-fold GroupKFold (unstable on a few
# hundred prompts): a small ridge on the mean log-loss instead keeps the fit finite under
# separation (every comparison won). Lengths are in the caller's unit; AlpacaEval uses characters.


def length_controlled_win_rate(
    outcomes: Sequence[Outcome],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    *,
    instruction_difficulty: Sequence[float] | None = None,
    l2: float = 1e-4,
) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled (LC) win rate of a policy against one baseline.

    Soft targets (tie 0.5) fitted on the model term, ``tanh(delta / std(delta, ddof=1))`` with
    ``delta = policy - baseline`` length, and the difficulty when given; ridge ``l2``. LC is the
    mean fitted probability with the length term at 0. With ``std(delta)`` 0 or undefined the
    length term is 0 and ``length_term_identifiable`` False (LC is then about the raw win rate).
    """
    targets = outcome_scores(outcomes)
    n = targets.size
    features, names, std = _length_controlled_features(policy_lengths, baseline_lengths, instruction_difficulty, n)
    if l2 <= 0:
        raise ValueError(f"l2 must be positive (it keeps the fit finite), got {l2}")
    beta = _fit_logistic(features, targets, l2)
    # the prediction had the two answers been equally long: length column set to 0
    counterfactual = features.copy()
    counterfactual[:, 1] = 0.0
    return {
        "length_controlled_win_rate": float(special.expit(counterfactual @ beta).mean()),
        "win_rate": float(targets.mean()),
        "coefficients": {name: float(value) for name, value in zip(names, beta, strict=True)},
        "std_delta_len": std,
        "length_term_identifiable": std is not None,
        "n": n,
    }


# -------------------------------------------------------------------------------------
# Verdicts of LLM pairwise judges

#: Final-verdict labels: MT-bench's pairwise prompts (``[[A]]``, ``[[B]]``, ``[[C]]``
#: for a tie; FastChat ``fastchat/llm_judge/data/judge_prompts.jsonl``, "pair-v2") and
#: Arena-Hard v0.1's five (arena-hard-auto ``config/judge_config.yaml``). A strong
#: Arena-Hard verdict reads as a plain win here; :mod:`moalign.evaluation.arenahard`
#: has the weighted view.
PAIRWISE_LABELS: dict[str, Verdict] = {
    "A": "A",
    "B": "B",
    "C": "tie",
    "A>>B": "A",
    "A>B": "A",
    "A=B": "tie",
    "B>A": "B",
    "B>>A": "B",
}

# Anything in double brackets made of these characters is an attempted label, so an
# unknown one ([[A>>>B]], [[AB]]) makes the reply unparsable instead of being skipped.
_LABEL_PATTERN = re.compile(r"\[\[([ABC<>=]+)\]\]")


def parse_pairwise_label(text: str) -> str | None:
    """The one final-verdict label in ``text`` (``"A>>B"``, ``"C"``...), or None.

    Strict: exactly one distinct label in double brackets. The same label repeated
    counts once (as arena-hard-auto's ``get_score`` in ``gen_judgment.py``, which keeps
    a reply whose matches form a set of one). No label, two different labels, or an
    unknown one (``[[A>>>B]]``, ``[[B<A]]``, ``[[a]]``) gives None. FastChat is laxer
    for ``[[A]]`` replies (whichever of ``[[A]]``, ``[[B]]``, ``[[C]]`` it tests first
    and finds as a substring wins), which hides a reply naming two.
    """
    found = set(_LABEL_PATTERN.findall(text or ""))
    if len(found) != 1:
        return None
    label = found.pop()
    return label if label in PAIRWISE_LABELS else None


def parse_pairwise_verdict(text: str) -> Verdict | None:
    """The position a pairwise judge's reply prefers: "A", "B", "tie", or None.

    See :func:`parse_pairwise_label` for what parses.
    """
    label = parse_pairwise_label(text)
    return None if label is None else PAIRWISE_LABELS[label]
