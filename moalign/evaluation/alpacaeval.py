"""AlpacaEval 2 (Dubois et al. 2024) from a file the user provides.

Its licence is non-commercial, so moalign does not ship it: point ``evaluate.alpaca_eval_path`` at
your copy of the 805 instructions with the baseline's answers (``alpaca_eval.json`` of
``tatsu-lab/alpaca_eval``, or the GPT-4 Turbo baseline's outputs), a JSON list or JSONL of records
with ``instruction`` and ``output`` (the baseline's answer); ``generator`` and ``dataset`` are kept
when present, other fields ignored.

Scoring differs from AlpacaEval's own annotator, which reads GPT-4 Turbo's token probabilities of
one ordering: moalign asks the configured judge the AMoPO win-rate template in both orders
(:mod:`moalign.judges.pairwise`) and computes the length-controlled win rate with AlpacaEval's
GLM (:func:`moalign.evaluation.winrate.length_controlled_win_rate`). Numbers are comparable across
moalign runs with the same judge, not with the public leaderboard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moalign.data.schema import RowError
from moalign.evaluation.mtbench import iter_numbered_rows


class AlpacaEvalRecord(BaseModel):
    """One instruction with the baseline's answer to it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instruction: str = Field(min_length=1)
    output: str  # the baseline's answer; empty is allowed (it then loses to any real answer)
    generator: str | None = None
    dataset: str | None = None

    @property
    def prompt(self) -> str:  # the pairwise judge reads .prompt
        return self.instruction


def load_alpaca_eval(path: str | os.PathLike[str]) -> list[AlpacaEvalRecord]:
    """The records of a JSON list or a JSONL file; an error names the file, the record and the
    field. Keys are the record's position (``"0"``, ``"1"``...), as AlpacaEval has no ids."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (evaluate.alpaca_eval_path: your local copy of AlpacaEval 2)"
        )
    if path.read_bytes().lstrip()[:1] != b"[":
        records = [row for _, row in iter_numbered_rows(path, AlpacaEvalRecord)]
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RowError(f"{path}: not a valid JSON list ({error})") from None
        records = []
        for index, item in enumerate(raw):
            try:
                records.append(AlpacaEvalRecord.model_validate(item))
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or "<record>"
                raise RowError(f"{path}: record {index}: field '{field}': {first['msg']}") from None
    if not records:
        raise RowError(f"{path}: no records")
    return records
