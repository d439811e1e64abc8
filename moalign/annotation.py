"""On-policy preference pairs: sample candidates, score them with a judge, pair them.

As in the SimPO/AMoPO pipelines, the candidates come from the policy being aligned, so the pairs
sit where that policy puts its probability mass. The pairing rule is a pure function
(:func:`pair_from_candidates`) so it can be tested without a model.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from moalign.data.schema import PreferenceRow, ScoredCandidate, ScoredResponse, TaskPrompt, distinct_responses
from moalign.judges.base import Judge, Scores, score_many

logger = logging.getLogger(__name__)

#: sample(prompts) -> for each prompt, its candidate responses
Sampler = Callable[[Sequence[str]], list[list[str]]]


@dataclass
class AnnotationStats:
    prompts: int = 0
    candidates: int = 0
    pairs: int = 0
    paired_prompts: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count, so no prompt vanishes unseen
    judge_failed: dict | None = None  # judge_failure_summary(); None for a judge that cannot fail

    def as_dict(self) -> dict:
        stats = {
            "prompts": self.prompts,
            "candidates": self.candidates,
            "pairs": self.pairs,
            "paired_prompts": self.paired_prompts,
            "skipped": dict(sorted(self.skipped.items())),
        }
        return stats if self.judge_failed is None else {**stats, "judge_failed": self.judge_failed}


def judge_failure_summary(judge: Judge, items_failed: int) -> dict | None:
    """What the stage summary says of the judge's failed calls: ``items`` left without a score on
    some dimension, the failed ``calls`` ``by_kind`` and the ``endpoint`` (an LLM judge's
    ``failure_summary``); None for a judge without one (the programmatic judge never fails)."""
    summary = getattr(judge, "failure_summary", None)
    return {"items": items_failed, **summary()} if callable(summary) else None


def describe_judge_failures(stats: Mapping) -> str | None:
    """The stage's closing line on judge failures, or None when there were none."""
    failed = stats.get("judge_failed") or {}
    if not failed.get("calls"):
        return None
    kinds = ", ".join(f"{kind} {count}" for kind, count in failed["by_kind"].items())
    return (f"the judge at {failed['endpoint']} failed {failed['calls']} calls ({kinds}) after its retries: "
            f"{failed['items']} items lack a score on some dimension; a rerun asks again the calls that got no reply")


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
    stats.judge_failed = judge_failure_summary(judge, stats.skipped["candidate_not_fully_scored"])
    stats.skipped = +stats.skipped  # drop zero counts
    return rows, scored, stats


def responses_of(rows: Sequence[PreferenceRow]) -> list[ScoredCandidate]:
    """Each distinct (prompt, response) of the pairs' chosen and rejected sides, with its first pair's scores."""
    return distinct_responses(
        ScoredCandidate(id=f"{row.id}:{side}", prompt_id=row.prompt_id, split=row.split, prompt=row.prompt,
                        text=response.text, scores=dict(response.scores), truncated=response.truncated)
        for row in rows for side, response in (("chosen", row.chosen), ("rejected", row.rejected))
    )


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


# ------------------------------------------------------------------------------------------------
# the annotate stage


SOURCE = "embedded-task"  # the source of the embedded task's pairs


class AnnotationInputError(ValueError):
    """The stage's inputs cannot be annotated: a bad file, too few prompts, a duplicate id."""


def annotate_stage(config, tasks, model_dir, out_dir, journal) -> dict:
    """The annotate stage: ``data.source: embedded`` samples on-policy candidates for the task pool at
    ``tasks`` from ``model_dir`` (journaled in ``journal``), ``file`` loads ``data.path`` and judges
    only the scores it lacks. Writes ``pairs.jsonl``, ``candidates.jsonl`` (every scored response),
    ``stats.json`` and, for a file, ``judged.jsonl`` and ``rejected.jsonl`` into ``out_dir``; returns
    the stats."""
    from pathlib import Path

    from moalign.data.schema import write_json, write_jsonl
    from moalign.judges import open_judge

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_judge(config.judge, config.dimensions.names) as judge:
        if config.data.source == "file":
            rows, audit, stats = annotate_from_file(config, judge, out_dir / REJECTED_FILE)
            write_jsonl(out_dir / "judged.jsonl", audit)
            candidates = responses_of(rows)
        else:
            rows, candidates, stats = annotate_task(config, tasks, model_dir, judge, journal)
    write_jsonl(out_dir / "pairs.jsonl", rows)
    write_jsonl(out_dir / "candidates.jsonl", candidates)
    write_json(out_dir / "stats.json", stats)
    return stats


