"""The ``moalign`` command: small helpers around the pipeline (the stages themselves run via DVC).

    moalign check-params [--params params.yaml]   validate params.yaml, print the resolved values
    moalign row-schema                            print the JSON Schema of a preference row
    moalign compare                               experiments x metrics from MLflow, like Table 2
    moalign promote [--version N] [--dry-run]     the champion/challenger gate (docs/promotion.md)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from moalign.config import DEFAULT_PARAMS, ParamsError, RegisterParams, load_params
from moalign.data.schema import preference_row_json_schema

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)


@app.command("check-params")
def check_params(
    params: Annotated[Path, typer.Option("--params", help="File to check.")] = Path(DEFAULT_PARAMS),
) -> None:
    """Validate params.yaml as every stage does; print the values with defaults filled in."""
    try:
        config = load_params(params)
    except ParamsError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    values = config.model_dump(by_alias=True)
    # a tracking server from the environment may carry a password (only then: tracking imports MLflow)
    if "@" in values["register"]["tracking_uri"]:
        from moalign.credentials import redact_url_password

        values["register"]["tracking_uri"] = redact_url_password(values["register"]["tracking_uri"])
    typer.echo(json.dumps(values, indent=2))


@app.command("row-schema")
def row_schema() -> None:
    """Print the JSON Schema every stage's preference rows follow."""
    typer.echo(json.dumps(preference_row_json_schema(), indent=2, sort_keys=True))


def _register_settings(params: Path | None) -> RegisterParams:
    """params.yaml's register section (only that section is validated: a half-edited train section
    does not stop a comparison). Without --params and without ./params.yaml: the defaults."""
    path = params if params is not None else Path(DEFAULT_PARAMS)
    if not path.exists():
        if params is None:
            return RegisterParams()
        raise ParamsError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    section = raw.get("register") if isinstance(raw, dict) else None
    try:
        return RegisterParams.model_validate(section or {})
    except ValueError as error:
        raise ParamsError(f"{path}: invalid register section: {error}") from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


_COMPARE_HELP = (
    "Compare experiments: one row per MLflow run with its method, key params and metrics, like "
    "Table 2 of the AMoPO/MOSLIM papers.\n\n"
    "Columns: run id and train.method; by default the win rate vs the reference, the mean judge "
    "score, each dimension's policy score, the average response length in words and the validated "
    "row count (the last logged value of each); then beta, gamma and weights where the method reads "
    "them, learning rate, LoRA rank, the registered model version, run name, start time (UTC) and "
    "status. '—': not logged, or not read by the run's method. The best value per metric column is "
    "bold (higher is better; lower for losses and failures; lengths and counts are not judged). A "
    "narrow terminal leaves out the details first. The store is only read, never created or "
    "changed.\n\n"
    "Examples:\n\n"
    "  moalign compare\n"
    "  moalign compare --sort win_rate --csv results/table2.csv\n"
    "  moalign compare --only-registered --experiment sweep --json table.json\n"
    "  moalign compare --tracking-uri sqlite:///elsewhere/mlflow.db\n"
    "  moalign compare --metric eval/policy/mean_score --metric loss --sort loss"
)

_ParamsOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        metavar="FILE",
        help="Read register.tracking_uri and register.experiment from this file "
        "\\[default: ./params.yaml when present, else sqlite:///mlflow.db and 'moalign']",
    ),
]
_UriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store to read, e.g. sqlite:///mlflow.db (overrides params.yaml).",
    ),
]
_ExperimentOpt = Annotated[
    str | None,
    typer.Option("--experiment", metavar="NAME", help="MLflow experiment (overrides params.yaml)."),
]
_MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        metavar="KEY",
        help="Metric key to show, repeatable; replaces the default set. "
        "E.g. --metric eval/policy/scores/correctness --metric loss.",
    ),
]
_SortOpt = Annotated[
    str | None,
    typer.Option(
        "--sort",
        metavar="KEY",
        help="Order rows by a column, best first: a metric key or its short name (win_rate, "
        "mean_score, correctness), or method, beta, lr, name, started. \\[default: newest first]",
    ),
]
_CsvOpt = Annotated[
    Path | None,
    typer.Option("--csv", metavar="FILE", help="Also write the table to a CSV file (raw values)."),
]
_JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", metavar="FILE", help="Also write the rows to a JSON file (raw values)."),
]
_OnlyRegisteredOpt = Annotated[
    bool, typer.Option("--only-registered", help="Only runs with a registered model version.")
]


