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
    """Percentile-bootstrap confidence interval of the mean of per-prompt ``values``.

    The prompts are the resampled unit: each of ``n_resamples`` replicates draws ``len(values)``
    values with replacement and takes their mean; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (numpy's default linear interpolation) of the replicates.
    Seeded (``numpy.random.default_rng(seed)``): the same input gives the same interval.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly in (0, 1), got {confidence}")
    scores = np.asarray(values, dtype=float)
    if scores.size == 0:
        raise ValueError("no values to compute an interval from")
    n = scores.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # blocks of at most ~4M indices (32 MiB), so a large evaluation set stays cheap
    block = max(1, (1 << 22) // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        draws = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = scores[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _fit_logistic(
    features: np.ndarray, targets: np.ndarray, l2: float, max_iter: int = 100
) -> np.ndarray:
    """Ridge-penalised logistic regression with soft targets in [0, 1], by Newton.

    Minimises ``mean(log(1 + exp(x.b)) - y * x.b) + l2 / 2 * |b|^2``, no intercept (the
    caller puts a column of ones in ``features``). A soft target y equals AlpacaEval's
    trick of a row labelled 1 weighted y plus a row labelled 0 weighted 1 - y. The
    objective is strictly convex for ``l2 > 0``; step halving keeps each step a descent.

    A few lines of numpy rather than scikit-learn: scikit-learn is in the environment
    only as a transitive dependency of mlflow, not a declared dependency of moalign.
    """
    n, k = features.shape

    def objective(beta: np.ndarray) -> float:
        margin = features @ beta
        loss = np.mean(np.logaddexp(0.0, margin) - targets * margin)
        return float(loss + 0.5 * l2 * beta @ beta)

    beta = np.zeros(k)
    current = objective(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(features @ beta)))
        gradient = features.T @ (p - targets) / n + l2 * beta
        curvature = (features * (p * (1.0 - p))[:, None]).T @ features / n
        step = np.linalg.solve(curvature + l2 * np.eye(k), gradient)
        scale = 1.0
        while True:
            candidate = beta - scale * step
            value = objective(candidate)
            if value <= current or scale < 1e-10:
                break
            scale /= 2.0
        if value > current:
            break
        beta, current = candidate, value
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return beta


def length_controlled_win_rate(
    outcomes: Sequence[Outcome],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    *,
    instruction_difficulty: Sequence[float] | None = None,
    l2: float = 1e-4,
) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled (LC) win rate of a policy against one baseline.

    Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
    Automatic Evaluators". Implementation read: ``tatsu-lab/alpaca_eval``,
    ``src/alpaca_eval/metrics/glm_winrate.py`` (``GLM_INFO["length_controlled_v1"]``,
    ``_get_featurized_data``, ``fit_LogisticRegressionCV``,
    ``get_length_controlled_winrate``).

    **What AlpacaEval does.** The judge's preference for the model over the baseline
    on instruction i, ``y_i`` (1 model, 0 baseline, 0.5 draw), is the soft target of a
    logistic regression without intercept on the formula ``np.tanh(std_delta_len) +
    instruction_difficulty + not_gamed_baseline - 1``:

    * ``std_delta_len``: the two outputs' length difference in characters divided by
      its standard deviation over the instructions (pandas ``std``, ddof=1);
    * ``instruction_difficulty``: a per-instruction value AlpacaEval precomputed from
      many models' annotations (downloaded from the Hugging Face hub);
    * ``not_gamed_baseline``: 1 on the model's rows, the model-identity term.

    The fit (scikit-learn ``LogisticRegressionCV``: L1 penalty, liblinear, C chosen by
    5-fold GroupKFold) also takes annotations of two "gamed" (verbose and concise)
    versions of the baseline, identity term 0, with total weight 0.2; they anchor the
    length and difficulty coefficients. LC is the mean over the instructions of the
    fitted probability with the length term set to 0::

        fit   P(model preferred on i) = sigmoid(theta + phi * tanh(delta_i / std(delta))
                                                + psi * difficulty_i)
        LC  = mean_i sigmoid(theta + psi * difficulty_i)

    **What is implemented here**, for one policy against one baseline on our prompts:

    * the same features: the identity term (a column of ones),
      ``tanh(delta / std(delta))`` with ``delta = policy_length - baseline_length`` and
      ``std`` with ddof=1 (AlpacaEval's code takes baseline minus model, which only
      flips the sign of the fitted length coefficient), and the instruction-difficulty
      term **only when** ``instruction_difficulty`` is given. AlpacaEval's values exist
      only for its own 805 instructions and come from many models' annotations; one
      policy against one baseline gives one comparison per prompt and cannot estimate
      them, so by default the term is left out and LC is ``sigmoid(theta)``;
    * soft targets (tie = 0.5), as AlpacaEval's duplicated-row weighting;
    * **no gamed-baseline rows and no cross-validated L1 penalty**: we have no
      verbose/concise baseline annotations, and cross-validating C on a few hundred
      prompts is unstable. A small ridge penalty instead (``l2`` on the mean log-loss,
      1e-4 by default) keeps the Newton fit finite when the outcomes separate (every
      comparison won, say);
    * when ``std(delta)`` is 0 or undefined (fewer than two prompts, or every length
      difference equal) length cannot be told apart from the identity term: the length
      feature is then 0, ``length_term_identifiable`` is False, and LC is the
      model-only fit (about the raw win rate).

    Lengths are in whatever unit the caller passes; AlpacaEval uses characters
    (``len(text)``). Returns the LC and raw win rates, the fitted coefficients
    (``model``, ``length``, and ``instruction_difficulty`` when given),
    ``std_delta_len``, ``length_term_identifiable`` and ``n``.
    """
    targets = outcome_scores(outcomes)
    n = targets.size
    policy = np.asarray(policy_lengths, dtype=float)
    baseline = np.asarray(baseline_lengths, dtype=float)
    if policy.shape != (n,) or baseline.shape != (n,):
        raise ValueError(
            f"{n} outcomes but {policy.size} policy and "
            f"{baseline.size} baseline lengths"
        )
    if not (np.all(np.isfinite(policy)) and np.all(np.isfinite(baseline))):
        raise ValueError("lengths must be finite numbers")
    if l2 <= 0:
        raise ValueError(f"l2 must be positive (it keeps the fit finite), got {l2}")
    delta = policy - baseline
    std = float(np.std(delta, ddof=1)) if n > 1 else float("nan")
    identifiable = bool(np.isfinite(std) and std > 0)
    length_feature = np.tanh(delta / std) if identifiable else np.zeros(n)
    columns = [np.ones(n), length_feature]
    names = ["model", "length"]
    if instruction_difficulty is not None:
        difficulty = np.asarray(instruction_difficulty, dtype=float)
        if difficulty.shape != (n,) or not np.all(np.isfinite(difficulty)):
            raise ValueError(
                f"instruction_difficulty must be {n} finite numbers, "
                f"got shape {difficulty.shape}"
            )
        columns.append(difficulty)
        names.append("instruction_difficulty")
    features = np.column_stack(columns)
    beta = _fit_logistic(features, targets, l2)
    # the prediction had the two answers been equally long: length column set to 0
    counterfactual = features.copy()
    counterfactual[:, 1] = 0.0
    predicted = 1.0 / (1.0 + np.exp(-(counterfactual @ beta)))
    return {
        "length_controlled_win_rate": float(predicted.mean()),
        "win_rate": float(targets.mean()),
        "coefficients": {
            name: float(value) for name, value in zip(names, beta, strict=True)
        },
        "std_delta_len": std if identifiable else None,
        "length_term_identifiable": identifiable,
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
