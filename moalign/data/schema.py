"""The row types that travel through every stage.

Three records exist and no others:

* :class:`TaskPrompt` -- one instruction of a prompt pool, with whatever a programmatic judge needs to
  verify a response to it (``checks``). The embedded verifiable task produces these; an LLM-judged
  data set simply leaves ``checks`` empty.
* :class:`PreferenceRow` -- one preference pair: a prompt, a chosen and a rejected response, and
  the per-dimension scores of both. Loaders convert foreign formats into it at the edge so nothing
  downstream knows formats.
* :class:`ScoredCandidate` -- one scored response to a prompt, paired or not: every candidate the
  annotate stage sampled (or each distinct response of a loaded file's pairs). MOSLIM's reward model
  learns per-response scores, not preferences, so it trains on these: a prompt whose candidates all
  tied yields no pair but still teaches the heads.

JSON Lines is the on-disk format: one ``model_dump_json()`` per line, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Split = Literal["train", "eval"]

SCORE_MIN = 1
SCORE_MAX = 5


class TaskPrompt(BaseModel):
    """One instruction of a prompt pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Stable identifier, unique across the pool.")
    split: Split = Field(description="'train' prompts feed annotation and training; 'eval' are held out.")
    category: str = Field(description="Family of the instruction, e.g. 'arithmetic' or 'unsafe'.")
    prompt: str = Field(min_length=1, description="The user instruction as plain text.")
    checks: dict[str, Any] = Field(
        default_factory=dict,
        description="What a programmatic judge verifies (expected answer, word limits, keywords...).",
    )


class ScoredResponse(BaseModel):
    """A response with its per-dimension scores on the papers' 1-5 scale."""

    model_config = ConfigDict(extra="forbid")

    text: str
    scores: dict[str, int]
    truncated: bool = Field(
        False, description="Cut off by the generation length limit, not ended by the model: trained without "
        "an end-of-turn token, so the policy does not learn to stop where the limit happened to fall."
    )


class PreferenceRow(BaseModel):
    """One preference pair, the unit of annotation, validation and training."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique pair identifier.")
    source: str = Field(description="Where the pair came from (data set name or 'embedded-task'), for lineage.")
    prompt_id: str = Field(description="Identifier of the prompt the pair answers.")
    split: Split
    prompt: str
    chosen: ScoredResponse
    rejected: ScoredResponse

    def mean_score(self, which: Literal["chosen", "rejected"]) -> float:
        scores = getattr(self, which).scores
        return sum(scores.values()) / len(scores)


class ScoredCandidate(BaseModel):
    """One scored response to one prompt (the annotate stage's ``candidates.jsonl``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="'<prompt id>:<candidate index>' (sampled) or '<pair id>:<side>' (loaded).")
    prompt_id: str
    split: Split
    prompt: str
    text: str
    scores: dict[str, int] = Field(description="Per-dimension judge scores; a dimension the judge failed on is absent.")
    truncated: bool = Field(False, description="Cut off by the generation length limit (see ScoredResponse).")


def distinct_responses(candidates: Iterable[ScoredCandidate]) -> list[ScoredCandidate]:
    """Each (split, prompt, response) once, the first seen: a response sampled twice, or in two
    pairs, would otherwise weigh twice in the reward model, which reads nothing else of a candidate."""
    seen: set[tuple[str, str, str]] = set()
    distinct = []
    for candidate in candidates:
        key = (candidate.split, candidate.prompt, candidate.text)
        if key not in seen:
            seen.add(key)
            distinct.append(candidate)
    return distinct


def preference_row_json_schema() -> dict[str, Any]:
    """The JSON Schema of a preference row; ``docs/preference_row.schema.json`` holds a copy (a test keeps it current)."""
    return PreferenceRow.model_json_schema()


Row = TypeVar("Row", bound=BaseModel)


class RowError(ValueError):
    """A line of a JSONL file that does not parse into the expected row type."""


def read_jsonl(path: str | os.PathLike[str], row_type: type[Row] | None, *, errors: str = "strict") -> list[Row]:
    """Read every line of ``path`` as ``row_type``; an error names the file, the line and the field.

    With ``row_type=None`` the lines come back as plain dicts (only the JSON is checked), for a gate
    that must see rows which break the schema instead of stopping at the first one. ``errors`` is
    the UTF-8 decoding policy: ``"strict"`` (a line that is not UTF-8 raises :class:`RowError`) or
    ``"replace"`` (bad bytes become U+FFFD, for a gate that quarantines such rows).
    """
    return list(iter_jsonl(path, row_type, errors=errors))


def iter_jsonl(path: str | os.PathLike[str], row_type: type[Row] | None, *, errors: str = "strict") -> Iterator[Row]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    # bytes, decoded line by line, so a decoding error names its line (b"\n" never occurs inside a
    # multi-byte UTF-8 sequence, so splitting first is safe)
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as error:
                raise RowError(
                    f"{path}:{line_number}: not valid UTF-8 (byte {error.start} of the line: {error.reason})"
                ) from None
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
                yield payload if row_type is None else row_type.model_validate(payload)
            except json.JSONDecodeError as error:
                raise RowError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or "<row>"
                raise RowError(f"{path}:{line_number}: field '{field}': {first['msg']}") from None


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write rows as JSON Lines atomically: a crash leaves the old file or the new one, never half."""
    lines = []
    for row in rows:
        if isinstance(row, BaseModel):
            lines.append(row.model_dump_json())
        else:
            lines.append(json.dumps(row, ensure_ascii=False, sort_keys=True))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
