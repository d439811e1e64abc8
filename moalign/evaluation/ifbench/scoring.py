"""Scoring answers as IFBench's ``evaluation_lib`` does: per-instruction strict and loose
verdicts, then prompt- and instruction-level accuracy (see the package docstring)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from moalign.evaluation.ifbench.loading import IFBenchPrompt
from moalign.evaluation.ifbench.verifiers import VERIFIERS, Verifier


def loose_variants(response: str) -> list[str]:
    """IFBench's 8 loose variants: first/last/both lines cut, with and without ``*``."""
    lines = response.split("\n")
    trimmed = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return trimmed + [t.replace("*", "") for t in trimmed]


def _check(
    verifier: Verifier, candidates: Iterable[str], kwargs: dict[str, Any]
) -> bool:
    # a blank answer follows nothing, even constraints that would hold vacuously
    return any(c.strip() and verifier(c, dict(kwargs)) for c in candidates)


def _all_followed(flags: Sequence[bool | None]) -> bool | None:
    return None if any(f is None for f in flags) else all(flags)


def evaluate_response(item: IFBenchPrompt, response: str | None) -> dict[str, Any]:
    """Per-instruction strict and loose verdicts; ``None`` marks an unverifiable id.

    A missing answer (``None``) is scored like an empty one: nothing followed.
    """
    text = response or ""
    variants = loose_variants(text)
    strict: list[bool | None] = []
    loose: list[bool | None] = []
    for instruction_id, kwargs in zip(item.instruction_ids, item.kwargs, strict=True):
        verifier = VERIFIERS.get(instruction_id)
        if verifier is None:
            strict.append(None)
            loose.append(None)
            continue
        followed = _check(verifier, [text], kwargs)
        strict.append(followed)
        loose.append(followed or _check(verifier, variants[1:], kwargs))
    return {
        "key": item.key,
        "instruction_ids": list(item.instruction_ids),
        "strict": strict,
        "loose": loose,
        "follow_all_strict": _all_followed(strict),
        "follow_all_loose": _all_followed(loose),
    }


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _tally(results: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[int]], Counter[str], list[int]]:
    """Per instruction id [scored, strict, loose]; unverifiable ids; prompts [scored, strict, loose]."""
    per_id: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    unverifiable: Counter[str] = Counter()
    prompts = [0, 0, 0]
    for result in results:
        for instruction_id, s, lo in zip(
            result["instruction_ids"], result["strict"], result["loose"], strict=True
        ):
            if s is None or lo is None:
                unverifiable[instruction_id] += 1
                continue
            tally = per_id[instruction_id]
            tally[0] += 1
            tally[1] += bool(s)
            tally[2] += bool(lo)
        if (
            result["follow_all_strict"] is not None
            and result["follow_all_loose"] is not None
        ):
            prompts[0] += 1
            prompts[1] += bool(result["follow_all_strict"])
            prompts[2] += bool(result["follow_all_loose"])
    return per_id, unverifiable, prompts


def _by_category(per_id: Mapping[str, list[int]]) -> dict[str, list[int]]:
    # the category is the id's family: "count" of "count:numbers"
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for instruction_id, tally in per_id.items():
        category = per_category[instruction_id.split(":", 1)[0]]
        for i in range(3):
            category[i] += tally[i]
    return per_category


def _breakdown(table: Mapping[str, list[int]]) -> dict[str, dict[str, Any]]:
    return {
        name: {"n": n, "strict": _ratio(s, n), "loose": _ratio(lo, n)}
        for name, (n, s, lo) in sorted(table.items())
    }


def ifbench_scores(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """IFBench's prompt- and instruction-level accuracy, strict and loose.

    Unverifiable instructions are counted (``unverifiable``) and left out of every
    denominator; a prompt carrying one is left out of the prompt-level denominators. An
    accuracy with an empty denominator is ``None``, not 0.
    """
    per_id, unverifiable, (prompts_scored, prompts_strict, prompts_loose) = _tally(results)
    scored = sum(t[0] for t in per_id.values())
    return {
        "prompt_level_strict_acc": _ratio(prompts_strict, prompts_scored),
        "instruction_level_strict_acc": _ratio(
            sum(t[1] for t in per_id.values()), scored
        ),
        "prompt_level_loose_acc": _ratio(prompts_loose, prompts_scored),
        "instruction_level_loose_acc": _ratio(
            sum(t[2] for t in per_id.values()), scored
        ),
        "n_prompts": len(results),
        "n_prompts_scored": prompts_scored,
        "n_instructions": sum(len(r["instruction_ids"]) for r in results),
        "n_instructions_scored": scored,
        "n_unverifiable": sum(unverifiable.values()),
        "unverifiable": dict(sorted(unverifiable.items())),
        "per_instruction": _breakdown(per_id),
        "per_category": _breakdown(_by_category(per_id)),
    }
