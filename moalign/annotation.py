"""On-policy preference pairs: sample candidates, score them with a judge, pair them.

As in the SimPO/AMoPO pipelines, the candidates come from the policy being aligned, so the pairs
sit where that policy puts its probability mass. The pairing rule is a pure function
(:func:`pair_from_candidates`) so it can be tested without a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from moalign.data.schema import PreferenceRow, ScoredCandidate, ScoredResponse, TaskPrompt
from moalign.judges.base import Judge, Scores, score_many

#: sample(prompts) -> for each prompt, its candidate responses
Sampler = Callable[[Sequence[str]], list[list[str]]]


@dataclass
class AnnotationStats:
    prompts: int = 0
    candidates: int = 0
    pairs: int = 0
    paired_prompts: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count, so no prompt vanishes unseen

    def as_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "candidates": self.candidates,
            "pairs": self.pairs,
            "paired_prompts": self.paired_prompts,
            "skipped": dict(sorted(self.skipped.items())),
        }


#: how one prompt's scored candidates become pairs (:func:`pairs_from_candidates`); annotate.pairing
Pairing = Literal["best_vs_worst", "all_separated"]
PAIRINGS: tuple[str, ...] = get_args(Pairing)


def _scored(text: str, scores: Scores) -> ScoredResponse:
    # a sampler's Completion says whether the length limit cut it off; plain strings were not
    return ScoredResponse(text=text, scores=dict(scores), truncated=getattr(text, "truncated", False))


def _row(task: TaskPrompt, pair_id: str, chosen: tuple[str, Scores], rejected: tuple[str, Scores], source: str):
    return PreferenceRow(
        id=pair_id,
        source=source,
        prompt_id=task.id,
        split=task.split,
        prompt=task.prompt,
        chosen=_scored(*chosen),
        rejected=_scored(*rejected),
    )


def pair_from_candidates(
    task: TaskPrompt, candidates: Sequence[str], scores: Sequence[Scores], source: str
) -> tuple[PreferenceRow | None, str | None]:
    """Best candidate (highest mean score) against the worst one with a different text.

    Returns (row, None) or (None, reason) when no informative pair exists: every candidate scored
    the same, or the only lower-scored candidates repeat the chosen text.
    """
    rows, reason = pairs_from_candidates(task, candidates, scores, source, "best_vs_worst")
    return (rows[0] if rows else None), reason


def pairs_from_candidates(
    task: TaskPrompt,
    candidates: Sequence[str],
    scores: Sequence[Scores],
    source: str,
    pairing: str = "best_vs_worst",
    max_pairs: int | None = None,
) -> tuple[list[PreferenceRow], str | None]:
    """The informative pairs of one prompt's scored candidates, and why there are none.

    ``best_vs_worst``: one pair, the best (highest mean score) against the worst with another text.
    ``all_separated``: every two candidates whose mean scores differ and whose texts differ, the
    higher-scored one chosen (each distinct text pair once), largest score gap first, at most
    ``max_pairs``: four candidates give up to six pairs instead of one, all of them true preferences
    under the judge. Ties are broken by position, so the result is deterministic for a given sample.
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{task.id}: {len(candidates)} candidates but {len(scores)} score sets")
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; allowed: {', '.join(PAIRINGS)}")
    means = [sum(s.values()) / len(s) for s in scores]
    best = max(range(len(candidates)), key=lambda i: (means[i], -i))
    if not any(means[i] < means[best] for i in range(len(candidates))):
        return [], "all_candidates_tied"
    if pairing == "best_vs_worst":
        distinct = [i for i in range(len(candidates))
                    if means[i] < means[best] and candidates[i].strip() != candidates[best].strip()]
        if not distinct:
            return [], "duplicate_text"
        worst = min(distinct, key=lambda i: (means[i], i))
        return [_row(task, f"{task.id}-pair", (candidates[best], scores[best]),
                     (candidates[worst], scores[worst]), source)], None
    found: dict[tuple[str, str], tuple[float, int, int]] = {}
    for i in range(len(candidates)):
        for j in range(len(candidates)):
            if means[i] > means[j] and candidates[i].strip() != candidates[j].strip():
                key = (candidates[i].strip(), candidates[j].strip())
                found.setdefault(key, (means[i] - means[j], i, j))
    if not found:
        return [], "duplicate_text"
    ranked = sorted(found.values(), key=lambda gap_i_j: (-gap_i_j[0], gap_i_j[1], gap_i_j[2]))[:max_pairs]
    rows = [
        _row(task, f"{task.id}-pair-{i}v{j}", (candidates[i], scores[i]), (candidates[j], scores[j]), source)
        for _, i, j in ranked
    ]
    return rows, None


