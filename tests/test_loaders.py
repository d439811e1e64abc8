"""Foreign preference formats become PreferenceRows, and bad records are named, never guessed at."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from components import annotate as annotate_stage
from moalign.annotation import fill_missing_scores
from moalign.config import Params, ParamsError, parse_params
from moalign.data.loaders import LoaderError, load_pairs, split_for, to_scale
from moalign.data.schema import PreferenceRow, read_jsonl
from moalign.judges import make_judge

DIMS = ["helpfulness", "correctness", "verbosity"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_scales_map_onto_1_to_5():
    assert [to_scale(v, (0, 4), "r") for v in (0, 2, 4)] == [1, 3, 5]
    assert to_scale("3", (1, 5), "r") == 3
    assert [to_scale(v, (0, 4), "r", reverse=True) for v in (0, 4)] == [5, 1]
    with pytest.raises(LoaderError, match=r"rec 7\.helpfulness: score 5 outside the format's range 0-4"):
        to_scale(5, (0, 4), "rec 7.helpfulness")
    with pytest.raises(LoaderError, match="not a number"):
        to_scale("great", (0, 4), "r")


def test_hf_preference_plain_and_conversational(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "id": "a"},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
        {"prompt": [{"role": "user", "content": "Name a colour"}],
         "chosen": [{"role": "assistant", "content": "Blue"}], "rejected": [{"role": "assistant", "content": "7"}]},
    ])
    rows, stats = load_pairs(path, "hf_preference", DIMS, source="mine")
    assert [r.id for r in rows] == ["mine:a", "mine:1", "mine:2"]
    assert [(r.prompt, r.chosen.text, r.rejected.text) for r in rows] == [
        ("Say hi", "Hi!", "No."), ("2+2?", "4", "5"), ("Name a colour", "Blue", "7")
    ]
    assert all(r.chosen.scores == {} and r.source == "mine" for r in rows)
    assert stats.as_dict() == {"records": 3, "pairs": 3, "skipped": {}, "rejected": 0}


def test_bad_records_are_rejected_with_their_line_and_the_rest_load(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "x", "chosen": "a", "rejected": "b"},
        {"prompt": "y", "chosen": "a"},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": "b"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "c"}]},
        {"prompt": "z", "chosen": 19, "rejected": "b"},
    ])
    rows, stats = load_pairs(path, "hf_preference", DIMS)
    assert [r.prompt for r in rows] == ["x"]
    assert [(r.where, r.reason) for r in stats.rejected] == [
        (f"{path}:2", f"{path}:2: missing field 'rejected' (the record has 'chosen', 'prompt')"),
        (f"{path}:3", f"{path}:3: chosen: expected one assistant message after the prompt, got 2"),
        (f"{path}:4", f"{path}:4: chosen: expected text, got int"),
    ]
    assert stats.rejected[0].content == {"prompt": "y", "chosen": "a"}  # kept for the user to mend
    assert stats.as_dict()["rejected"] == 3 and stats.rejected_fraction == 0.75


def test_the_ultrafeedback_binarized_layout_loads(tmp_path):
    """prompt as a string, chosen/rejected as whole conversations repeating the user turn, plus the
    set's other columns (HuggingFaceH4/ultrafeedback_binarized)."""
    def conversation(answer):
        return [{"role": "user", "content": "How do tides work?"}, {"role": "assistant", "content": answer}]

    path = write_jsonl(tmp_path / "train_prefs.jsonl", [{
        "prompt": "How do tides work?", "prompt_id": "abc123", "chosen": conversation("The Moon's gravity..."),
        "rejected": conversation("Magic."), "messages": conversation("The Moon's gravity..."),
        "score_chosen": 8.5, "score_rejected": 3.0,
    }])
    (row,), stats = load_pairs(path, "hf_preference", DIMS)
    assert (row.prompt, row.chosen.text, row.rejected.text) == ("How do tides work?", "The Moon's gravity...", "Magic.")
    assert not stats.rejected
    # a side whose first turn is another user question is not this prompt's answer
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "A?", "chosen": conversation("x"), "rejected": conversation("y")}])
    _, stats = load_pairs(other, "hf_preference", DIMS)
    assert "chosen: starts with a 'user' turn that is not the prompt's" in stats.rejected[0].reason


