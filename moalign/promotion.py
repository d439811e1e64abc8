"""The champion/challenger gate: a registered version becomes ``champion`` only when its held-out
evaluation shows it is better than what it would replace.

Every version's run holds its evaluation (``metrics.json`` and the per-prompt ``responses.jsonl``,
logged by the register stage). A candidate becomes champion when:

(a) it beats the starting model: ``win_rate_vs_reference.ci95_low > 0.5``;
(b) it beats the current champion: the per-prompt mean judge score, candidate minus champion, paired
    on the prompts both evaluated, has a 95 % bootstrap interval above 0. Both evaluations must be
    comparable (same prompt ids, same judge, same dimensions), else it stays challenger, "not
    comparable: ...";
(c) no dimension falls too far: per dimension, its mean minus the starting model's
    (``score_changes[d].delta``) and minus the champion's are each at least ``-max_regression[d]``
    (0 for a dimension not named).

The first version ever (no champion) needs (a) and the starting-model half of (c). A failed or
partial evaluation never promotes: missing metrics, a null win rate, judge failures, an ``n`` unlike
the number of per-prompt rows, a run that did not finish. The decision, its numbers and its reasons
become ``promotion.*`` tags of the version; the alias moves once, last. On a SQLite store a file
lock beside the database is held from reading the champion to moving the alias, so concurrent
promotions end with one consistent champion; on a server store, running one promotion at a time is
the caller's job (docs/promotion.md).

Core library: no Prefect or DVC imports.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any, Literal

# first: it opts out of MLflow's usage telemetry before mlflow is imported
from moalign import tracking  # isort: skip

from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from moalign.evaluation.winrate import bootstrap_mean_ci
from moalign.registry import CHALLENGER_ALIAS

__all__ = [
    "CHAMPION_ALIAS",
    "Decision",
    "Evaluation",
    "PromotionError",
    "TAG_PREFIX",
    "champion_data_hash",
    "comparability_problems",
    "decide",
    "evaluation_problems",
    "load_evaluation",
    "promote",
]

# per-file download bars of two small JSON files are noise in a stage's log or a CLI's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHAMPION_ALIAS = "champion"
TAG_PREFIX = "promotion."
WIN_RATE_FLOOR = 0.5
METRICS_ARTIFACT = "metrics.json"
ROWS_ARTIFACT = "responses.jsonl"
LOCK_SUFFIX = ".promote.lock"
LOCK_TIMEOUT_S = 600.0
# The run params that name the judge (params.yaml logged flattened); a value changed after training
# sits in the tag ``param_at_register.<key>`` (moalign.tracking.log_results).
_JUDGE_PARAMS = ("judge.backend", "judge.model", "judge.templates_dir", "judge.server.model_path")
_MAX_TAG_VALUE = 5000  # MLflow's limit on a model version tag's value


class PromotionError(ValueError):
    """Bad input: no such registered model or version, or no challenger to promote."""


@dataclass(frozen=True)
class Evaluation:
    """A version's held-out evaluation as its run logged it; ``problems`` say why it cannot count."""

    version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    judge: str = ""
    problems: tuple[str, ...] = ()

    @property
    def dimensions(self) -> list[str]:
        return list((self.metrics.get("policy") or {}).get("scores") or {})


@dataclass(frozen=True)
class Decision:
    """What the gate decided for ``version``, why, and the numbers it used."""

    model_name: str
    version: str
    decision: Literal["champion", "challenger"]
    reasons: tuple[str, ...]
    numbers: dict[str, float] = field(default_factory=dict)
    compared_with: str | None = None  # the champion's version; None for the first champion

    @property
    def promoted(self) -> bool:
        return self.decision == CHAMPION_ALIAS

    def tags(self, decided_at: datetime | None = None) -> dict[str, str]:
        """The ``promotion.*`` tags recording the decision on the version."""
        when = (decided_at or datetime.now(UTC)).isoformat(timespec="seconds")
        tags = {
            "decision": self.decision,
            "reasons": "; ".join(self.reasons),
            "compared_with": self.compared_with or "none",
            "decided_at": when,
            **{key: f"{value:.6g}" for key, value in self.numbers.items()},
        }
        return {TAG_PREFIX + key: value[:_MAX_TAG_VALUE] for key, value in tags.items()}


# --------------------------------------------------------------------------------------------------
# Pure checks
# --------------------------------------------------------------------------------------------------


def _dig(mapping: Any, *keys: str) -> Any:
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, Mapping) else None
    return mapping


