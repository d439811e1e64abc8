import pytest

from moalign.annotation import annotate, pair_from_candidates, pairs_from_candidates
from moalign.data.schema import TaskPrompt
from moalign.evaluation.winrate import compare_with_swap, swap_outcome, win_rate
from moalign.judges.programmatic import ProgrammaticJudge

TASK = TaskPrompt(id="t1", split="train", category="arithmetic", prompt="What is 2 + 3?", checks={})


def scores(value):
    return {"correctness": value, "verbosity": value}


def test_pairs_best_against_worst():
    row, reason = pair_from_candidates(TASK, ["a", "b", "c"], [scores(3), scores(5), scores(1)], "src")
    assert reason is None
    assert (row.chosen.text, row.rejected.text) == ("b", "c")
    assert row.chosen.scores == scores(5) and row.split == "train" and row.prompt_id == "t1"


def test_no_pair_when_all_tied_or_only_duplicates_below():
    assert pair_from_candidates(TASK, ["a", "b"], [scores(3), scores(3)], "s") == (None, "all_candidates_tied")
    row, reason = pair_from_candidates(TASK, ["a", " a "], [scores(4), scores(2)], "s")
    assert row is None and reason == "duplicate_text"


def test_annotate_counts_every_prompt():
    judge = ProgrammaticJudge(["correctness"])
    tasks = [
        TaskPrompt(id="a", split="train", category="arithmetic", prompt="What is 2 + 3?", checks={"answer": 5}),
        TaskPrompt(id="b", split="eval", category="arithmetic", prompt="What is 4 + 3?", checks={"answer": 7}),
    ]
    fake_samples = {"What is 2 + 3?": ["5", "9"], "What is 4 + 3?": ["7", "7"]}
    rows, scored, stats = annotate(tasks, lambda prompts: [fake_samples[p] for p in prompts], judge, "test")
    assert [r.id for r in rows] == ["a-pair"]
    assert rows[0].chosen.text == "5" and rows[0].rejected.text == "9"
    # every candidate stays, the tied prompt's too: the reward model trains on them
    assert [(c.id, c.split, c.prompt, c.scores["correctness"]) for c in scored] == [
        ("a:0", "train", "What is 2 + 3?", 5), ("a:1", "train", "What is 2 + 3?", 1),
        ("b:0", "eval", "What is 4 + 3?", 5), ("b:1", "eval", "What is 4 + 3?", 5),
    ]
    assert stats.as_dict() == {
        "prompts": 2, "candidates": 4, "pairs": 1, "paired_prompts": 1, "skipped": {"all_candidates_tied": 1}
    }


def test_a_candidate_cut_off_by_the_length_limit_stays_marked_in_pairs_and_audit():
    from moalign.generation import Completion

    judge = ProgrammaticJudge(["correctness"])
    task = TaskPrompt(id="a", split="train", category="arithmetic", prompt="What is 2 + 3?", checks={"answer": 5})
    sampled = [Completion("The answer is 5", truncated=False), Completion("Let me think: 2 plus 3 is", truncated=True)]
    rows, audit, _ = annotate([task], lambda prompts: [sampled], judge, "test")
    assert (rows[0].chosen.truncated, rows[0].rejected.truncated) == (False, True)
    assert [a.truncated for a in audit] == [False, True]
    assert '"truncated":true' in rows[0].model_dump_json()  # survives the JSONL round trip


def test_all_separated_pairs_every_two_candidates_the_judge_separates():
    texts = ["a", "b", "c", "d", " b "]
    rows, reason = pairs_from_candidates(
        TASK, texts, [scores(3), scores(5), scores(1), scores(3), scores(5)], "src", "all_separated"
    )
    assert reason is None
    # "b" twice is one text; a and d tie; largest gap first (then by position), each distinct pair once
    assert [(r.chosen.text, r.rejected.text) for r in rows] == [("b", "c"), ("a", "c"), ("b", "a"), ("b", "d"), ("d", "c")]
    assert len({r.id for r in rows}) == len(rows) and all(r.chosen.scores["correctness"] > r.rejected.scores["correctness"] for r in rows)
    capped, _ = pairs_from_candidates(TASK, texts, [scores(3), scores(5), scores(1), scores(3), scores(5)], "src",
                                      "all_separated", max_pairs=2)
    assert [(r.chosen.text, r.rejected.text) for r in capped] == [("b", "c"), ("a", "c")]
    assert pairs_from_candidates(TASK, ["a", "b"], [scores(2), scores(2)], "s", "all_separated") == ([], "all_candidates_tied")
    assert pairs_from_candidates(TASK, ["a", "a"], [scores(2), scores(4)], "s", "all_separated") == ([], "duplicate_text")
    with pytest.raises(ValueError, match="unknown pairing"):
        pairs_from_candidates(TASK, ["a", "b"], [scores(2), scores(4)], "s", "every")


@pytest.mark.parametrize(
    "first, second, expected",
    [("A", "B", "win"), ("B", "A", "loss"), ("A", "A", "tie"), ("tie", "B", "tie"), ("tie", "tie", "tie")],
)
def test_swap_outcome(first, second, expected):
    assert swap_outcome(first, second) == expected


def test_position_biased_judge_yields_ties():
    always_first = lambda a, b: "A"  # noqa: E731 - a judge that only ever likes position A
    assert compare_with_swap(always_first, "mine", "theirs") == "tie"
    longer = lambda a, b: "A" if len(a) > len(b) else "B"  # noqa: E731
    assert compare_with_swap(longer, "a long answer", "short") == "win"


def test_win_rate_counts_ties_half_and_refuses_empty():
    result = win_rate(["win", "win", "tie", "loss"])
    assert result == {"win_rate": 0.625, "wins": 2, "ties": 1, "losses": 1, "n": 4}
    with pytest.raises(ValueError):
        win_rate([])


def test_evaluation_reports_a_confidence_interval_and_a_length_controlled_win_rate():
    from moalign.data.schema import TaskPrompt
    from moalign.evaluation.embedded import evaluate_against_reference

    class LengthJudge:
        """Prefers longer answers, the bias the length-controlled win rate corrects for."""

        dimensions = ("verbosity",)

        def score(self, task, response):
            return {"verbosity": min(5, 1 + len(response) // 10)}

    tasks = [TaskPrompt(id=f"t{i}", split="eval", category="x", prompt=f"q{i}") for i in range(40)]
    # the policy's answers are longer on most prompts, by varying amounts; it wins exactly there
    policy = ["word " * (2 + i % 7) for i in range(40)]
    reference = ["word " * (2 + (i * 3) % 5) for i in range(40)]
    rows, metrics = evaluate_against_reference(tasks, policy, reference, LengthJudge())
    report = metrics["win_rate_vs_reference"]
    assert report["ci95_low"] <= report["win_rate"] <= report["ci95_high"]
    assert report["ci95_high"] - report["ci95_low"] > 0.05  # 40 prompts: a real interval, not a point
    assert report["length_term_identifiable"]
    # every win is explained by length, so controlling for it moves the rate towards a coin flip
    assert abs(report["length_controlled_win_rate"] - 0.5) < abs(report["win_rate"] - 0.5)
    assert len(rows) == 40