def test_answers_stay_text_whatever_they_look_like(tmp_path):
    # datasets' CSV reader would have made these integers (and "02134" 2134), failing the whole file
    path = tmp_path / "numbers.csv"
    path.write_text('prompt,chosen,rejected\n"What is 4+15?",19,20\nZip code of Cambridge MA?,02139,2139\n'
                    '"Two\nlines?","yes\nreally",no\n')
    rows, stats = load_pairs(path, "hf_preference", DIMS)
    assert [(r.chosen.text, r.rejected.text) for r in rows] == [("19", "20"), ("02139", "2139"), ("yes\nreally", "no")]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "p", "chosen": "19", "rejected": "x"},
                                                   {"prompt": "q", "chosen": ["not", "messages"], "rejected": "x"}])
    rows, stats = load_pairs(mixed, "hf_preference", DIMS)
    assert rows[0].chosen.text == "19" and stats.rejected[0].where == f"{mixed}:2"


def test_a_line_cut_short_or_not_utf8_is_named_and_the_others_load(tmp_path):
    path = tmp_path / "cut.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "b"}\n\n' + good[:20] + b"\n")
    rows, stats = load_pairs(path, "hf_preference", DIMS)
    assert len(rows) == 1
    assert [r.where for r in stats.rejected] == [f"{path}:2", f"{path}:4"]
    assert "not valid UTF-8" in stats.rejected[0].reason and "not valid JSON" in stats.rejected[1].reason
    assert stats.rejected[1].content == good[:20].decode()
    # a document format has no lines to skip: the file fails, naming the line
    array = tmp_path / "cut.json"
    array.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": "q", "cho')
    with pytest.raises(LoaderError, match=rf"{array}:3: not valid JSON"):
        load_pairs(array, "hf_preference", DIMS)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt,chosen,rejected\np,a,b\nq,caf\xe9,b\n")
    with pytest.raises(LoaderError, match=rf"{latin}:3: not valid UTF-8.*re-save the file as UTF-8"):
        load_pairs(latin, "hf_preference", DIMS)


@pytest.mark.parametrize(("name", "content"), [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"), ("empty.json", b"[]"), ("header.csv", b"prompt,chosen,rejected\n"),
])
def test_an_empty_file_says_so(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LoaderError, match=rf"{tmp_path / name}: (the file is empty|no records)"):
        load_pairs(tmp_path / name, "hf_preference", DIMS)


def test_json_lines_in_a_json_file_load_as_datasets_writes_them(tmp_path):
    path = tmp_path / "to_json.json"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "c", "rejected": "d"}\n')
    rows, _ = load_pairs(path, "hf_preference", DIMS)
    assert [r.prompt for r in rows] == ["p", "q"]


def test_score_scale_replaces_the_formats_range(tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl", [
        {"prompt": "Q", "chosen": {"response": "A", "helpfulness": 10}, "rejected": {"response": "B", "helpfulness": 1}},
    ])
    _, stats = load_pairs(path, "amopo", DIMS)
    assert "score 10 outside the format's range 0-4 (data.score_scale sets another)" in stats.rejected[0].reason
    (row,), _ = load_pairs(path, "amopo", DIMS, score_scale=(1, 10))
    assert (row.chosen.scores, row.rejected.scores) == ({"helpfulness": 5}, {"helpfulness": 1})
    with pytest.raises(ParamsError, match="hf_preference files carry no scores"):
        parse_params({"data": {"source": "file", "path": "x.jsonl", "score_scale": [1, 10]}})
    with pytest.raises(ParamsError, match="low < high"):
        parse_params({"data": {"source": "file", "path": "x.jsonl", "format": "amopo", "score_scale": [5, 1]}})


def test_helpsteer2_pairs_by_mean_or_dimension_and_counts_what_it_skips(tmp_path):
    records = [
        {"prompt": "P1", "response": "long good", "helpfulness": 4, "correctness": 4, "verbosity": 4},
        {"prompt": "P1", "response": "short bad", "helpfulness": 1, "correctness": 2, "verbosity": 0},
        {"prompt": "P2", "response": "x", "helpfulness": 2, "correctness": 2, "verbosity": 2},
        {"prompt": "P2", "response": "y", "helpfulness": 2, "correctness": 2, "verbosity": 2},
        {"prompt": "P3", "response": "alone", "helpfulness": 3, "correctness": 3, "verbosity": 3},
    ]
    path = tmp_path / "hs2.parquet"
    pd.DataFrame(records).to_parquet(path)
    rows, stats = load_pairs(path, "helpsteer2", DIMS)
    assert len(rows) == 1 and rows[0].chosen.text == "long good"
    assert rows[0].chosen.scores == {"helpfulness": 5, "correctness": 5, "verbosity": 5}
    assert stats.skipped == {"tied_scores": 1, "single_response": 1}
    # HelpSteer2's verbosity runs the other way: 4 = most verbose, the worse answer
    rows, _ = load_pairs(path, "helpsteer2", DIMS, reverse_scores=["verbosity"], pair_by="verbosity")
    assert rows[0].chosen.text == "short bad" and rows[0].chosen.scores["verbosity"] == 5