def annotate(
    tasks: Sequence[TaskPrompt],
    sample: Sampler,
    judge: Judge,
    source: str,
    pairing: str = "best_vs_worst",
    max_pairs_per_prompt: int | None = None,
) -> tuple[list[PreferenceRow], list[ScoredCandidate], AnnotationStats]:
    """Sample, score and pair (:func:`pairs_from_candidates`). Returns the pairs, every scored
    candidate (the reward model's data, and an audit of the pairing), and counts."""
    stats = AnnotationStats(prompts=len(tasks))
    candidates_per_task = sample([task.prompt for task in tasks])
    # one batch for every candidate of every prompt: an LLM judge runs them concurrently on one client
    flat = score_many(judge, [(task, c) for task, cs in zip(tasks, candidates_per_task, strict=True) for c in cs])
    rows: list[PreferenceRow] = []
    scored: list[ScoredCandidate] = []
    offset = 0
    for task, candidates in zip(tasks, candidates_per_task, strict=True):
        scores, offset = flat[offset : offset + len(candidates)], offset + len(candidates)
        stats.candidates += len(candidates)
        scored.extend(
            ScoredCandidate(id=f"{task.id}:{i}", prompt_id=task.id, split=task.split, prompt=task.prompt, text=c,
                            scores=dict(s), truncated=getattr(c, "truncated", False))
            for i, (c, s) in enumerate(zip(candidates, scores, strict=True))
        )
        # an LLM judge that failed on a dimension leaves it out: such a candidate cannot be ranked
        complete = [i for i, s in enumerate(scores) if set(judge.dimensions) <= set(s)]
        stats.skipped["candidate_not_fully_scored"] += len(candidates) - len(complete)
        if len(complete) < 2:
            stats.skipped["fewer_than_two_scored_candidates"] += 1
            continue
        candidates, scores = [candidates[i] for i in complete], [scores[i] for i in complete]
        pairs, reason = pairs_from_candidates(task, candidates, scores, source, pairing, max_pairs_per_prompt)
        if not pairs:
            stats.skipped[reason] += 1
        stats.paired_prompts += bool(pairs)
        rows.extend(pairs)
    stats.pairs = len(rows)
    stats.skipped = +stats.skipped  # drop zero counts
    return rows, scored, stats


def responses_of(rows: Sequence[PreferenceRow]) -> list[ScoredCandidate]:
    """Each distinct (prompt, response) of the pairs' chosen and rejected sides, once, with its first
    pair's scores: a response repeated across pairs would otherwise weigh twice in the reward model."""
    seen: set[tuple[str, str, str]] = set()
    responses = []
    for row in rows:
        for side in ("chosen", "rejected"):
            response = getattr(row, side)
            if (row.prompt_id, row.prompt, response.text) not in seen:
                seen.add((row.prompt_id, row.prompt, response.text))
                responses.append(ScoredCandidate(
                    id=f"{row.id}:{side}", prompt_id=row.prompt_id, split=row.split, prompt=row.prompt,
                    text=response.text, scores=dict(response.scores), truncated=response.truncated,
                ))
    return responses


def fill_missing_scores(
    rows: Sequence[PreferenceRow], judge: Judge, dimensions: Sequence[str]
) -> tuple[list[PreferenceRow], list[dict], Counter]:
    """Loaded pairs with the dimensions their file did not score filled in by the judge.

    Only the missing (response, dimension) calls are made. A dimension the judge failed on stays
    missing, and the validation gate quarantines that pair naming the dimension. Returns the rows,
    an audit line per judged response, and counts (``judged_responses``, ``judge_failures``).
    """

    counts: Counter = Counter()
    groups: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    for index, row in enumerate(rows):
        for side in ("chosen", "rejected"):
            missing = tuple(d for d in dimensions if d not in getattr(row, side).scores)
            if missing:
                groups.setdefault(missing, []).append((index, side))
    filled = [row.model_copy(deep=True) for row in rows]
    audit = []
    for missing, members in groups.items():
        if not callable(getattr(judge, "score_batch", None)) or set(missing) - set(judge.dimensions):
            raise ValueError(
                f"pair {rows[members[0][0]].id} has no {', '.join(missing)} score in its file and the judge "
                f"({type(judge).__name__}) cannot score external prompts on them; set judge.backend to an LLM judge"
            )
        items = [
            (TaskPrompt(id=rows[i].prompt_id, split=rows[i].split, category="external", prompt=rows[i].prompt),
             getattr(rows[i], side).text)
            for i, side in members
        ]
        scores = judge.score_batch(items, dimensions=missing)
        for (i, side), got in zip(members, scores, strict=True):
            getattr(filled[i], side).scores.update(got)
            counts["judged_responses"] += 1
            counts["judge_failures"] += len(set(missing) - set(got))
            audit.append({"pair_id": rows[i].id, "side": side, "judged": list(missing), "scores": got})
    return filled, audit, counts
