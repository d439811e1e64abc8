"""The evaluate stage's suites: MT-bench, Arena-Hard, AlpacaEval and controllability, end to end on
the tiny model with a fake LLM judge whose verdicts are known in advance."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from moalign.config import Params
from moalign.data.schema import RowError, TaskPrompt, read_jsonl
from moalign.evaluation.alpacaeval import load_alpaca_eval
from moalign.evaluation.arenahard import load_baseline_answers, load_questions

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "data" / "benchmarks"


def _params(**evaluate) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["evaluate"].update(evaluate)
    return raw


# ------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("evaluate", "judge", "method", "message"),
    [
        ({"benchmarks": ["mt_bench"]}, "programmatic", "amopo", "mt_bench, which need an LLM judge"),
        ({"benchmarks": ["arena_hard", "alpaca_eval"], "alpaca_eval_path": "x.json"}, "programmatic", "amopo",
         "arena_hard, alpaca_eval, which need an LLM judge"),
        ({"benchmarks": ["alpaca_eval"]}, "openai_compatible", "amopo", "set evaluate.alpaca_eval_path"),
        ({"controllability": True}, "programmatic", "amopo", "reads no control tags"),
        ({"controllability_levels": [0, 3]}, "programmatic", "amopo", "distinct values in 1-5"),
        ({"controllability_levels": [3, 3]}, "programmatic", "amopo", "distinct values in 1-5"),
    ],
)
def test_evaluate_config_errors_name_the_fix(evaluate, judge, method, message) -> None:
    raw = _params(**evaluate)
    raw["judge"].update(backend=judge, base_url="http://127.0.0.1:1/v1", model="m")
    raw["train"]["method"] = method
    with pytest.raises(ValueError, match=re.escape(message)):
        Params.model_validate(raw)


def test_control_tag_style_follows_the_method() -> None:
    raw = _params()
    assert Params.model_validate(raw).control_tag_style is None
    raw["train"]["method"] = "controllable_cpo"
    assert Params.model_validate(raw).control_tag_style == "cpo"


# ------------------------------------------------------------------------------------------------
# Input files


def test_alpaca_eval_reads_a_json_list_and_jsonl(tmp_path: Path) -> None:
    records = [{"instruction": "Say hi", "output": "hi", "generator": "gpt4_turbo", "extra": 1},
               {"instruction": "Count to 2", "output": "1 2"}]
    as_list = tmp_path / "alpaca.json"
    as_list.write_text(json.dumps(records))
    as_lines = tmp_path / "alpaca.jsonl"
    as_lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    for path in (as_list, as_lines):
        loaded = load_alpaca_eval(path)
        assert [r.instruction for r in loaded] == ["Say hi", "Count to 2"]
        assert loaded[0].generator == "gpt4_turbo" and loaded[1].output == "1 2"


def test_alpaca_eval_errors_name_the_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(RowError, match=r"record 1: field 'output'"):
        load_alpaca_eval(path)
    lines = tmp_path / "alpaca.jsonl"
    lines.write_text('{"instruction": "a", "output": "b"}\n{"output": "b"}\n')
    with pytest.raises(RowError, match=r"alpaca.jsonl:2: field 'instruction'"):
        load_alpaca_eval(lines)
    with pytest.raises(FileNotFoundError, match="alpaca_eval_path"):
        load_alpaca_eval(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(RowError, match="no records"):
        load_alpaca_eval(tmp_path / "empty.json")


def test_arena_hard_baseline_answers_in_both_formats(tmp_path: Path) -> None:
    questions = load_questions(BENCHMARKS / "arena-hard-v0.1" / "question.jsonl")[:2]
    path = tmp_path / "gpt-4-0314.jsonl"
    path.write_text(
        json.dumps({"question_id": questions[0].uid, "model_id": "gpt-4-0314",
                    "choices": [{"index": 0, "turns": [{"content": "first answer", "token_len": 2}]}]}) + "\n"
        + json.dumps({"uid": questions[1].uid, "answer": "second answer"}) + "\n"
    )
    assert load_baseline_answers(path, questions) == {questions[0].uid: "first answer",
                                                       questions[1].uid: "second answer"}
    more = load_questions(BENCHMARKS / "arena-hard-v0.1" / "question.jsonl")[:3]
    with pytest.raises(ValueError, match=f"no baseline answer for 1 of 3.*{more[2].uid}"):
        load_baseline_answers(path, more)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"uid": "x"}) + "\n")
    with pytest.raises(RowError, match=r"bad.jsonl:1: .*needs 'answer' or 'choices'"):
        load_baseline_answers(bad, questions)


# ------------------------------------------------------------------------------------------------
# The whole stage on the tiny model, with a fake judge that prefers the shorter answer


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def shorter_wins(messages) -> str:
    """A judge with known verdicts: the shorter answer is better (equal length: a tie where the
    template has one), MT-bench rates 7, the per-dimension templates score 3."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if "<|The Start of Assistant A's Answer|>" in text:
        a = _between(text, "<|The Start of Assistant A's Answer|>\n", "\n<|The End of Assistant A's Answer|>")
        b = _between(text, "<|The Start of Assistant B's Answer|>\n", "\n<|The End of Assistant B's Answer|>")
        label = "A=B" if len(a) == len(b) else "A>>B" if len(a) < len(b) else "B>A"
        return f"My final verdict: [[{label}]]"
    if "## Which is best, Output (a) or Output (b)?" in text:
        task = text.rsplit("# Task:", 1)[1]
        a = _between(task, "## Output (a):\n", "\n\n## Output (b):")
        b = _between(task, "## Output (b):\n", "\n\n## Which is best")
        return json.dumps({"preference": "Output (a)" if len(a) <= len(b) else "Output (b)", "reason": "short"})
    if "[[rating]]" in text:
        return "The answer is fine. Rating: [[7]]"
    if '"judgement"' in text:
        return '{"reason": "ok", "judgement": "Pass"}'
    return '{"reason": "ok", "score": 3}'