def test_ultrafeedback_best_against_worst_with_aliases_and_na(tmp_path):
    def completion(text, help_, truth, verbose="N/A"):
        return {"response": text, "annotations": {
            "helpfulness": {"Rating": str(help_)}, "truthfulness": {"Rating": str(truth)}, "verbosity": {"Rating": verbose}}}

    path = write_jsonl(tmp_path / "uf.jsonl", [
        {"instruction": "Explain tides", "completions": [completion("ok", 3, 3), completion("best", 5, 5), completion("bad", 1, 2)]},
        {"instruction": "Only one", "completions": [completion("solo", 4, 4)]},
    ])
    rows, stats = load_pairs(path, "ultrafeedback", DIMS)
    assert (rows[0].chosen.text, rows[0].rejected.text) == ("best", "bad")
    assert rows[0].chosen.scores == {"helpfulness": 5, "correctness": 5}  # verbosity N/A: left to the judge
    assert stats.skipped == {"fewer_than_two_rated_completions": 1}


def test_amopo_schema_flat_or_nested_scores_and_csv_is_rejected_cleanly(tmp_path):
    path = write_jsonl(tmp_path / "amopo.jsonl", [
        {"prompt": "Q", "chosen": {"response": "A", "helpfulness": 4, "correctness": 3},
         "rejected": {"response": "B", "scores": {"helpfulness": 1, "correctness": 0}}, "split": "eval"},
    ])
    (row,), _ = load_pairs(path, "amopo", DIMS)
    assert row.chosen.scores == {"helpfulness": 5, "correctness": 4}
    assert row.rejected.scores == {"helpfulness": 2, "correctness": 1}
    assert row.split == "eval"
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(LoaderError, match="unknown file type '.tsv'"):
        load_pairs(tmp_path / "x.tsv", "amopo", DIMS)
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_pairs(tmp_path / "missing.jsonl", "amopo", DIMS)


def test_split_is_by_prompt_and_ids_must_be_unique(tmp_path):
    assert split_for("same prompt", 0.5) == split_for("  same prompt ", 0.5)
    splits = {split_for(f"prompt {i}", 0.3) for i in range(200)}
    assert splits == {"train", "eval"}
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a", "chosen": "x", "rejected": "y"}] * 2)
    rows, stats = load_pairs(path, "hf_preference", DIMS)
    assert len(rows) == 1
    assert stats.rejected[0].reason == f"{path}:2: pair id 'dup:1' was already used at {path}:1 (records' 'id' fields must be unique)"
    many = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"p{i}", "chosen": "x", "rejected": "y"} for i in range(5)])
    assert len(load_pairs(many, "hf_preference", DIMS, max_pairs=2)[0]) == 2


class RecordingJudge:
    """An LLM-judge stand-in: scores 2 on whatever it is asked, fails on 'verbosity' for 'B'."""

    dimensions = tuple(DIMS)

    def __init__(self):
        self.asked = []

    def score_batch(self, items, dimensions=None):
        self.asked.append((len(items), tuple(dimensions)))
        return [{d: 2 for d in dimensions if not (d == "verbosity" and text == "B")} for _, text in items]


def test_the_judge_scores_only_what_the_file_lacks(tmp_path):
    path = write_jsonl(tmp_path / "amopo.jsonl", [
        {"prompt": "Q", "chosen": {"response": "A", "helpfulness": 4, "correctness": 3},
         "rejected": {"response": "B", "helpfulness": 1, "correctness": 0}},
    ])
    rows, _ = load_pairs(path, "amopo", DIMS)
    judge = RecordingJudge()
    filled, audit, counts = fill_missing_scores(rows, judge, DIMS)
    assert judge.asked == [(2, ("verbosity",))]
    assert filled[0].chosen.scores == {"helpfulness": 5, "correctness": 4, "verbosity": 2}
    assert "verbosity" not in filled[0].rejected.scores  # the failure stays visible for the gate
    assert counts == {"judged_responses": 2, "judge_failures": 1}
    assert rows[0].chosen.scores == {"helpfulness": 5, "correctness": 4}  # input rows untouched
    assert len(audit) == 2
    with pytest.raises(ValueError, match="amopo:0 has no verbosity score.*set judge.backend"):
        fill_missing_scores(rows, make_judge("programmatic", DIMS), DIMS)