def _collect_rows(uri: str, name: str, metric: list[str] | None, only_registered: bool, sort: str | None) -> list[dict]:
    """:func:`moalign.compare.collect_runs`, a store or experiment it cannot read as a message and
    exit code 1; a ``--sort`` on a metric not shown collects that metric too."""
    from moalign import compare as core
    from moalign import tracking

    base_names = {alias for field, header in core.BASE_COLUMNS for alias in (field, header)}
    extra = [sort] if sort and sort.strip().lower() not in base_names else []
    hints = {
        tracking.StoreNotFound: " (run the pipeline first, or pass --tracking-uri)",
        tracking.ExperimentNotFound: " (pass --experiment, or set register.experiment in params.yaml)",
    }
    try:
        return core.collect_runs(uri, name, metrics=metric or None, only_registered=only_registered,
                                 extra_metrics=extra)
    except tracking.TrackingError as error:
        raise _fail(f"{error}{hints.get(type(error), '')}") from None


@app.command("compare", help=_COMPARE_HELP)
def compare(
    params: _ParamsOpt = None,
    tracking_uri: _UriOpt = None,
    experiment: _ExperimentOpt = None,
    metric: _MetricOpt = None,
    sort: _SortOpt = None,
    csv_out: _CsvOpt = None,
    json_out: _JsonOpt = None,
    only_registered: _OnlyRegisteredOpt = False,
) -> None:
    """Compare experiments: one row per MLflow run with its method, key params and metrics."""
    from moalign import compare as core

    try:
        settings = _register_settings(params)
    except ParamsError as error:
        raise _fail(str(error), 2) from None
    uri = tracking_uri or settings.tracking_uri
    name = experiment or settings.experiment
    rows = _collect_rows(uri, name, metric, only_registered, sort)
    if not rows:
        which = "registered runs" if only_registered else "runs"
        typer.echo(
            f"No {which} in experiment {name!r} at {uri} yet: run the pipeline (dvc repro) "
            "and they appear here."
        )
        raise typer.Exit(0)

    keys = core.metric_keys(rows)
    if sort:
        try:
            rows = core.sort_rows(rows, core.resolve_sort_key(sort, keys))
        except core.CompareError as error:
            raise _fail(str(error), 2) from None
    unlogged = [k for k in (metric or []) if all(row["metrics"].get(k) is None for row in rows)]
    if unlogged:
        typer.secho(f"no run logged: {', '.join(unlogged)}", fg=typer.colors.YELLOW, err=True)

    plural = "s" if len(rows) != 1 else ""
    _print_comparison(rows, keys, title=f"{name} — {len(rows)} run{plural} ({uri})")
    if csv_out is not None:
        typer.echo(f"wrote {core.write_csv(rows, keys, csv_out)}")
    if json_out is not None:
        typer.echo(f"wrote {core.write_json(rows, keys, json_out)}")


_PROMOTE_HELP = (
    "Decide whether a registered version becomes the 'champion' (docs/promotion.md).\n\n"
    "It is promoted only when, on the same held-out evaluation, it beats the starting model (win rate "
    "95% CI low above 0.5) and the current champion (paired per-prompt mean score difference with a 95% "
    "bootstrap interval above 0), and no dimension falls more than register.max_regression below either. "
    "A failed, partial or not comparable evaluation never promotes. The decision and its numbers become "
    "promotion.* tags of the version; the exit code is 0 whether or not it is promoted.\n\n"
    "Examples:\n\n"
    "  moalign promote --dry-run\n"
    "  moalign promote --version 3\n"
    "  moalign promote --model-name moalign-policy --tracking-uri sqlite:///elsewhere/mlflow.db"
)


_PromoteParamsOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        metavar="FILE",
        help="Read register.tracking_uri, register.model_name and register.max_regression from this file "
        "\\[default: ./params.yaml when present, else sqlite:///mlflow.db, 'moalign-policy', no tolerance]",
    ),
]


@app.command("promote", help=_PROMOTE_HELP)
def promote(
    model_name: Annotated[str | None, typer.Option("--model-name", metavar="NAME",
                                                   help="Registered model (overrides params.yaml).")] = None,
    version: Annotated[int | None, typer.Option("--version", metavar="N",
                                                help="Version to judge \\[default: the challenger]")] = None,
    tracking_uri: _UriOpt = None,
    params: _PromoteParamsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision; move and tag nothing.")] = False,
) -> None:
    """Decide whether a registered version becomes the champion."""
    from moalign import promotion, tracking

    try:
        settings = _register_settings(params)
    except ParamsError as error:
        raise _fail(str(error), 2) from None
    try:
        decision = promotion.promote(tracking_uri or settings.tracking_uri, model_name or settings.model_name,
                                     version, max_regression=settings.max_regression, dry_run=dry_run)
    except (promotion.PromotionError, tracking.TrackingError) as error:
        raise _fail(str(error)) from None
    for line in _decision_lines(decision, dry_run):
        typer.echo(line)