def _expected(ours: str, theirs: str, ties: bool) -> str:
    if len(ours) == len(theirs):
        return "tie" if ties else "win"  # amopo_winrate has no tie: equal length picks (a) twice
    return "win" if len(ours) < len(theirs) else "loss"


def varied_answers(model, tokenizer, prompts, config, description="", on_batch=None, done=()):
    """Stands in for generation: the tiny random model answers every prompt with an empty string,
    which would leave every comparison a tie. These answers differ in length per model and prompt."""
    import hashlib

    results = []
    for prompt in prompts:  # the journaled ones (``done``) too: answers are a function of the prompt
        # the folder's name, not its path: the same answers in every test session
        digest = hashlib.sha256(f"{Path(model.name_or_path).name}|{prompt}".encode()).digest()
        results.append([" ".join(["word"] * (2 + digest[0] % 9))])  # 9 to 53 characters
    if on_batch is not None:
        on_batch(dict(enumerate(results)))
    return results


@pytest.fixture
def judged_run(tmp_path: Path, tiny_model_dir: Path, serve, monkeypatch):
    import moalign.generation
    from moalign.models import prepare_base_model

    # another model as the reference, so that its answers differ from the policy's
    other_model = prepare_base_model("tiny-random-llama", tmp_path / "other", seed=1)
    monkeypatch.setattr(moalign.generation, "generate", varied_answers)
    server = serve(reply=shorter_wins)
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a colour.", "output": "Blue."},
                                  {"instruction": "Write a long poem about the sea.", "output": "x" * 400}]))
    baseline = tmp_path / "baseline.jsonl"
    questions = load_questions(BENCHMARKS / "arena-hard-v0.1" / "question.jsonl")[:2]
    baseline.write_text(json.dumps({"uid": questions[0].uid, "answer": "ok"}) + "\n"
                        + json.dumps({"uid": questions[1].uid, "answer": "y" * 400}) + "\n")
    raw = _params(benchmarks=["ifbench", "mt_bench", "arena_hard", "alpaca_eval"], benchmark_prompts=2,
                  benchmark_max_new_tokens=12, max_new_tokens=12, alpaca_eval_path=str(alpaca),
                  arena_hard_baseline=str(baseline))
    raw["judge"].update(backend="openai_compatible", base_url=server.url, model="fake-judge",
                        cache_path=str(tmp_path / "judge.sqlite"))
    config = Params.model_validate(raw)
    held_out = [TaskPrompt(id=f"p{i}", split="eval", category="open", prompt=f"Tell me about the number {i}.")
                for i in range(3)]

    def run():
        from moalign.evaluation.run import (
            generate_answers,
            judge_answers,
            plan_evaluation,
        )
        from moalign.judges import open_judges

        plan = plan_evaluation(config, held_out, BENCHMARKS)
        models = {"policy": (tiny_model_dir, "test"), "reference": (other_model, "test")}
        answers = generate_answers(config, plan, models, tmp_path / "generations")
        with open_judges(config.judge, config.dimensions.names) as judges:
            return judge_answers(config, plan, answers, judges, tmp_path / "eval")

    return server, run, tmp_path / "eval"


