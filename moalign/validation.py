"""The data-validation gate: every preference pair passes a Great Expectations suite or is quarantined.

How it works:

1. :func:`flatten_rows` turns the rows into a pandas DataFrame, one row per pair, indexed ``0..n-1``
   in input order (the index is how a failure is traced back to its row).
2. Small pure functions add the *derived* columns GX has no direct expectation for
   (``chosen_equals_rejected``, ``prompt_tokens_plus_chosen``, ``prompt_in_both_splits``,
   per-side min/max score, ``scores_complete``, ``schema_valid``, ``text_is_clean``,
   ``chosen_below_rejected``, ``pair_duplicated``).
3. One GX 1.x :class:`~great_expectations.ExpectationSuite` checks every column. Each GX expectation
   carries its *readable check name* in ``meta["check"]`` (several GX expectations may share one
   name, e.g. the four min/max score columns are all ``scores_within_1_5``); :data:`CHECKS` lists
   the names in suite order.
4. The suite runs with ``result_format="COMPLETE"``, so every failed map expectation returns its
   ``unexpected_index_list``; each index is mapped back to its row and the check's name. A row that
   fails at least one check is quarantined with *all* its failed names, the rest is valid. No row is
   ever dropped: ``len(valid) + len(quarantined) == len(rows)`` is asserted.

``rows`` may hold :class:`PreferenceRow` objects or raw mappings (e.g. a JSON line read without
parsing); a mapping that does not parse into a :class:`PreferenceRow` fails ``row_matches_schema``
and is quarantined as the raw dict, never crashes the gate.

Each derived flag *passes* when its inputs are missing or of the wrong type: that row already fails
the check that owns the defect (``required_fields_present``, ``text_fields_are_strings``,
``scores_complete``), so one defect is reported under one name, not several.

Label noise (:func:`flip_labels`) also lives here: the validate stage swaps chosen and rejected on a
seeded share of the valid train pairs after the gate, for robustness experiments.

Great Expectations is imported lazily (importing it takes seconds); analytics and progress bars are
switched off and nothing touches the network.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationError

from moalign.models import from_pretrained
from moalign.data.schema import (
    SCORE_MAX,
    SCORE_MIN,
    PreferenceRow,
    write_json,
    write_jsonl,
)

logger = logging.getLogger(__name__)

# Before any import of great_expectations (imported lazily, in the functions below): no usage statistics.
os.environ["GX_ANALYTICS_ENABLED"] = "False"

QUARANTINE_FILE = "quarantine.jsonl"
SUMMARY_FILE = "validation_summary.json"

# Readable check names, in suite order. Each one is backed by one or more GX expectations.
CHECKS: tuple[str, ...] = (
    "table_columns",  # the flattened frame has exactly the expected columns (table-level)
    "row_matches_schema",  # the row parses into a PreferenceRow (only raw dicts can fail it)
    "required_fields_present",  # id, source, prompt_id, split, prompt, chosen/rejected text not null
    "text_fields_are_strings",  # the same columns hold str values
    "text_is_clean",  # no control characters but \n \r \t, no U+FFFD (invalid UTF-8), no lone surrogates
    "split_is_train_or_eval",
    "id_not_empty",
    "prompt_not_empty",
    "chosen_not_empty",
    "rejected_not_empty",
    "scores_within_1_5",
    "scores_complete",  # both sides score exactly the configured dimensions
    "chosen_differs_from_rejected",
    "labels_agree",  # chosen does not score strictly below rejected on every dimension
    "pair_id_unique",
    "pair_not_duplicated",  # a (prompt, chosen, rejected) triple seen earlier: later copies fail
    "tokens_within_max",  # prompt + chosen and prompt + rejected tokens <= max_tokens
    "prompt_not_in_both_splits",  # no prompt (normalise_text: near duplicates too) in both train and eval
)

TEXT_COLUMNS: tuple[str, ...] = ("id", "source", "prompt_id", "split", "prompt", "chosen_text", "rejected_text")
SCORE_COLUMNS: tuple[str, ...] = ("chosen_score_min", "chosen_score_max", "rejected_score_min", "rejected_score_max")
TOKEN_COLUMNS: tuple[str, ...] = ("prompt_tokens_plus_chosen", "prompt_tokens_plus_rejected")
FLAG_COLUMNS: tuple[str, ...] = (
    "schema_valid",
    "scores_complete",
    "text_is_clean",
    "chosen_equals_rejected",
    "chosen_below_rejected",
    "pair_duplicated",
    "prompt_in_both_splits",
)
# Flags computed over the whole frame (they compare rows), added after the per-row records.
FRAME_FLAG_COLUMNS: tuple[str, ...] = ("pair_duplicated", "prompt_in_both_splits")
COLUMNS: tuple[str, ...] = ("row_index", *TEXT_COLUMNS, *SCORE_COLUMNS, *TOKEN_COLUMNS, *FLAG_COLUMNS)

_NON_BLANK = r"\S"  # pandas str.contains: at least one non-whitespace character
# Control characters (Unicode Cc) other than \t \n \r, the replacement character U+FFFD (what a
# byte that is not UTF-8 becomes under errors="replace") and lone surrogates (from JSON "\ud800").
_UNCLEAN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")
# Punctuation (P*) and symbols (S*) as separators, for the near-duplicate prompt identity.
_PUNCTUATION_OR_SYMBOL = ("P", "S")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class QuarantinedRow:
    """A row that failed at least one check, with the names of all the checks it failed."""

    row: PreferenceRow | dict[str, Any]
    failed: list[str]


@dataclass
class ValidationReport:
    valid: list[PreferenceRow]
    quarantined: list[QuarantinedRow]
    summary: dict[str, Any] = field(default_factory=dict)


class QuarantineLimitExceeded(RuntimeError):
    """More than ``validate.max_quarantine_fraction`` of the rows was quarantined."""


class ValidationGateError(RuntimeError):
    """Great Expectations could not evaluate an expectation (a bug, not bad data): fail loudly."""


# --------------------------------------------------------------------------------------------------
# Derived columns: small pure functions.
# --------------------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """The near-duplicate identity used for train/eval prompt leakage (a "normalised text hash").

    Unicode NFKC (full-width and compatibility forms fold to plain ones), case-folded, every
    punctuation or symbol character (Unicode categories P* and S*) replaced by a space, whitespace
    collapsed. So ``"Name the capital of France."``, ``"name the CAPITAL of France!"`` and
    ``"Name the capital of  France"`` are one prompt. Punctuation becomes a separator rather than
    vanishing, so ``"2-3"`` stays apart from ``"23"``; the price of a near-duplicate identity is
    that ``"2 - 3"`` and ``"2 + 3"`` collide.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(ch)[0] in _PUNCTUATION_OR_SYMBOL else ch for ch in folded)
    return " ".join(spaced.split())