def _decision_lines(decision, dry_run: bool) -> list[str]:
    """The decision as plain lines: verdict, reasons, then the numbers it used."""
    against = f"champion version {decision.compared_with}" if decision.compared_with else "no champion yet"
    lines = [f"{decision.model_name} version {decision.version}: {decision.decision} (against {against})"]
    lines += [f"  - {reason}" for reason in decision.reasons]
    lines += [f"  {key}: {value:.4g}" for key, value in decision.numbers.items()]
    if dry_run:
        lines.append("dry run: no alias moved, no tag written")
    elif decision.promoted:
        lines.append(f"alias champion -> version {decision.version}")
    return lines


_NUMERIC_FIELDS = ("beta", "gamma", "learning_rate", "version")
_NAME_MAX = 24  # on a narrow terminal, longer run names are cut (…)


def _drop_order(rows: list[dict], keys: list[str]) -> list[str]:
    """The columns a narrow terminal leaves out, in this order: the details before the numbers that
    rank the runs; status only when every run finished."""
    from moalign import compare as core

    order = ("start_time", "status", "learning_rate", "lora", "version", "run_name", "weights", "gamma",
             core.AVG_WORDS, core.VALID_ROWS, "beta")
    finished = all(row.get("status") == "FINISHED" for row in rows)
    return [c for c in order if c in core.table_columns(keys) and (c != "status" or finished)]


def _cell_style(column: str, value: str, best: bool) -> str:
    if best:
        return "bold green"
    return "yellow" if column == "status" and value not in ("FINISHED", "—") else ""


def _rich_table(rows: list[dict], keys: list[str], title: str, hidden=(), *, narrow=False, fold=False):
    """The comparison as a rich Table without the ``hidden`` columns. ``narrow``: one word per header
    line, so no column has room to give but by leaving out a column; ``fold``: rich may then fold
    the metric headers' longest words (it shrinks the widest columns first)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from moalign import compare as core

    headers, cells = core.comparison_table(rows, keys)
    columns = core.table_columns(keys)
    best = core.best_rows(rows, keys)
    shown = [i for i, column in enumerate(columns) if column not in hidden]
    caption = "bold: best per column;  —: not logged, or not read by the method"
    if hidden:
        caption += f";  left out (narrow terminal): {', '.join(headers[columns.index(c)] for c in hidden)}"
    # booktabs-like, as in the papers: a rule under the header, no vertical lines
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i in shown:
        column, header = columns[i], headers[i]
        if column in keys:
            words = header.replace("_", " ").split()
            table.add_column("\n".join(words) if narrow else " ".join(words), justify="right",
                             no_wrap=narrow and not fold, overflow="fold")
        elif column in ("run_name", "start_time"):  # may wrap between words; a long name is cut
            table.add_column(header, overflow="ellipsis", max_width=_NAME_MAX if narrow else None)
        else:
            table.add_column(header, justify="right" if column in _NUMERIC_FIELDS else "left", no_wrap=True)
    for r, line in enumerate(cells):
        styles = [_cell_style(columns[i], line[i], r in best.get(columns[i], ())) for i in shown]
        table.add_row(*(Text(line[i], style=style) for i, style in zip(shown, styles, strict=True)))
    return table


def _print_comparison(rows: list[dict], keys: list[str], title: str, console=None) -> None:
    """The table on ``console`` (default: stdout), laid out by rich. A terminal narrower than the
    table stacks the metric headers and leaves out :func:`_drop_order` columns until the rest fits
    with whole words; a pipe or a file gets the whole table, not cut at 80 columns."""
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    unbounded = console.options.update_width(10_000)  # rich's measurements stop at the given width

    def minimum(table) -> int:
        return Measurement.get(console, unbounded, table).minimum

    table = _rich_table(rows, keys, title)
    natural = Measurement.get(console, unbounded, table).maximum
    if not console.is_terminal:
        console = Console(file=console.file, width=natural)
    elif natural > console.width:
        droppable, hidden = _drop_order(rows, keys), []
        table = _rich_table(rows, keys, title, narrow=True)
        while droppable and minimum(table) > console.width:
            hidden.append(droppable.pop(0))
            table = _rich_table(rows, keys, title, hidden, narrow=True)
        if minimum(table) > console.width:
            table = _rich_table(rows, keys, title, hidden, narrow=True, fold=True)
    console.print(table)


if __name__ == "__main__":
    app()