def test_every_judged_suite_with_known_verdicts(judged_run) -> None:
    server, run, out = judged_run
    rows, metrics = run()
    json.dumps(metrics, allow_nan=False)  # no NaN reaches metrics.json
    # an untagged policy's controllability plot: the header alone, so `dvc plots show` has a file to draw
    assert (out / "controllability.csv").read_text().splitlines() == [
        "requested,correctness,instruction_following,verbosity,harmlessness"]

    # held-out: the LLM pairwise judge decides, in both orders
    wr = metrics["win_rate_vs_reference"]
    assert wr["judge"] == "fake-judge (amopo_winrate, both orders)" and wr["failures"] == 0
    assert len({len(r["policy"]["text"]) - len(r["reference"]["text"]) for r in rows}) > 1
    expected = [_expected(r["policy"]["text"], r["reference"]["text"], ties=False) for r in rows]
    # equal answers are asked in both orders and the judge picks (a) both times: the orders
    # disagree, so a tie
    equal = [r["policy"]["text"] == r["reference"]["text"] for r in rows]
    assert [r["outcome"] for r in rows] == ["tie" if same else e for e, same in zip(expected, equal, strict=True)]

    # MT-bench: every turn of both models rated 7 (two questions, two turns each)
    mt = metrics["mt_bench"]
    assert mt["judge"] == "fake-judge"
    for model in ("policy", "reference"):
        assert mt[model]["overall"] == 7.0 and mt[model]["n_ratings"] == 4 and mt[model]["failures"] == 0
    mt_rows = read_jsonl(out / "mt_bench.jsonl", None)
    assert sorted({(r["model"], r["turn"]) for r in mt_rows}) == [
        ("policy", 1), ("policy", 2), ("reference", 1), ("reference", 2)]

    # Arena-Hard against a file's answers ("ok" is shorter than any answer, 400 y's longer): both
    # models, outcomes from the lengths; Arena-Hard's score counts the strong A>>B three times
    arena = metrics["arena_hard"]
    assert arena["baseline"] == "file"
    arena_rows = read_jsonl(out / "arena_hard.jsonl", None)
    assert [r["outcome"] for r in arena_rows] == ["loss", "win", "loss", "win"]
    for model in ("policy", "reference"):
        assert arena[model]["n"] == 2 and arena[model]["failures"] == 0 and arena[model]["win_rate"] == 0.5
        # loss game: B>A (1 battle, 0) and A>>B against it (3 battles, 0); win game: 3 x 1 + 1 x 1
        assert arena[model]["score"] == pytest.approx(4 / 8)

    # AlpacaEval: both models against the file's answers; "Blue." is shorter than any answer,
    # 400 x's longer
    alpaca = metrics["alpaca_eval"]
    assert alpaca["baseline"] == "alpaca_eval.json"
    alpaca_rows = read_jsonl(out / "alpaca_eval.jsonl", None)
    for model in ("policy", "reference"):
        assert [r["outcome"] for r in alpaca_rows if r["model"] == model] == ["loss", "win"]
        assert alpaca[model]["baseline_avg_words"] == 1.0

    # IFBench ran too, with no judge
    assert set(metrics["ifbench"]) == {"policy", "reference"}
    assert (out / "ifbench.jsonl").is_file()


def test_a_rerun_makes_no_judge_call_and_no_generation(judged_run, monkeypatch) -> None:
    server, run, _ = judged_run
    _, first = run()
    calls = server.total
    assert calls > 0

    import moalign.generation

    def no_generation(*args, **kwargs):
        raise AssertionError("the rerun generated again")

    monkeypatch.setattr(moalign.generation, "generate", no_generation)
    _, second = run()
    assert server.total == calls
    assert second == first