_FAILURE_COUNTS = (("win_rate_vs_reference", "failures"), ("policy", "judge_failures"), ("reference", "judge_failures"))
_REQUIRED = (
    ("win_rate_vs_reference", "win_rate"), ("win_rate_vs_reference", "ci95_low"), ("win_rate_vs_reference", "n"),
    *_FAILURE_COUNTS, ("policy", "scores"), ("score_changes",),
)


def _row_problems(rows: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> list[str]:
    ids = [row.get("prompt_id") for row in rows]
    problems = []
    if None in ids or len(set(ids)) != len(ids):
        problems.append("per-prompt rows without a unique prompt_id")
    unscored = sum(
        not all(isinstance(_dig(row, "policy", "scores", d), (int, float)) for d in dimensions) for row in rows
    )
    if unscored:
        problems.append(f"{unscored} per-prompt rows lack a policy score")
    return problems


def evaluation_problems(metrics: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]] | None,
                        status: str) -> list[str]:
    """Why an evaluation cannot support a promotion: a failed or partial one. Empty when it can."""
    problems = [] if status == "FINISHED" else [f"run {status}, not FINISHED"]
    if metrics is None:
        return [*problems, f"missing metrics: no {METRICS_ARTIFACT} in the run"]
    missing = [".".join(keys) for keys in _REQUIRED if _dig(metrics, *keys) is None]
    if missing:
        null_rate = {"win_rate_vs_reference.win_rate", "win_rate_vs_reference.ci95_low"} & set(missing)
        return [*problems, f"{'null win rate' if null_rate else 'missing metrics'}: {', '.join(missing)}"]
    failures = sum(count for keys in _FAILURE_COUNTS if isinstance(count := _dig(metrics, *keys), (int, float)))
    if failures:
        problems.append(f"{failures} judge failures")
    if rows is None:
        return [*problems, f"missing per-prompt rows: no {ROWS_ARTIFACT} in the run"]
    n = _dig(metrics, "win_rate_vs_reference", "n")
    if n != len(rows):
        problems.append(f"n={n} but {len(rows)} per-prompt rows")
    return problems + _row_problems(rows, list(metrics["policy"]["scores"]))


def comparability_problems(candidate: Evaluation, champion: Evaluation) -> list[str]:
    """Why two evaluations cannot be compared prompt by prompt; empty when they can."""
    problems = []
    ours = {row["prompt_id"] for row in candidate.rows}
    theirs = {row["prompt_id"] for row in champion.rows}
    if ours != theirs:
        problems.append(f"prompt ids differ ({len(ours - theirs)} only in version {candidate.version}, "
                        f"{len(theirs - ours)} only in version {champion.version})")
    if candidate.judge != champion.judge:
        problems.append(f"judge differs ({candidate.judge} vs {champion.judge})")
    if set(candidate.dimensions) != set(champion.dimensions):
        problems.append(f"dimensions differ ({candidate.dimensions} vs {champion.dimensions})")
    return problems


def _too_low(change: float | None, tolerance: float) -> bool:
    # the slack keeps a change of exactly -tolerance, computed as a difference of means, allowed
    return change is None or change < -tolerance - 1e-9


def _versus_reference(candidate: Evaluation, max_regression: Mapping[str, float],
                      numbers: dict[str, float]) -> list[str]:
    """Checks (a) and the starting-model half of (c); records their numbers."""
    win = candidate.metrics["win_rate_vs_reference"]
    numbers["win_rate"], numbers["win_rate_ci95_low"] = win["win_rate"], win["ci95_low"]
    reasons = []
    if not win["ci95_low"] > WIN_RATE_FLOOR:
        reasons.append(f"win rate vs the starting model {win['win_rate']:.3f}: its 95% CI low "
                       f"{win['ci95_low']:.3f} is not above {WIN_RATE_FLOOR}")
    for dimension in candidate.dimensions:
        change = _dig(candidate.metrics, "score_changes", dimension, "delta")
        tolerance = max_regression.get(dimension, 0.0)
        if change is not None:
            numbers[f"vs_reference.{dimension}"] = change
        if _too_low(change, tolerance):
            shown = "unknown" if change is None else f"{change:+.3f}"
            reasons.append(f"{dimension} vs the starting model {shown}, a loss over the allowed {tolerance:g}")
    return reasons


