"""Reading IFBench's JSONL test file into :class:`IFBenchPrompt` items, checked line by line.

The caller says where the file is (the evaluate stage passes ``<benchmarks_dir>/ifbench/`` +
:data:`TEST_FILE`); nothing here knows the repository layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moalign.evaluation.ifbench.verifiers import REQUIRED_KWARGS

#: The test file's name in IFBench's release (and in ``data/benchmarks/ifbench/``).
TEST_FILE = "IFBench_test.jsonl"


class IFBenchFormatError(ValueError):
    """A line of an IFBench JSONL file does not have the expected shape."""


@dataclass(frozen=True)
class IFBenchPrompt:
    """One prompt; ``kwargs[i]`` (``None`` values dropped) is for instruction ``i``."""

    key: int | str
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def _whole(value: Any) -> Any:
    # the file stores counts and positions as 8.0 on some lines and 8 on others
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _parse_line(raw: str, where: str) -> IFBenchPrompt:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise IFBenchFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise IFBenchFormatError(
            f"{where}: expected a JSON object, got {type(record).__name__}"
        )
    for field in _FIELDS:
        if field not in record:
            raise IFBenchFormatError(f"{where}: missing field {field!r}")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        raise IFBenchFormatError(f"{where}: field 'prompt' must be a non-empty string")
    ids = record["instruction_id_list"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IFBenchFormatError(
            f"{where}: field 'instruction_id_list' must be a non-empty list of strings"
        )
    kwargs_list = record["kwargs"]
    if not isinstance(kwargs_list, list):
        raise IFBenchFormatError(f"{where}: field 'kwargs' must be a list")
    if len(kwargs_list) != len(ids):
        raise IFBenchFormatError(
            f"{where}: field 'kwargs' has {len(kwargs_list)} entries but "
            f"'instruction_id_list' has {len(ids)}"
        )
    cleaned: list[dict[str, Any]] = []
    for i, (instruction_id, kw) in enumerate(zip(ids, kwargs_list, strict=True)):
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise IFBenchFormatError(
                f"{where}: field 'kwargs[{i}]' must be an object or null"
            )
        kw = {k: _whole(v) for k, v in kw.items() if v is not None}
        missing = [k for k in REQUIRED_KWARGS.get(instruction_id, ()) if k not in kw]
        if missing:
            raise IFBenchFormatError(
                f"{where}: field 'kwargs[{i}]' for {instruction_id!r} "
                f"lacks {', '.join(missing)}"
            )
        cleaned.append(kw)
    return IFBenchPrompt(
        key=record["key"],
        prompt=record["prompt"],
        instruction_ids=tuple(ids),
        kwargs=tuple(cleaned),
    )


def load_ifbench(path: str | Path) -> list[IFBenchPrompt]:
    """Read IFBench JSONL; a bad line raises ``IFBenchFormatError`` (line, field)."""
    path = Path(path)
    items: list[IFBenchPrompt] = []
    seen: dict[Any, int] = {}
    with path.open("rb") as handle:  # decoded line by line, so that a bad byte is named by its line
        for lineno, data in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise IFBenchFormatError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            if not raw.strip():
                continue
            item = _parse_line(raw, where)
            if item.key in seen:
                raise IFBenchFormatError(
                    f"{where}: field 'key' {item.key!r} repeats line {seen[item.key]}"
                )
            seen[item.key] = lineno
            items.append(item)
    if not items:
        raise IFBenchFormatError(f"{path}: no prompts")
    return items