def test_judge_failures_are_counted_not_ties(tmp_path: Path, tiny_model_dir: Path, serve) -> None:
    server = serve(reply=lambda messages: "I cannot decide.")
    raw = _params(benchmarks=["arena_hard"], benchmark_prompts=2, benchmark_max_new_tokens=8, max_new_tokens=8)
    raw["judge"].update(backend="openai_compatible", base_url=server.url, model="fake-judge",
                        cache_path=str(tmp_path / "judge.sqlite"), max_parse_attempts=1)
    config = Params.model_validate(raw)
    held_out = [TaskPrompt(id="p0", split="eval", category="open", prompt="Hello?")]
    from moalign.evaluation.run import generate_answers, judge_answers, plan_evaluation
    from moalign.judges import open_judges

    plan = plan_evaluation(config, held_out, BENCHMARKS)
    answers = generate_answers(config, plan, {"policy": (tiny_model_dir, "t"), "reference": (tiny_model_dir, "t")},
                               tmp_path / "generations")
    with open_judges(config.judge, config.dimensions.names) as judges:
        _, metrics = judge_answers(config, plan, answers, judges, tmp_path / "eval")
    json.dumps(metrics, allow_nan=False)
    wr = metrics["win_rate_vs_reference"]
    assert wr["win_rate"] is None and wr["failures"] == 1 and wr["ties"] == 0
    assert metrics["arena_hard"]["policy"]["failures"] == 2 and metrics["arena_hard"]["policy"]["score"] is None
    assert metrics["policy"]["judge_failures"] == len(config.dimensions.names)


# ------------------------------------------------------------------------------------------------
# Controllability on a control-tag policy, with the programmatic judge


def test_controllability_suite_for_a_control_tag_policy(tmp_path: Path, tiny_model_dir: Path) -> None:
    from moalign.data.synthetic import generate_pool
    from moalign.evaluation.run import generate_answers, judge_answers, plan_evaluation
    from moalign.judges import open_judges

    raw = _params(controllability_prompts=2, controllability_levels=[1, 5], max_new_tokens=8, n_prompts=2)
    raw["train"]["method"] = "controllable_cpo"
    config = Params.model_validate(raw)
    held_out = [t for t in generate_pool(seed=0, n_train=10, n_eval=10) if t.split == "eval"][:2]
    plan = plan_evaluation(config, held_out, BENCHMARKS)
    dims = config.dimensions.names
    assert plan.suites["controllability"].models == ("policy",)
    assert len(plan.control) == len(dims) * 2 * 2
    assert all(r.prompt.startswith("<") and r.prompt.endswith(held_out[0].prompt) or
               r.prompt.endswith(held_out[1].prompt) for r in plan.control)
    answers = generate_answers(config, plan, {"policy": (tiny_model_dir, "t"), "reference": (tiny_model_dir, "t")},
                               tmp_path / "generations")
    assert "controllability" not in answers["reference"]
    with open_judges(config.judge, dims) as judges:
        _, metrics = judge_answers(config, plan, answers, judges, tmp_path / "eval")
    json.dumps(metrics, allow_nan=False)
    summary = metrics["controllability"]
    assert summary["style"] == "cpo" and summary["levels"] == [1, 5]
    assert set(summary["dimensions"]) == set(dims)
    for entry in summary["dimensions"].values():
        assert entry["n"] + entry["failures"] == 4
        assert (entry["spearman"] is None) == (entry["undefined_reason"] is not None)
    with (tmp_path / "eval" / "controllability.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["requested"] for row in table] == ["1", "5"]
    assert set(table[0]) == {"requested", *dims}
    per_prompt = read_jsonl(tmp_path / "eval" / "controllability.jsonl", None)
    assert len(per_prompt) == len(plan.control)


def test_no_controllability_for_a_policy_without_tags(tmp_path: Path) -> None:
    from moalign.evaluation.run import plan_evaluation

    config = Params.model_validate(_params())
    plan = plan_evaluation(config, [TaskPrompt(id="p", split="eval", category="open", prompt="Hi")], BENCHMARKS)
    assert plan.control is None and set(plan.suites) == {"heldout"}


def test_metrics_json_leads_with_the_win_rate_and_sorts_the_rest(tmp_path: Path) -> None:
    from moalign.evaluation.run import write_metrics

    write_metrics(tmp_path / "metrics.json", {"a_first_alphabetically": 1, "policy": {"z": 1, "b": 2},
                                              "win_rate_vs_reference": {"wins": 3, "ci95_low": 0.5}})
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert list(loaded) == ["win_rate_vs_reference", "policy", "a_first_alphabetically"]
    assert list(loaded["win_rate_vs_reference"]) == ["ci95_low", "wins"] and list(loaded["policy"]) == ["b", "z"]