def canonical_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed; punctuation kept: the identity of a duplicate pair.

    Lighter than :func:`normalise_text` because in responses punctuation carries meaning
    (``"-4"`` is not ``"4"``, code is not prose).
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def text_is_clean(text: Any) -> bool:
    """No control character but tab/newline/carriage return, no U+FFFD, no lone surrogate.

    Applied to the prompt, both responses and the free-text identity fields (id, source,
    prompt_id), so a line that was not valid UTF-8 (decoded with ``errors="replace"``) is
    quarantined wherever its bad bytes were. Non-strings pass: a type check owns them.
    """
    if not isinstance(text, str):
        return True
    return _UNCLEAN.search(text) is None


def _encodable(value: Any) -> Any:
    """A string with each lone surrogate replaced by U+FFFD (anything else unchanged)."""
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def texts_equal(chosen: Any, rejected: Any) -> bool:
    """Chosen and rejected are the same response (ignoring leading/trailing/repeated whitespace)."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return False
    return _collapse_whitespace(chosen) == _collapse_whitespace(rejected)


def score_range(scores: Any) -> tuple[float, float]:
    """(min, max) of the numeric score values; NaN when there is none (``scores_complete`` fails then)."""
    if not isinstance(scores, Mapping):
        return math.nan, math.nan
    values = [float(v) for v in scores.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values:
        return math.nan, math.nan
    return min(values), max(values)


def scores_complete(chosen_scores: Any, rejected_scores: Any, dimensions: Sequence[str]) -> bool:
    """Both sides score exactly the configured dimensions, no key missing and none extra."""
    expected = set(dimensions)
    return all(isinstance(s, Mapping) and set(s) == expected for s in (chosen_scores, rejected_scores))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def chosen_below_rejected(chosen_scores: Any, rejected_scores: Any, dimensions: Sequence[str]) -> bool:
    """The label disagrees with the scores: chosen scores strictly lower than rejected on *every* dimension.

    Ties or a mixed picture are fine (False). Only evaluated when both sides score exactly the
    configured dimensions with numbers; otherwise False (passing), leaving the row to
    ``scores_complete`` / ``row_matches_schema`` so one defect is reported once.
    """
    if not dimensions or not scores_complete(chosen_scores, rejected_scores, dimensions):
        return False
    pairs = [(chosen_scores[d], rejected_scores[d]) for d in dimensions]
    if not all(_is_number(c) and _is_number(r) for c, r in pairs):
        return False
    return all(c < r for c, r in pairs)


def duplicated_pairs(prompts: Sequence[Any], chosen: Sequence[Any], rejected: Sequence[Any]) -> list[bool]:
    """For each row: has the same :func:`canonical_text` (prompt, chosen, rejected) triple appeared earlier?

    The first copy passes, every later copy is flagged. A row whose three texts are not all strings
    is not compared (a type check owns it).
    """
    seen: set[tuple[str, str, str]] = set()
    flags = []
    for triple in zip(prompts, chosen, rejected, strict=True):
        if not all(isinstance(text, str) for text in triple):
            flags.append(False)
            continue
        key = (canonical_text(triple[0]), canonical_text(triple[1]), canonical_text(triple[2]))
        flags.append(key in seen)
        seen.add(key)
    return flags


def tokens_plus(prompt_tokens: float, text: Any, count_tokens: Callable[[str], int]) -> float:
    """Prompt tokens + response tokens; NaN when the text is not a string (a type check fails then)."""
    if not isinstance(text, str) or math.isnan(prompt_tokens):
        return math.nan
    return float(prompt_tokens + count_tokens(text))


def prompts_in_both_splits(prompts: Sequence[Any], splits: Sequence[Any]) -> list[bool]:
    """For each row: is its prompt (:func:`normalise_text`, so near duplicates too) in both a train and an eval row?"""
    seen: dict[str, set[str]] = {}
    keys = [normalise_text(p) if isinstance(p, str) else None for p in prompts]
    for key, split in zip(keys, splits, strict=True):
        if key is not None and isinstance(split, str):
            seen.setdefault(key, set()).add(split)
    return [key is not None and {"train", "eval"} <= seen.get(key, set()) for key in keys]


def _as_mapping(row: PreferenceRow | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(row, BaseModel):
        return row.model_dump()
    return dict(row)


def _parse(row: PreferenceRow | Mapping[str, Any]) -> PreferenceRow | None:
    if isinstance(row, PreferenceRow):
        return row
    try:
        return PreferenceRow.model_validate(row)
    except (ValidationError, TypeError, ValueError):
        return None


def flatten_rows(
    rows: Sequence[PreferenceRow | Mapping[str, Any]],
    *,
    dimensions: Sequence[str],
    count_tokens: Callable[[str], int],
) -> pd.DataFrame:
    """One DataFrame row per pair (index ``0..n-1`` in input order) with all the derived columns.

    A lone surrogate (JSON ``"\\ud83d"``) sets ``text_is_clean`` False and is then replaced by
    U+FFFD in the frame: pandas' hashing (GX hashes the frame) and Rust tokenizers need strings
    UTF-8 can encode. The quarantined row itself is kept as given.
    """
    records = []
    for index, row in enumerate(rows):
        parsed = _parse(row)
        # A mapping that parses is flattened from its model (nested models become plain dicts).
        data = parsed.model_dump() if parsed is not None else _as_mapping(row)
        chosen = data.get("chosen") if isinstance(data.get("chosen"), Mapping) else {}
        rejected = data.get("rejected") if isinstance(data.get("rejected"), Mapping) else {}
        raw_texts = {c: data.get(c) for c in TEXT_COLUMNS[:5]}
        raw_texts.update(chosen_text=chosen.get("text"), rejected_text=rejected.get("text"))
        # split is left out: a bad split value is split_is_train_or_eval's to report
        clean = all(text_is_clean(value) for column, value in raw_texts.items() if column != "split")
        texts = {column: _encodable(value) for column, value in raw_texts.items()}
        prompt = texts["prompt"]
        prompt_tokens = float(count_tokens(prompt)) if isinstance(prompt, str) else math.nan
        chosen_min, chosen_max = score_range(chosen.get("scores"))
        rejected_min, rejected_max = score_range(rejected.get("scores"))
        records.append(
            {
                "row_index": index,
                **texts,
                "chosen_score_min": chosen_min,
                "chosen_score_max": chosen_max,
                "rejected_score_min": rejected_min,
                "rejected_score_max": rejected_max,
                "prompt_tokens_plus_chosen": tokens_plus(prompt_tokens, texts["chosen_text"], count_tokens),
                "prompt_tokens_plus_rejected": tokens_plus(prompt_tokens, texts["rejected_text"], count_tokens),
                "schema_valid": parsed is not None,
                "scores_complete": scores_complete(chosen.get("scores"), rejected.get("scores"), dimensions),
                "text_is_clean": clean,
                "chosen_equals_rejected": texts_equal(texts["chosen_text"], texts["rejected_text"]),
                "chosen_below_rejected": chosen_below_rejected(chosen.get("scores"), rejected.get("scores"), dimensions),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=[c for c in COLUMNS if c not in FRAME_FLAG_COLUMNS])
    frame["pair_duplicated"] = duplicated_pairs(
        frame["prompt"].tolist(), frame["chosen_text"].tolist(), frame["rejected_text"].tolist()
    )
    frame["prompt_in_both_splits"] = prompts_in_both_splits(frame["prompt"].tolist(), frame["split"].tolist())
    # Explicit dtypes: object text columns make GX type-check each value (pandas 3 would infer `str`),
    # float for numbers with NaN where a value cannot be computed, plain bool flags.
    dtypes: dict[str, Any] = {"row_index": "int64"}
    dtypes.update({c: object for c in TEXT_COLUMNS})
    dtypes.update({c: "float64" for c in (*SCORE_COLUMNS, *TOKEN_COLUMNS)})
    dtypes.update({c: bool for c in FLAG_COLUMNS})
    frame = frame.astype(dtypes)
    frame.index = pd.RangeIndex(len(frame))
    return frame[list(COLUMNS)]


# --------------------------------------------------------------------------------------------------
# The suite.
# --------------------------------------------------------------------------------------------------


def build_suite(*, max_tokens: int, name: str = "preference_pairs") -> Any:
    """The GX suite; each expectation's ``meta["check"]`` is its readable name (one of :data:`CHECKS`).

    GX 1.x needs an active data context to add expectations to a suite (it checks whether the suite
    was saved), so one is created first when none exists yet.
    """
    import great_expectations as gx
    from great_expectations.data_context.data_context.context_factory import (
        project_manager,
    )
    from great_expectations.exceptions import DataContextRequiredError

    try:
        project_manager.get_current_project()
    except DataContextRequiredError:
        _ephemeral_context()

    E = gx.expectations
    plan: dict[str, list[Any]] = {
        "table_columns": [E.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS), exact_match=True)],
        "row_matches_schema": [E.ExpectColumnValuesToBeInSet(column="schema_valid", value_set=[True])],
        "required_fields_present": [E.ExpectColumnValuesToNotBeNull(column=c) for c in TEXT_COLUMNS],
        "text_fields_are_strings": [E.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in TEXT_COLUMNS],
        "text_is_clean": [E.ExpectColumnValuesToBeInSet(column="text_is_clean", value_set=[True])],
        "split_is_train_or_eval": [E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "eval"])],
        "id_not_empty": [E.ExpectColumnValuesToMatchRegex(column="id", regex=_NON_BLANK)],
        "prompt_not_empty": [E.ExpectColumnValuesToMatchRegex(column="prompt", regex=_NON_BLANK)],
        "chosen_not_empty": [E.ExpectColumnValuesToMatchRegex(column="chosen_text", regex=_NON_BLANK)],
        "rejected_not_empty": [E.ExpectColumnValuesToMatchRegex(column="rejected_text", regex=_NON_BLANK)],
        "scores_within_1_5": [
            E.ExpectColumnValuesToBeBetween(column=c, min_value=SCORE_MIN, max_value=SCORE_MAX) for c in SCORE_COLUMNS
        ],
        "scores_complete": [E.ExpectColumnValuesToBeInSet(column="scores_complete", value_set=[True])],
        "chosen_differs_from_rejected": [
            E.ExpectColumnValuesToBeInSet(column="chosen_equals_rejected", value_set=[False])
        ],
        "labels_agree": [E.ExpectColumnValuesToBeInSet(column="chosen_below_rejected", value_set=[False])],
        "pair_id_unique": [E.ExpectColumnValuesToBeUnique(column="id")],
        "pair_not_duplicated": [E.ExpectColumnValuesToBeInSet(column="pair_duplicated", value_set=[False])],
        "tokens_within_max": [
            E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=max_tokens) for c in TOKEN_COLUMNS
        ],
        "prompt_not_in_both_splits": [
            E.ExpectColumnValuesToBeInSet(column="prompt_in_both_splits", value_set=[False])
        ],
    }
    assert tuple(plan) == CHECKS, "CHECKS and the suite plan disagree"
    suite = gx.ExpectationSuite(name=name)
    for check, expectations in plan.items():
        for expectation in expectations:
            expectation.meta = {**(expectation.meta or {}), "check": check}
            suite.add_expectation(expectation)
    return suite


def _ephemeral_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _run_suite(
    frame: pd.DataFrame, *, max_tokens: int, docs_dir: str | os.PathLike[str] | None
) -> tuple[Any, str | None]:
    """Validate ``frame`` against the suite; with ``docs_dir``, also build GX Data Docs there."""
    import great_expectations as gx

    context = _ephemeral_context()  # first: the suite below needs an active context
    suite = build_suite(max_tokens=max_tokens)
    tag = uuid.uuid4().hex[:8]
    asset = context.data_sources.add_pandas(name=f"pairs_{tag}").add_dataframe_asset(name="pairs")
    batch_definition = asset.add_batch_definition_whole_dataframe("all_pairs")
    result_format = {"result_format": "COMPLETE", "include_unexpected_rows": False}
    if docs_dir is None:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(suite, result_format=result_format), None

    site = f"moalign_{tag}"
    context.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            # GX needs an absolute base_directory when there is no root_directory
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"validate_{tag}", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"gate_{tag}",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[site])],
            result_format=result_format,
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (result,) = outcome.run_results.values()
    return result, str(Path(docs_dir) / "index.html")


def _raised(exception_info: Any) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, if any."""
    if not isinstance(exception_info, Mapping):
        return None
    if "raised_exception" in exception_info:
        if not exception_info["raised_exception"]:
            return None
        return exception_info.get("exception_message") or "unknown error"
    for nested in exception_info.values():  # some versions key the info by metric id
        message = _raised(nested)
        if message:
            return message
    return None