def _policy_means(rows: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> dict[str, float]:
    """prompt id -> the policy's mean judge score over ``dimensions``."""
    return {row["prompt_id"]: mean(row["policy"]["scores"][d] for d in dimensions) for row in rows}


def _dimension_mean(rows: Sequence[Mapping[str, Any]], dimension: str) -> float:
    return mean(row["policy"]["scores"][dimension] for row in rows)


def _versus_champion(candidate: Evaluation, champion: Evaluation, max_regression: Mapping[str, float],
                     numbers: dict[str, float]) -> list[str]:
    """Check (b) and the champion half of (c); records their numbers."""
    if champion.problems:
        return [f"not comparable: champion version {champion.version}'s evaluation: {p}" for p in champion.problems]
    mismatch = comparability_problems(candidate, champion)
    if mismatch:
        return [f"not comparable: {problem}" for problem in mismatch]
    dims = candidate.dimensions
    ours, theirs = _policy_means(candidate.rows, dims), _policy_means(champion.rows, dims)
    deltas = [ours[prompt] - theirs[prompt] for prompt in sorted(ours)]
    low, high = bootstrap_mean_ci(deltas)
    numbers.update(vs_champion_delta=mean(deltas), vs_champion_ci95_low=low, vs_champion_ci95_high=high)
    reasons = []
    if not low > 0:
        reasons.append(f"mean score vs champion version {champion.version} {mean(deltas):+.3f}: its 95% CI "
                       f"[{low:+.3f}, {high:+.3f}] is not above 0")
    for dimension in dims:
        change = _dimension_mean(candidate.rows, dimension) - _dimension_mean(champion.rows, dimension)
        numbers[f"vs_champion.{dimension}"] = change
        tolerance = max_regression.get(dimension, 0.0)
        if _too_low(change, tolerance):
            reasons.append(f"{dimension} vs champion version {champion.version} {change:+.3f}, "
                           f"a loss over the allowed {tolerance:g}")
    return reasons


def decide(model_name: str, candidate: Evaluation, champion: Evaluation | None,
           max_regression: Mapping[str, float]) -> Decision:
    """The gate's rule (module docstring) applied to ``candidate`` against ``champion`` (None: the
    first champion). Pure: reads nothing, moves nothing."""
    compared_with = champion.version if champion is not None else None
    if candidate.problems:
        reasons = tuple(f"evaluation not usable: {problem}" for problem in candidate.problems)
        return Decision(model_name, candidate.version, "challenger", reasons, {}, compared_with)
    numbers: dict[str, float] = {}
    reasons = _versus_reference(candidate, max_regression, numbers)
    if champion is not None:
        reasons += _versus_champion(candidate, champion, max_regression, numbers)
    if reasons:
        return Decision(model_name, candidate.version, "challenger", tuple(reasons), numbers, compared_with)
    passed = f"beats the starting model (win rate 95% CI low {numbers['win_rate_ci95_low']:.3f})"
    if champion is not None:
        passed += (f" and champion version {champion.version} (mean score {numbers['vs_champion_delta']:+.3f}, "
                   f"95% CI low {numbers['vs_champion_ci95_low']:+.3f})")
    return Decision(model_name, candidate.version, "champion", (f"{passed}; no dimension regressed",), numbers,
                    compared_with)


# --------------------------------------------------------------------------------------------------
# Reading the registry
# --------------------------------------------------------------------------------------------------


def _read_artifact(client: MlflowClient, run_id: str, name: str) -> tuple[str | None, str | None]:
    """The text of a run's artifact, or None and, when it exists but cannot be read, why."""
    with tempfile.TemporaryDirectory(prefix="moalign-promote-") as folder:
        try:
            path = client.download_artifacts(run_id, name, folder)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None, None
            return None, f"{name} unreadable: {error.message}"
        except OSError as error:
            return None, f"{name} unreadable: {error}"
        return Path(path).read_text(encoding="utf-8"), None


def _parse(name: str, text: str) -> tuple[Any, str | None]:
    """metrics.json as a dict, responses.jsonl as a list of dicts; or None and what is wrong."""
    try:
        value = [json.loads(line) for line in text.splitlines() if line.strip()] if name == ROWS_ARTIFACT \
            else json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"{name} is not valid JSON: {error}"
    rows = value if isinstance(value, list) else [value]
    if not all(isinstance(row, dict) for row in rows) or isinstance(value, list) != (name == ROWS_ARTIFACT):
        return None, f"{name} does not hold JSON objects"
    return value, None


def _parsed(client: MlflowClient, run_id: str) -> tuple[dict | None, list | None, list[str]]:
    """The run's metrics.json and per-prompt rows, each None when absent, and why one is unreadable."""
    found, errors = {}, []
    for name in (METRICS_ARTIFACT, ROWS_ARTIFACT):
        text, error = _read_artifact(client, run_id, name)
        if text is not None:
            found[name], error = _parse(name, text)
        errors += [error] if error else []
    return found.get(METRICS_ARTIFACT), found.get(ROWS_ARTIFACT), errors


def _judge_identity(params: Mapping[str, str], tags: Mapping[str, str], metrics: Mapping[str, Any] | None) -> str:
    named = [f"{key}={tags.get(f'param_at_register.{key}', params.get(key, 'unset'))}" for key in _JUDGE_PARAMS]
    return ", ".join([*named, f"win rate by {_dig(metrics, 'win_rate_vs_reference', 'judge') or 'unknown'}"])


def load_evaluation(client: MlflowClient, version: Any) -> Evaluation:
    """The evaluation a registered ``version`` (an MLflow ``ModelVersion``) carries in its run."""
    number = str(version.version)
    if not version.run_id:
        return Evaluation(number, problems=("the version names no run",))
    try:
        run = client.get_run(version.run_id)
    except MlflowException as error:
        return Evaluation(number, problems=(f"run {version.run_id} unreadable: {error.message}",))
    metrics, rows, errors = _parsed(client, version.run_id)
    unfinished = [] if run.info.status == "FINISHED" else [f"run {run.info.status}, not FINISHED"]
    problems = [*unfinished, *errors] if errors else evaluation_problems(metrics, rows, run.info.status)
    return Evaluation(number, metrics or {}, rows or [], _judge_identity(run.data.params, run.data.tags, metrics),
                      tuple(problems))


def _registered_aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"no registered model {model_name!r} in {client.tracking_uri}") from None
        raise
    return {alias: str(number) for alias, number in (registered.aliases or {}).items()}


