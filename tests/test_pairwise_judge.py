"""Pairwise judging with position swap and MT-bench rating (moalign.judges.pairwise), against the
loopback fake OpenAI server; and the call cache's backward compatibility."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from moalign.config import JudgeParams
from moalign.data.schema import TaskPrompt
from moalign.evaluation import arenahard, mtbench
from moalign.evaluation.winrate import win_rate
from moalign.judges import open_judge, open_judges
from moalign.judges.cache import CachedCall, JudgeCache, call_key
from moalign.judges.llm import (
    BudgetExhausted,
    EndpointConfig,
    JudgeConfigError,
    LLMJudge,
    load_templates,
)
from moalign.judges.pairwise import (
    WINRATE_SCHEMA,
    LLMPairwiseJudge,
    LLMRater,
    load_winrate_template,
    pairwise_template,
    parse_winrate_preference,
    render_winrate,
)
from tests.fake_openai_server import FakeOpenAIServer, first_user_text

ROOT = Path(__file__).resolve().parents[1]
MT = ROOT / "data" / "benchmarks" / "mt_bench"


def endpoint_for(server: FakeOpenAIServer, **settings) -> EndpointConfig:
    settings = {"max_retries": 0, "timeout_s": 10.0, "concurrency": 4} | settings
    return EndpointConfig(base_url=server.url, model="fake-judge", **settings)


def pairwise_for(server, cache: Path, template="amopo_winrate", **settings) -> LLMPairwiseJudge:
    return LLMPairwiseJudge(endpoint_for(server, **settings), cache, template)


def task(i: int) -> TaskPrompt:
    return TaskPrompt(id=f"p{i}", split="eval", category="test", prompt=f"Explain topic {i}.")


def swap_items(n: int) -> list[tuple[TaskPrompt, str, str]]:
    """(instruction, candidate, baseline): the candidate is the longer answer."""
    return [
        (task(i), f"Topic {i} is explained here at length, with an example and a caveat.",
         f"Topic {i}: short.")
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------------------
# scripted judges: they read the answers out of the rendered AMoPO prompt


def winrate_outputs(messages) -> tuple[str, str]:
    """The real task's Output (a) and Output (b) (the examples before it have their own)."""
    text = first_user_text(messages)
    task_part = text[text.rindex("# Task:"):]
    a = task_part.split("## Output (a):\n", 1)[1].split("\n\n## Output (b):\n", 1)[0]
    b = task_part.split("## Output (b):\n", 1)[1].split("\n\n## Which is best", 1)[0]
    return a, b


def prefers_longer(messages) -> str:
    a, b = winrate_outputs(messages)
    choice = "Output (a)" if len(a) > len(b) else "Output (b)"
    return f'```json\n{{"preference": "{choice}", "reason": "more complete"}}\n```'


def always_first(messages) -> str:
    return '{"preference": "Output (a)", "reason": "it came first"}'


def prose_then_json(messages) -> str:
    if len(messages) == 1:
        return "Output (a) is clearly better."  # names an output, but not as the JSON asked for
    return prefers_longer(messages)


def never_parseable(messages) -> str:
    return "Both outputs have merits; I cannot choose."


def fails_when_short_answer_first(messages) -> str:
    a, b = winrate_outputs(messages)
    return never_parseable(messages) if len(a) < len(b) else prefers_longer(messages)


# ------------------------------------------------------------------------------------------------
# the template and its parser


def test_shipped_winrate_template_renders_as_the_judge_saw_it():
    text = load_winrate_template()
    assert text.startswith("Select the output (a) or (b) that best matches the given instruction.")
    assert text.endswith("## Which is best, Output (a) or Output (b)?Answer:")
    assert "{{" not in text and "}}" not in text  # the paper's str.format escapes, undone
    assert '{\n  "preference": "Output (a)",' in text
    rendered = render_winrate(text, "Say {hi}.", "Hi {output_2} {{x}}", "Hello {instruction}")
    task_part = rendered[rendered.index("# Task:"):]
    assert "## Instruction:\nSay {hi}.\n\n## Output (a):\nHi {output_2} {{x}}\n\n" in task_part
    assert "## Output (b):\nHello {instruction}\n\n## Which is best" in task_part
    # the file itself is the paper's text, escapes included
    raw = (ROOT / "moalign" / "judges" / "templates" / "pairwise_winrate.txt").read_text()
    assert raw.count("{{") == 2 and raw.count("}}") == 2