def _failed_indices(suite_result: Any, n_rows: int) -> tuple[dict[str, set[int]], dict[str, list[str]]]:
    """check name -> failing row indices, and check name -> the GX expectation types behind it."""
    failed: dict[str, set[int]] = {check: set() for check in CHECKS}
    gx_types: dict[str, list[str]] = {check: [] for check in CHECKS}
    for result in suite_result.results:
        config = result.expectation_config
        check = (config.meta or {}).get("check")
        if check not in failed:
            raise ValidationGateError(f"GX returned a result for an unknown expectation: {config.type}")
        gx_types[check].append(f"{config.type}({config.kwargs.get('column', '')})")
        message = _raised(result.exception_info)
        if message:
            raise ValidationGateError(
                f"Great Expectations could not evaluate {config.type} on {config.kwargs.get('column')!r} "
                f"(check {check!r}): {message}"
            )
        if result.success:
            continue
        indices = (result.result or {}).get("unexpected_index_list")
        if indices is None:
            # A table-level expectation (no per-row result) failed: the frame itself is wrong, so
            # fail closed and quarantine every row under that check.
            failed[check].update(range(n_rows))
        else:
            failed[check].update(int(i) for i in indices)
    return failed, gx_types


def _empty_summary(dimensions: Sequence[str], max_tokens: int) -> dict[str, Any]:
    return {
        "total_rows": 0,
        "valid_rows": 0,
        "quarantined_rows": 0,
        "quarantined_fraction": 0.0,
        "success": True,
        "failed_rows_per_expectation": {check: 0 for check in CHECKS},
        "expectations": {check: [] for check in CHECKS},
        "dimensions": list(dimensions),
        "max_tokens": max_tokens,
        "data_docs": None,
    }


