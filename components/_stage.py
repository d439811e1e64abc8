"""What every stage command shares: loading params.yaml once, failing early and readably."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from moalign.config import Params, ParamsError, load_params  # noqa: E402

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="The pipeline's params.yaml.")


def stage_params(path: Path) -> Params:
    """Validated params or a one-paragraph error and exit code 2, before any work starts; applies
    model.trust_remote_code to every model this stage process loads."""
    try:
        config = load_params(path)
    except ParamsError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    from moalign.models import allow_remote_code

    allow_remote_code(config.model.trust_remote_code)
    return config


def setup_logging(stage: str) -> logging.Logger:
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "datasets", "filelock", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(stage)


@contextmanager
def named_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Errors of these kinds name the bad input (a file, a line, a field): print the message alone,
    as plain text that stays copyable, and exit with code 2 instead of a traceback."""
    try:
        yield
    except kinds as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
