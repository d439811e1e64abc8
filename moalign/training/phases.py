"""The Trainer runs a ``train.method`` needs, and the prompts each pair is scored under.

Most methods are one phase on the plain prompt; AMoPO scores each pair under its K dimension prompts
x_k* = f(x, d_k); SPO runs one phase per dimension; controllable CPO puts the chosen response's scores
as tags before the prompt and runs SFT, then DPO (:data:`moalign.training.methods.METHODS` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moalign.control_tags import tag_prompt
from moalign.data.schema import PreferenceRow
from moalign.dimensions import dimension_prompts
from moalign.training.batching import tokenize_pair
from moalign.training.methods import LOSSES, Loss, get_method

logger = logging.getLogger(__name__)


def orient_by_dimension(rows: Sequence[PreferenceRow], dimension: str) -> tuple[list[PreferenceRow], dict]:
    """Pairs re-ordered so chosen is the better response on ``dimension`` (MODPO's primary objective).

    Pairs are built on the mean score; on one dimension the rejected response can be the better one
    (flipped here) or both can tie (kept as built, and counted).
    """
    oriented, counts = [], {"flipped": 0, "tied": 0}
    for row in rows:
        chosen, rejected = row.chosen.scores[dimension], row.rejected.scores[dimension]
        if rejected > chosen:
            row = row.model_copy(update={"chosen": row.rejected, "rejected": row.chosen})
            counts["flipped"] += 1
        elif rejected == chosen:
            counts["tied"] += 1
        oriented.append(row)
    return oriented, counts


ALL_DIMENSIONS = "all_dimensions"


def pair_prompts(
    row: PreferenceRow, method: Loss, dimensions: Sequence[str], template: str, all_dimensions: bool = False
) -> list[str]:
    """The prompts a pair is scored under: AMoPO's x_k* = f(x, d_k) for each dimension, else x.

    ``all_dimensions`` adds the AMoPO authors' extra prompt (their code's "no_object" slot) that asks
    for every dimension at once, scored and weighted like one more dimension; it is built from the
    original prompt too, so no dimension prefix accumulates.
    """
    if not method.dimension_prompts:
        return [row.prompt]
    prompts = dimension_prompts(template, row.prompt, dimensions, row.chosen.scores)
    if all_dimensions:
        every = " and ".join(d.replace("_", " ") for d in dimensions)
        mean = round(sum(row.chosen.scores[d] for d in dimensions) / len(dimensions))
        prompts.append(template.format(dimension=every, score=mean, prompt=row.prompt))
    return prompts


def objective_dimensions(train, dimensions: Sequence[str]) -> tuple[str, ...]:
    """Names of the prompts AMoPO weighs: the dimensions, plus the authors' all-dimensions prompt."""
    extra = (ALL_DIMENSIONS,) if train.weights == "authors_code" else ()
    return (*dimensions, *extra)


@dataclass(frozen=True)
class Phase:
    """One Trainer run of a schedule: most methods have one, SPO one per dimension, CPO two."""

    name: str
    method: Loss
    rows: list[PreferenceRow]
    prompts: Callable[[PreferenceRow], list[str]]
    margin_from_previous: bool = False  # SPO: feed the previous round's implicit-reward margin


def condition_prompt(row: PreferenceRow, dimensions: Sequence[str]) -> str:
    """Controllable CPO (Guo et al. 2024): target scores as plain-text tags before the instruction.

    The targets are the chosen response's scores, so under the released ranking
    R(y) = -sum_i |score_i(y) - target_i| the chosen response ranks first and the pair keeps its order.
    """
    targets = {d: row.chosen.scores[d] for d in dimensions}
    return tag_prompt(row.prompt, targets, dimensions, style="cpo")


def plan_phases(rows: Sequence[PreferenceRow], train, dimensions) -> list[Phase]:
    """The Trainer runs ``train.method`` needs, in order (its :data:`~moalign.training.methods.METHODS` entry)."""
    names, template = list(dimensions.names), dimensions.template
    method = get_method(train.method)
    if method.online:
        raise ValueError(f"{method.name} is trained online against the reward model (moalign.training.online)")
    if method.per_dimension:
        # one round per dimension, in dimensions.names order, each against the previous round's policy
        (loss,) = (LOSSES[name] for name in method.phases)
        return [
            Phase(f"{method.name}-{d}", loss, orient_by_dimension(rows, d)[0], lambda r: [r.prompt], True)
            for d in names
        ]
    if method.score_conditioned:
        conditioned = lambda r: [condition_prompt(r, names)]  # noqa: E731
        return [Phase(f"cpo-{name}", LOSSES[name], list(rows), conditioned) for name in method.phases]
    (loss,) = (LOSSES[name] for name in method.phases)
    if loss.orient_by_primary:
        primary = names[train.modpo_primary_index]
        rows, counts = orient_by_dimension(rows, primary)
        logger.info("pairs oriented by %s: %s", primary, counts)
    extra = train.weights == "authors_code"
    return [Phase(loss.name, loss, list(rows), lambda r: pair_prompts(r, loss, names, template, extra))]


def features_for(phase: Phase, tokenizer, dimensions: Sequence[str], max_length: int) -> list[dict]:
    features = []
    for row in phase.rows:
        feature = tokenize_pair(row, tokenizer, phase.prompts(row), max_length)
        feature["chosen_scores"] = [float(row.chosen.scores[d]) for d in dimensions]
        feature["rejected_scores"] = [float(row.rejected.scores[d]) for d in dimensions]
        features.append(feature)
    return features