def test_winrate_template_checks_its_placeholders(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Which is best?\n{instruction}\n{output_1}\n")
    with pytest.raises(JudgeConfigError, match=r"\{output_2\}"):
        load_winrate_template(path)
    with pytest.raises(JudgeConfigError, match="unknown pairwise template"):
        pairwise_template("alpaca_eval")
    assert pairwise_template().version != pairwise_template("arena_hard_v0.1").version
    edited = tmp_path / "edited.txt"
    edited.write_text(load_winrate_template() + " ")
    assert pairwise_template(path=edited).version != pairwise_template().version


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"preference": "Output (a)", "reason": "x"}', "A"),
        ('{"preference": "Output (b)", "reason": "x"}', "B"),
        ('```json\n{\n  "preference": "Output (b)",\n  "reason": "y"\n}\n```', "B"),
        ('Here is my answer:\n{"Preference": " output  (a) ", "reason": "z"}', "A"),
        ('{"reason": "preference second", "preference": "Output (a)"}', "A"),
        ('{"preference": "Output (c)", "reason": "x"}', None),
        ('{"preference": "(a)", "reason": "x"}', None),
        ('{"preference": "Output (a) and Output (b)", "reason": "x"}', None),
        ('{"preference": "tie", "reason": "x"}', None),
        ('{"preference": ["Output (a)"], "reason": "x"}', None),
        ('{"reason": "no preference"}', None),
        ("Output (a)", None),
        ('{"preference": "Output (a)"', None),
        ("", None),
    ],
)
def test_parse_winrate_preference(reply, expected):
    assert parse_winrate_preference(reply) == expected


# ------------------------------------------------------------------------------------------------
# position swap against the fake server


def test_content_judge_wins_for_the_longer_answer_in_both_orders(serve, tmp_path):
    server = serve(reply=prefers_longer)
    with pairwise_for(server, tmp_path / "c.sqlite") as judge:
        outcomes = judge.compare_with_swap_many(swap_items(3))
        assert outcomes == ["win"] * 3
        assert server.total == 6  # every comparison asked in both orders
        # the other way round: the baseline is the longer answer
        reversed_items = [(q, baseline, candidate) for q, candidate, baseline in swap_items(3)]
        assert judge.compare_with_swap_many(reversed_items) == ["loss"] * 3
        assert server.total == 6  # the same six (instruction, A, B) calls, from the cache
        q, long, short = swap_items(1)[0]
        assert judge.compare(q, long, short) == "A" and judge.compare(q, short, long) == "B"
        assert judge.compare_many([(q.prompt, long, short)]) == ["A"]  # a str instruction too
        assert judge.failed_comparisons == 0 and judge.failures == 0
    assert win_rate(outcomes)["win_rate"] == 1.0


def test_position_biased_judge_gives_only_ties(serve, tmp_path):
    server = serve(reply=always_first)
    with pairwise_for(server, tmp_path / "c.sqlite") as judge:
        assert judge.compare_many([(q, c, b) for q, c, b in swap_items(2)]) == ["A", "A"]
        assert judge.compare_with_swap_many(swap_items(4)) == ["tie"] * 4
        assert judge.failed_comparisons == 0