def _model_version(client: MlflowClient, model_name: str, version: str | int | None) -> Any:
    """The ``ModelVersion`` to judge: ``version``, else the one the challenger alias points at."""
    if version is None:
        version = _registered_aliases(client, model_name).get(CHALLENGER_ALIAS)
        if version is None:
            raise PromotionError(f"{model_name!r} has no {CHALLENGER_ALIAS!r} alias: pass the version to promote")
    else:
        _registered_aliases(client, model_name)  # a missing model is reported as such
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"{model_name!r} has no version {version}") from None
        raise


@contextmanager
def _promotion_lock(tracking_uri: str) -> Iterator[None]:
    """One promotion at a time per SQLite store (a lock file beside the database). A server store
    gets no lock here: serialising its promotions is the caller's job (docs/promotion.md)."""
    database = tracking.sqlite_db_path(tracking_uri)
    if database is None:
        yield
        return
    path = f"{database}{LOCK_SUFFIX}"
    try:
        with FileLock(path, timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise PromotionError(f"another promotion has held {path} for over {LOCK_TIMEOUT_S:.0f} s") from None


def _record(client: MlflowClient, decision: Decision) -> None:
    """The decision's tags replace any earlier ``promotion.*`` tags; then, last, the alias moves."""
    name, version = decision.model_name, decision.version
    tags = decision.tags()
    stale = [k for k in client.get_model_version(name, version).tags if k.startswith(TAG_PREFIX) and k not in tags]
    for key in stale:
        client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)


def champion_data_hash(tracking_uri: str, model_name: str,
                       project_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The ``data_hash`` tag (DVC's hash of ``data.dvc`` at registration) of ``model_name``'s champion;
    None when there is no store, no such model or no champion yet."""
    try:
        client = tracking.open_store(tracking_uri, project_dir)
        champion = _registered_aliases(client, model_name).get(CHAMPION_ALIAS)
    except (tracking.StoreNotFound, PromotionError):
        return None
    if champion is None:
        return None
    return client.get_model_version(model_name, champion).tags.get("data_hash")


def promote(tracking_uri: str, model_name: str, version: str | int | None = None, *,
            max_regression: Mapping[str, float] | None = None, dry_run: bool = False) -> Decision:
    """Judge ``version`` of ``model_name`` (default: the challenger) against the starting model and the
    current champion, tag the decision on it and move ``champion`` when it wins. ``dry_run``: decide
    only. :class:`PromotionError` for bad input; :class:`moalign.tracking.StoreError` for a store it
    cannot read."""
    client = tracking.open_store(tracking_uri)
    target = _model_version(client, model_name, version)
    candidate = load_evaluation(client, target)
    with nullcontext() if dry_run else _promotion_lock(tracking_uri):
        champion_number = _registered_aliases(client, model_name).get(CHAMPION_ALIAS)  # read under the lock
        if champion_number == candidate.version:
            return Decision(model_name, candidate.version, "champion", ("already the champion: nothing to do",),
                            compared_with=champion_number)
        champion = None
        if champion_number is not None:
            champion = load_evaluation(client, client.get_model_version(model_name, champion_number))
        decision = decide(model_name, candidate, champion, max_regression or {})
        if not dry_run:
            _record(client, decision)
    return decision