def test_annotate_stage_reads_a_file_with_no_code_change(tmp_path):
    records = [
        {"prompt": f"P{i}", "response": text, "helpfulness": h, "correctness": h, "verbosity": 2}
        for i in range(4) for text, h in ((f"good {i}", 4), (f"bad {i}", 1))
    ]
    write_jsonl(tmp_path / "hs2.jsonl", records)
    params = Params.model_validate({
        "dimensions": {"names": DIMS},
        "data": {"source": "file", "path": str(tmp_path / "hs2.jsonl"), "format": "helpsteer2", "eval_fraction": 0.25},
        # every dimension is in the file, so the judge is configured but never called
        "judge": {"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "unused",
                  "cache_path": str(tmp_path / "cache.sqlite")},
    })
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(by_alias=True)))
    result = CliRunner().invoke(annotate_stage.app, [
        "--tasks", "unused", "--model", "unused", "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml"),
    ])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "out/pairs.jsonl", PreferenceRow)
    assert len(rows) == 4 and {r.chosen.text[:4] for r in rows} == {"good"}
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["records"] == 8 and stats["format"] == "helpsteer2"


def _file_stage(tmp_path, records, max_fraction):
    write_jsonl(tmp_path / "prefs.jsonl", records)
    params = Params.model_validate({
        "dimensions": {"names": DIMS},
        "data": {"source": "file", "path": str(tmp_path / "prefs.jsonl"), "format": "amopo"},
        "validate": {"max_quarantine_fraction": max_fraction},
        "judge": {"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "unused",
                  "cache_path": str(tmp_path / "cache.sqlite")},
    })
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(by_alias=True)))
    return CliRunner().invoke(annotate_stage.app, [
        "--tasks", "unused", "--model", "unused", "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml"),
    ])


def test_the_stage_quarantines_bad_records_and_fails_only_past_the_limit(tmp_path):
    scores = {"helpfulness": 4, "correctness": 4, "verbosity": 4}
    good = [{"prompt": f"P{i}", "chosen": {"response": "A", **scores}, "rejected": {"response": "B", **scores}}
            for i in range(4)]
    bad = {"prompt": "P", "chosen": {"response": "A", **scores, "verbosity": 9}, "rejected": {"response": "B", **scores}}
    result = _file_stage(tmp_path, [*good, bad], max_fraction=0.25)
    assert result.exit_code == 0, result.output
    (entry,) = read_jsonl(tmp_path / "out/rejected.jsonl", None)
    assert entry["where"] == f"{tmp_path / 'prefs.jsonl'}:5" and "verbosity: score 9 outside" in entry["reason"]
    assert entry["content"] == bad
    assert json.loads((tmp_path / "out/stats.json").read_text())["rejected"] == 1
    pairs_before = (tmp_path / "out/pairs.jsonl").read_bytes()

    result = _file_stage(tmp_path, [*good[:2], bad, bad], max_fraction=0.25)
    assert result.exit_code != 0
    assert "2 of 4 records" in result.output and "above validate.max_quarantine_fraction=0.25" in result.output
    assert len(read_jsonl(tmp_path / "out/rejected.jsonl", None)) == 2  # every reason, to mend the file
    assert (tmp_path / "out/pairs.jsonl").read_bytes() == pairs_before  # the last good output is untouched


@pytest.mark.parametrize(("name", "fmt"), [
    ("hf_preference", "hf_preference"), ("ultrafeedback_binarized", "hf_preference"), ("helpsteer2", "helpsteer2"),
    ("ultrafeedback", "ultrafeedback"), ("amopo", "amopo"),
])
def test_the_shipped_examples_load_whole(name, fmt):
    from pathlib import Path

    rows, stats = load_pairs(Path(__file__).parents[1] / "data/raw/examples" / f"{name}.jsonl", fmt, DIMS)
    assert rows and not stats.rejected