def test_unparseable_first_reply_is_reasked(serve, tmp_path):
    seen = []
    lock = threading.Lock()

    def reply(messages):
        with lock:
            seen.append(messages)
        return prose_then_json(messages)

    server = serve(reply=reply)
    cache = tmp_path / "c.sqlite"
    with pairwise_for(server, cache) as judge:
        assert judge.compare_with_swap_many(swap_items(1)) == ["win"]
        assert server.total == 4 and judge.budget.calls == 4  # two orders, each asked twice
        assert judge.failures == 0
        reasks = [m for m in seen if len(m) == 3]
        assert len(reasks) == 2
        assert reasks[0][1] == {"role": "assistant", "content": "Output (a) is clearly better."}
        assert '"preference"' in reasks[0][2]["content"]
        q, candidate, baseline = swap_items(1)[0]
        key = call_key(judge.template.version, "fake-judge", q.prompt, candidate, baseline)
        call = judge.cache.get_many([key])[key]
        assert call.value == "A" and call.score is None and call.attempts == 2
        assert call.tokens == 220 and call.error is None


def test_failure_after_attempts_is_none_and_counted_never_a_tie(serve, tmp_path):
    server = serve(reply=fails_when_short_answer_first)
    cache = tmp_path / "c.sqlite"
    with pairwise_for(server, cache, max_parse_attempts=3) as judge:
        # the long-first order parses (A), the short-first order never does
        assert judge.compare_with_swap_many(swap_items(2)) == [None, None]
        assert judge.failed_comparisons == 2
        assert judge.failures == 2  # the two failed calls, each after 3 attempts
        assert server.total == 2 * 1 + 2 * 3
        assert judge.swap_labels_many(swap_items(1)) == [("A", None)]
        assert judge.failed_comparisons == 3
    with sqlite3.connect(cache) as db:
        query = "SELECT value, error, attempts FROM judge_calls ORDER BY attempts"
        rows = db.execute(query).fetchall()
    assert rows == [('"A"', None, 1)] * 2 + [(None, "unparseable reply", 3)] * 2
    # a recorded failure is not asked again on the next run, and still counts
    with pairwise_for(server, cache) as again:
        assert again.compare_with_swap_many(swap_items(2)) == [None, None]
        assert again.failed_comparisons == 2 and again.failures == 0 and again.cache_hits == 4
    assert server.total == 8


def test_rerun_from_the_cache_makes_no_request(serve, tmp_path):
    server = serve(reply=prefers_longer, latency=0.02)
    cache = tmp_path / "c.sqlite"
    with pairwise_for(server, cache, concurrency=3) as judge:
        first = judge.compare_with_swap_many(swap_items(6))
    assert server.total == 12 and server.max_in_flight == 3  # both orders of all items at once
    server.reset()
    with pairwise_for(server, cache, concurrency=3) as judge:
        assert judge.compare_with_swap_many(swap_items(6)) == first == ["win"] * 6
        assert judge.cache_hits == 12 and judge.budget.calls == 0
    assert server.total == 0


def test_budget_stop_then_resume(serve, tmp_path):
    server = serve(reply=prefers_longer)
    cache = tmp_path / "c.sqlite"
    with pairwise_for(server, cache, max_calls=3, concurrency=1) as judge:
        with pytest.raises(BudgetExhausted, match="max_calls=3"):
            judge.compare_with_swap_many(swap_items(4))
    assert server.total == 3
    with pairwise_for(server, cache) as judge:
        assert judge.compare_with_swap_many(swap_items(4)) == ["win"] * 4
        assert judge.cache_hits == 3
    assert server.total == 8 and set(server.per_prompt.values()) == {1}


# ------------------------------------------------------------------------------------------------
# Arena-Hard v0.1's judge prompt


def arena_hard_judge(messages) -> str:
    """Prefers the longer answer strongly; reads them from Arena-Hard's template."""
    assert messages[0] == {"role": "system", "content": arenahard.SYSTEM_PROMPT}
    text = first_user_text(messages)
    a = text.split("<|The Start of Assistant A's Answer|>\n", 1)[1].split("\n<|The End", 1)[0]
    b = text.split("<|The Start of Assistant B's Answer|>\n", 1)[1].split("\n<|The End", 1)[0]
    if len(messages) == 2 and "first" in text:
        return "Assistant A is better. My final verdict: A>>B"  # no label: re-asked
    label = "A>>B" if len(a) > len(b) else "B>>A" if len(b) > len(a) else "A=B"
    return f"My own answer first... My final verdict is: [[{label}]]"


