"""The bad-input corpus of preference files (tests/data/bad/data): each file either fails the
annotate stage naming the file and its line, or has its bad record rejected with its place and
reason while the others load; either way the stage's last good output is left as it was."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components import annotate as annotate_stage
from moalign.config import Params
from moalign.data.loaders import LoaderError, load_pairs
from moalign.data.schema import read_jsonl

CORPUS = Path(__file__).parent / "data" / "bad" / "data"
DIMS = ["helpfulness"]

#: file -> (format, whole-file error, or (line/record where, reason) of the one rejected record)
FILE_ERRORS = {
    "empty.jsonl": ("hf_preference", "the file is empty: no records"),
    "blank_lines.jsonl": ("hf_preference", "the file is empty: no records"),
    "header_only.csv": ("hf_preference", "no records"),
    "empty_array.json": ("hf_preference", "no records"),
    "latin1.csv": ("hf_preference", "latin1.csv:3: not valid UTF-8"),
    "truncated_array.json": ("hf_preference", "truncated_array.json:10: not valid JSON"),
    "tab_separated.tsv": ("hf_preference", "unknown file type '.tsv'"),
    "damaged.parquet": ("hf_preference", "damaged.parquet: cannot be read as Parquet"),
}
REJECTED = {
    "truncated_last_line.jsonl": ("hf_preference", ":3", "not valid JSON"),
    "latin1_line.jsonl": ("hf_preference", ":2", "not valid UTF-8"),
    "missing_rejected.jsonl": ("hf_preference", ":2", "missing field 'rejected' (the record has 'chosen', 'prompt')"),
    "number_answer.jsonl": ("hf_preference", ":3", "chosen: expected text, got int"),
    "not_an_object.jsonl": ("hf_preference", ":2", "expected an object, got list"),
    "duplicate_ids.jsonl": ("hf_preference", ":3", "pair id 'duplicate_ids:x1' was already used at"),
    "extra_cells.csv": ("hf_preference", ":3", "4 fields but the header names 3"),
    "message_without_role.jsonl": ("hf_preference", ":2", "chosen[0]: a message needs 'role' and 'content'"),
    "two_turn_completion.jsonl": ("hf_preference", ":2", "expected one assistant message after the prompt, got 2"),
    "no_shared_prompt.jsonl": ("hf_preference", ":2", "no 'prompt' field and no turns shared"),
    "mismatched_sides.jsonl": ("hf_preference", ":2", "rejected: expected text, got list"),
    "object_not_array.json": ("hf_preference", ":1", "missing field 'chosen' (the record has 'data')"),
    "amopo_score_out_of_range.jsonl": ("amopo", ":2", "helpfulness: score 7 outside the format's range 0-4"),
    "amopo_side_not_object.jsonl": ("amopo", ":2", "chosen: expected an object with 'response' and scores"),
    "helpsteer2_score_not_number.csv": ("helpsteer2", ":4", "helpfulness: score 'great' is not a number"),
    "ultrafeedback_no_completions.jsonl": ("ultrafeedback", ":2", "missing field 'completions'"),
}


def test_every_corpus_file_has_an_expectation():
    assert {p.name for p in CORPUS.iterdir()} == set(FILE_ERRORS) | set(REJECTED)


def _stage(tmp_path, name, fmt):
    params = Params.model_validate({
        "dimensions": {"names": DIMS},
        "data": {"source": "file", "path": str(CORPUS / name), "format": fmt},
        "validate": {"max_quarantine_fraction": 0.0},  # one rejected record is one too many here
        "judge": {"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "unused",
                  "cache_path": str(tmp_path / "cache.sqlite")},
    })
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(by_alias=True)))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "pairs.jsonl").write_text("an earlier run's pairs\n")
    result = CliRunner().invoke(annotate_stage.app, [
        "--tasks", "unused", "--model", "unused", "--out", str(out), "--params", str(tmp_path / "params.yaml"),
    ])
    assert result.exit_code != 0
    assert (out / "pairs.jsonl").read_text() == "an earlier run's pairs\n", "an earlier output was overwritten"
    return " ".join(result.output.split())  # typer wraps long messages


@pytest.mark.parametrize("name", sorted(FILE_ERRORS))
def test_a_file_that_cannot_be_read_fails_naming_it(tmp_path, name):
    fmt, message = FILE_ERRORS[name]
    with pytest.raises(LoaderError) as error:
        load_pairs(CORPUS / name, fmt, DIMS)
    assert message in str(error.value) and str(CORPUS / name) in str(error.value)
    assert name in _stage(tmp_path, name, fmt)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_a_bad_record_is_rejected_with_its_place_and_the_rest_load(tmp_path, name):
    fmt, line, reason = REJECTED[name]
    rows, stats = load_pairs(CORPUS / name, fmt, DIMS)
    (entry,) = stats.rejected
    assert entry.where == f"{CORPUS / name}{line}"
    assert entry.reason.startswith(entry.where) and reason in entry.reason
    assert rows or stats.records == 1, "the good records load"
    assert "above validate.max_quarantine_fraction=0.0" in _stage(tmp_path, name, fmt)
    (written,) = read_jsonl(tmp_path / "out" / "rejected.jsonl", None)
    assert written["where"] == entry.where and written["reason"] == entry.reason