def annotate_task(config, tasks, model_dir, judge, journal):
    """The embedded task's pairs: ``annotate.*`` candidates per prompt sampled from ``model_dir``,
    judged and paired (:func:`annotate`); returns (pairs, scored candidates, stats)."""
    from moalign.data.schema import read_jsonl
    from moalign.generation import DecodingConfig, generate_resumable
    from moalign.models import model_fingerprint
    from moalign.models import load_model_and_tokenizer

    section = config.annotate
    chosen = select_prompts(read_jsonl(tasks, TaskPrompt), section.n_train_prompts, section.n_eval_prompts)
    policy, tokenizer = load_model_and_tokenizer(model_dir, config.model.dtype)
    decoding = DecodingConfig(
        max_new_tokens=section.max_new_tokens,
        do_sample=True,
        temperature=section.temperature,
        top_p=section.top_p,
        num_return_sequences=section.candidates_per_prompt,
        batch_size=max(1, section.batch_size // section.candidates_per_prompt),
        seed=config.seed,
        **config.generation.decoding_fields(),
    )
    logger.info("sampling %d candidates for %d prompts", section.candidates_per_prompt, len(chosen))
    model_id = model_fingerprint(model_dir)

    def sample(prompts: list[str]) -> list[list[str]]:
        # annotate() asks for the chosen tasks' prompts in order: the task ids key the journal
        keyed = dict(zip((task.id for task in chosen), prompts, strict=True))
        done = generate_resumable(policy, tokenizer, keyed, decoding, journal, model_id=model_id,
                                  description="annotate")
        return [done[key] for key in keyed]

    rows, candidates, stats = annotate(chosen, sample, judge, SOURCE, section.pairing, section.max_pairs_per_prompt)
    return rows, candidates, stats.as_dict()


REJECTED_FILE = "rejected.jsonl"


def annotate_from_file(config, judge, rejected_path):
    """``data.path``'s pairs (``data.format``) with the scores the file lacks judged; returns (pairs,
    an audit line per judged response, stats). The records the loader left out go to
    ``rejected_path`` with their place and reason; past ``validate.max_quarantine_fraction`` of the
    file the stage stops there, before any judge call is paid for."""
    from moalign.data.loaders import LoaderError, load_pairs
    from moalign.data.schema import write_jsonl

    data = config.data
    try:
        rows, loaded = load_pairs(
            data.path, data.format, config.dimensions.names, eval_fraction=data.eval_fraction,
            pair_by=data.pair_by, reverse_scores=data.reverse_scores, score_scale=data.score_scale,
            max_pairs=data.max_pairs,
        )
    except (LoaderError, FileNotFoundError) as error:
        raise AnnotationInputError(str(error)) from None
    write_jsonl(rejected_path, [entry.as_dict() for entry in loaded.rejected])
    logger.info("%d pairs from %d records of %s (%s), %d rejected", len(rows), loaded.records, data.path, data.format,
                len(loaded.rejected))
    limit = config.validate_.max_quarantine_fraction
    if loaded.rejected and (loaded.rejected_fraction > limit or not rows):
        first = "\n  ".join(entry.reason for entry in loaded.rejected[:3])
        raise AnnotationInputError(
            f"{len(loaded.rejected)} of {loaded.records} records of {data.path} cannot be used "
            f"({loaded.rejected_fraction:.1%}, above validate.max_quarantine_fraction={limit}); the first:\n  {first}\n"
            f"every one, with its reason, is in {rejected_path}"
        )
    try:
        rows, audit, judged = fill_missing_scores(rows, judge, config.dimensions.names)
    except ValueError as error:
        raise AnnotationInputError(str(error)) from None
    stats = {**loaded.as_dict(), **dict(judged), "source": str(data.path), "format": data.format}
    # an item here is a judged response; the validate stage quarantines its pair (scores_complete)
    failed = judge_failure_summary(judge, sum(bool(set(line["judged"]) - set(line["scores"])) for line in audit))
    return rows, audit, stats if failed is None else {**stats, "judge_failed": failed}


def select_prompts(pool: Sequence[TaskPrompt], n_train: int, n_eval: int) -> list[TaskPrompt]:
    """The first n prompts of each split (the pool is shuffled within a split when generated)."""
    train = [t for t in pool if t.split == "train"]
    held_out = [t for t in pool if t.split == "eval"]
    for name, have, want in (("train", train, n_train), ("eval", held_out, n_eval)):
        if want > len(have):
            raise AnnotationInputError(f"annotate.n_{name}_prompts={want} but the pool has {len(have)} {name} prompts")
    chosen = train[:n_train] + held_out[:n_eval]
    seen: set[str] = set()
    for task in chosen:
        if task.id in seen:
            raise AnnotationInputError(f"prompt id {task.id!r} appears twice in the prompt pool")
        seen.add(task.id)
    return chosen