def validate_pairs(
    rows: Sequence[PreferenceRow | Mapping[str, Any]],
    *,
    dimensions: Sequence[str],
    max_tokens: int,
    count_tokens: Callable[[str], int],
    docs_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Run the suite over ``rows``; split them into valid and quarantined, never dropping one.

    ``count_tokens`` counts the tokens of one text (the policy's tokenizer, or ``len(text.split())``
    in tests); ``max_tokens`` bounds prompt + response per side. With ``docs_dir`` GX Data Docs
    (HTML) are built into that folder and ``summary["data_docs"]`` names its index.html.
    """
    rows = list(rows)
    summary = _empty_summary(dimensions, max_tokens)
    if not rows:
        return ValidationReport(valid=[], quarantined=[], summary=summary)

    frame = flatten_rows(rows, dimensions=dimensions, count_tokens=count_tokens)
    suite_result, docs_index = _run_suite(frame, max_tokens=max_tokens, docs_dir=docs_dir)
    failed_by_check, gx_types = _failed_indices(suite_result, len(rows))

    failed_by_row: dict[int, list[str]] = {}
    for check in CHECKS:  # suite order, so each row's list reads in a stable order
        for index in sorted(failed_by_check[check]):
            if not 0 <= index < len(rows):
                raise ValidationGateError(f"GX reported row index {index} outside 0..{len(rows) - 1}")
            failed_by_row.setdefault(index, []).append(check)

    valid: list[PreferenceRow] = []
    quarantined: list[QuarantinedRow] = []
    for index, row in enumerate(rows):
        parsed = _parse(row)
        if index in failed_by_row or parsed is None:
            failed = failed_by_row.get(index, ["row_matches_schema"])
            kept = row if isinstance(row, PreferenceRow) else dict(row)
            quarantined.append(QuarantinedRow(row=kept, failed=failed))
        else:
            valid.append(parsed)
    assert len(valid) + len(quarantined) == len(rows), "validation dropped rows"

    summary.update(
        {
            "total_rows": len(rows),
            "valid_rows": len(valid),
            "quarantined_rows": len(quarantined),
            "quarantined_fraction": len(quarantined) / len(rows),
            "success": bool(suite_result.success) and not quarantined,
            "failed_rows_per_expectation": {check: len(failed_by_check[check]) for check in CHECKS},
            "expectations": gx_types,
            "data_docs": docs_index,
        }
    )
    return ValidationReport(valid=valid, quarantined=quarantined, summary=summary)


# --------------------------------------------------------------------------------------------------
# Label noise.
# --------------------------------------------------------------------------------------------------


def flip_labels(
    rows: Sequence[PreferenceRow], fraction: float, seed: int
) -> tuple[list[PreferenceRow], list[str]]:
    """Swap chosen and rejected (texts with their scores) on ``round(fraction * len(rows))`` rows.

    The rows are drawn without replacement by ``random.Random(seed)``, so the same rows, seed and
    fraction always flip the same pairs and no pair is flipped twice. Returns new rows in input
    order (the inputs are not modified) and the flipped ids in input order. ``fraction=0`` returns
    the rows unchanged. Python's ``round`` rounds halves to even (``round(2.5) == 2``).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must be within 0..1, got {fraction}")
    rows = list(rows)
    n_flip = round(fraction * len(rows))
    if n_flip == 0:
        return rows, []
    picked = set(random.Random(seed).sample(range(len(rows)), n_flip))
    out = [
        row.model_copy(update={"chosen": row.rejected, "rejected": row.chosen}) if i in picked else row
        for i, row in enumerate(rows)
    ]
    return out, [rows[i].id for i in sorted(picked)]


# --------------------------------------------------------------------------------------------------
# Reporting and the gate.
# --------------------------------------------------------------------------------------------------


def top_failing(report: ValidationReport, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` checks that quarantined the most rows, most first (ties in suite order)."""
    counts = report.summary.get("failed_rows_per_expectation") or {}
    if not counts:
        counts = Counter(name for q in report.quarantined for name in q.failed)
    order = {check: i for i, check in enumerate(CHECKS)}
    ranked = sorted(((c, k) for c, k in counts.items() if k > 0), key=lambda item: (-item[1], order.get(item[0], 99)))
    return ranked[:n]


def check_quarantine_limit(
    report: ValidationReport,
    max_fraction: float,
    *,
    quarantine_file: str | os.PathLike[str] | None = None,
) -> None:
    """Raise :class:`QuarantineLimitExceeded` when the quarantined share is above ``max_fraction``.

    At or below the threshold it returns quietly. The message names the share, the threshold, the
    checks that failed most and the quarantine file to inspect (``quarantine_file``, else the one
    :func:`write_report` recorded in the summary).
    """
    total = report.summary.get("total_rows", len(report.valid) + len(report.quarantined))
    n_bad = len(report.quarantined)
    fraction = n_bad / total if total else 0.0
    if fraction <= max_fraction:
        return
    where = quarantine_file or report.summary.get("quarantine_file") or f"{QUARANTINE_FILE} (written by write_report)"
    top = ", ".join(f"{check} ({count} rows)" for check, count in top_failing(report)) or "none recorded"
    raise QuarantineLimitExceeded(
        f"data validation quarantined {n_bad} of {total} rows ({fraction:.1%}), above the threshold "
        f"validate.max_quarantine_fraction={max_fraction} ({max_fraction:.1%}). "
        f"Top failing expectations: {top}. "
        f"Inspect {where}: each line is a row with its failed_expectations."
    )


def _writable(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings spelled out (``"\\ud800"``): UTF-8 cannot hold one."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_writable(k): _writable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_writable(v) for v in value]
    return value


def quarantine_records(report: ValidationReport) -> list[dict[str, Any]]:
    """Quarantined rows as JSON-ready dicts: the row's fields plus ``failed_expectations``.

    Kept as given, except that a lone surrogate (which no UTF-8 file can hold) is written as its
    escape text, e.g. ``\\ud800``.
    """
    records = []
    for item in report.quarantined:
        if isinstance(item.row, BaseModel):
            record = item.row.model_dump(mode="json")
        else:  # a raw row may hold anything: keep what JSON can hold, repr() the rest
            record = json.loads(json.dumps(dict(item.row), default=repr))
        record = _writable(record)
        record["failed_expectations"] = list(item.failed)
        records.append(record)
    return records


def write_report(report: ValidationReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``quarantine.jsonl`` and ``validation_summary.json`` into ``out_dir`` atomically.

    The quarantine file is written even when empty, so a pipeline output always exists. The summary
    records the quarantine file's path (also kept in ``report.summary["quarantine_file"]`` for
    :func:`check_quarantine_limit`).
    """
    out_dir = Path(out_dir)
    quarantine_path = out_dir / QUARANTINE_FILE
    summary_path = out_dir / SUMMARY_FILE
    write_jsonl(quarantine_path, quarantine_records(report))
    report.summary["quarantine_file"] = str(quarantine_path)
    write_json(summary_path, report.summary)
    return {"quarantine": quarantine_path, "summary": summary_path}


__all__ = [
    "CHECKS",
    "QUARANTINE_FILE",
    "SUMMARY_FILE",
    "QuarantineLimitExceeded",
    "QuarantinedRow",
    "ValidationGateError",
    "ValidationReport",
    "build_suite",
    "canonical_text",
    "check_quarantine_limit",
    "chosen_below_rejected",
    "duplicated_pairs",
    "flatten_rows",
    "flip_labels",
    "normalise_text",
    "prompts_in_both_splits",
    "quarantine_records",
    "scores_complete",
    "text_is_clean",
    "texts_equal",
    "top_failing",
    "validate_pairs",
    "write_report",
]


# ------------------------------------------------------------------------------------------------
# the validate stage

LABEL_NOISE_FILE = "label_noise.json"


class ValidationInputError(ValueError):
    """The annotated pairs file is missing or unreadable as JSON Lines."""


def read_raw_rows(path: Path) -> list[dict]:
    """Rows as plain dicts, so a row that breaks the schema is quarantined by the gate, not a crash.

    Bytes that are not UTF-8 become U+FFFD (``errors="replace"``); ``text_is_clean`` quarantines the row.
    """
    from moalign.data.schema import RowError, read_jsonl

    if not Path(path).exists():
        raise ValidationInputError(f"{path}: no such file; it is made by the annotate stage")
    try:
        return read_jsonl(path, None, errors="replace")
    except RowError as error:
        raise ValidationInputError(str(error)) from None


def validate_stage(config, pairs, tokenizer_dir, out_dir, metrics) -> ValidationReport:
    """The validate stage: the gate over ``pairs`` (token lengths by ``tokenizer_dir``'s tokenizer),
    ``train.jsonl`` / ``eval.jsonl`` / the quarantine and Data Docs in ``out_dir`` (``validate.label_noise``
    applied to train), counts in ``metrics``. Raises :class:`QuarantineLimitExceeded` after writing
    everything when too many rows failed."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    counter = from_pretrained(AutoTokenizer, tokenizer_dir)
    rows = read_raw_rows(pairs)
    report = validate_pairs(
        rows,
        dimensions=config.dimensions.names,
        max_tokens=config.validate_.max_tokens,
        count_tokens=lambda text: len(counter(text, add_special_tokens=False).input_ids),
        docs_dir=out_dir / "docs",
    )
    write_report(report, out_dir)
    noise = config.validate_.label_noise
    train, flipped = flip_labels([r for r in report.valid if r.split == "train"], noise, config.seed)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", [r for r in report.valid if r.split == "eval"])
    write_json(out_dir / LABEL_NOISE_FILE,
               {"fraction": noise, "seed": config.seed, "flipped": len(flipped), "ids": flipped})
    if flipped:
        logger.info("label noise: swapped chosen/rejected on %d of %d train pairs", len(flipped), len(train))
    summary = report.summary
    write_json(metrics, {
        "total_rows": summary.get("total_rows", 0),
        "valid_rows": summary.get("valid_rows", 0),
        "quarantined_rows": summary.get("quarantined_rows", 0),
        "quarantined_fraction": summary.get("quarantined_fraction", 0.0),
        "failed_rows_per_expectation": summary.get("failed_rows_per_expectation", {}),
        "label_noise_flipped": len(flipped),
    })
    check_quarantine_limit(report, config.validate_.max_quarantine_fraction)
    return report