def test_arena_hard_template(serve, tmp_path):
    server = serve(reply=arena_hard_judge)
    items = swap_items(2) + [(task(9), "same length", "SAME LENGTH")]
    items.append(("Say something first.", "A long and careful answer.", "Short."))
    with pairwise_for(server, tmp_path / "c.sqlite", template="arena_hard_v0.1") as judge:
        assert judge.max_tokens == 4096  # Arena-Hard's own reply budget (the endpoint's: 256)
        assert judge._format is None  # free text: no structured output whatever the endpoint
        assert judge.compare_with_swap_many(items) == ["win", "win", "tie", "win"]
        assert server.total == 10  # 8 calls, two of them re-asked once
        games = judge.swap_labels_many(items)
        assert games[0] == ("A>>B", "B>>A") and games[2] == ("A=B", "A=B")
        assert server.total == 10
        assert arenahard.arena_hard_score(games)["score"] == pytest.approx(19 / 20)
        q, long, short = items[0]
        assert judge.compare_labels_many([(q, long, short)]) == ["A>>B"]
        assert judge.compare(q, short, long) == "B"


# ------------------------------------------------------------------------------------------------
# MT-bench single-answer grading


def mtbench_judge(messages) -> str:
    first_ask = not any(message["role"] == "assistant" for message in messages)
    if first_ask and "travel blog" in first_user_text(messages):
        return "A good answer. Rating: 7/10"  # not the [[rating]] format: re-asked
    return "The answer is helpful and accurate. Rating: [[7]]"


def test_mtbench_rating(serve, tmp_path):
    server = serve(reply=mtbench_judge)
    questions = {q.question_id: q for q in mtbench.load_questions(MT / "question.jsonl")}
    prompts = mtbench.load_judge_prompts(MT / "judge_prompts.jsonl")
    references = mtbench.load_reference_answers(MT / "reference_answer_gpt-4.jsonl")
    math = next(q for q in questions.values() if q.category == "math")
    items = [
        (questions[81], ["A blog post.", "A rewrite."], 1, None),  # writing, "travel blog"
        (questions[81], ["A blog post.", "A rewrite."], 2, None),
        (math, ["42", "43"], 1, references[math.question_id]),
    ]
    cache = tmp_path / "c.sqlite"
    with LLMRater(endpoint_for(server), cache) as rater:
        assert rater.max_tokens == 2048
        assert rater.grade_mtbench_many(items, prompts=prompts) == [7.0, 7.0, 7.0]
        assert server.total == 5  # three ratings, the two turns of the travel blog re-asked once
        assert rater.failed_ratings == 0 and rater.failures == 0
        messages = mtbench.single_grading_messages(*items[2], prompts=prompts)
        assert rater.rate(messages) == 7.0 and server.total == 5  # the same messages: cached
    with LLMRater(endpoint_for(server), cache) as rater:
        assert rater.grade_mtbench_many(items, prompts=prompts) == [7.0, 7.0, 7.0]
        assert rater.cache_hits == 3
    assert server.total == 5


def test_mtbench_rating_failure_is_none(serve, tmp_path):
    server = serve(reply=lambda messages: "Rating: [[5]] at first, but then [[8]].")
    with LLMRater(endpoint_for(server, max_parse_attempts=2), tmp_path / "c.sqlite") as rater:
        messages = [{"role": "system", "content": "Grade."}, {"role": "user", "content": "Q/A"}]
        assert rater.rate_many([messages]) == [None]
        assert rater.failed_ratings == 1 and rater.failures == 1 and server.total == 2


# ------------------------------------------------------------------------------------------------
# open_judges, structured output, and the cache's backward compatibility


def test_open_judges_opens_pairwise_judge_and_rater_on_one_endpoint(serve, tmp_path):
    server = serve(reply=prefers_longer)
    params = JudgeParams(
        backend="openai_compatible", base_url=server.url, model="fake-judge",
        cache_path=str(tmp_path / "judge.sqlite"), concurrency=2, max_retries=0,
        structured_output=True,
    )
    with open_judges(params, ["helpfulness"]) as judges:
        judge = judges.pairwise()
        assert isinstance(judge, LLMPairwiseJudge) and judge.template.name == "amopo_winrate"
        assert judges.pairwise() is judge, "one judge per template, opened once"
        assert judge.endpoint.concurrency == 2 and judge.max_tokens == 256
        assert judge._format == {"type": "json_schema", "json_schema": {
            "name": "pairwise_amopo_winrate", "schema": WINRATE_SCHEMA}}
        assert judge.compare_with_swap_many(swap_items(1)) == ["win"]
        assert judges.pairwise("arena_hard_v0.1").template.name == "arena_hard_v0.1"
        assert isinstance(judges.rater(), LLMRater)
        # the per-dimension judge shares the cache file
        assert isinstance(judges.scorer, LLMJudge) and judges.scorer.cache.path == judge.cache.path
    with pytest.raises(sqlite3.ProgrammingError):
        len(judge.cache)  # closed with the set
    with open_judge(params, ["helpfulness"]) as scorer:
        assert isinstance(scorer, LLMJudge)
    with open_judges(JudgeParams(cache_path=str(tmp_path / "x.sqlite")), ["helpfulness"]) as judges:
        with pytest.raises(ValueError, match="needs an LLM judge"):
            judges.pairwise()
    assert not (tmp_path / "x.sqlite").exists()


OLD_SCHEMA = """
CREATE TABLE judge_calls (
    key TEXT PRIMARY KEY, dimension TEXT NOT NULL, model TEXT NOT NULL,
    template_version TEXT NOT NULL, score INTEGER, reply TEXT, error TEXT,
    attempts INTEGER NOT NULL, tokens INTEGER NOT NULL, created REAL NOT NULL
)
"""


def test_a_cache_made_before_the_value_column_keeps_working(serve, tmp_path):
    server = serve(reply=prefers_longer)
    path = tmp_path / "old.sqlite"
    version = load_templates(["helpfulness"])["helpfulness"].version
    t = TaskPrompt(id="p", split="train", category="test", prompt="Old question?")
    with sqlite3.connect(path) as db:  # a cache as the first moalign wrote it
        db.execute(OLD_SCHEMA)
        db.execute(
            "INSERT INTO judge_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (call_key(version, "fake-judge", t.prompt, "Old answer."), "helpfulness",
             "fake-judge", version, 4, '{"score": 3}', None, 1, 110, 0.0),
        )
    db.close()
    with LLMJudge(["helpfulness"], endpoint_for(server), path) as judge:
        assert judge.score(t, "Old answer.") == {"helpfulness": 4}
        assert judge.cache_hits == 1
    assert server.total == 0
    with pairwise_for(server, path) as judge:  # verdicts go in the added column
        assert judge.compare_with_swap_many(swap_items(1)) == ["win"]
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(judge_calls)")]
        assert columns[-1] == "value" and len(columns) == 11
        assert db.execute("SELECT COUNT(*) FROM judge_calls WHERE value IS NULL").fetchone() == (1,)
    db.close()
    cache = JudgeCache(path)  # opening a migrated cache again changes nothing
    assert len(cache) == 3
    cache.put("k", dimension="rating:x", model="m", template_version="v",
              call=CachedCall(None, "[[7.5]]", None, 1, 5, value=7.5))
    found = cache.get_many(["k"])["k"]
    assert found.value == 7.5 and found.result == 7.5 and found.score is None
    old_style = CachedCall(3, "r", None, 1, 7)  # positional, as benchmarks/judge.py makes them
    assert old_style.result == 3 and old_style.value is None
    cache.close()
