"""The LLM judge (moalign.judges.llm) and its call cache, against a loopback fake OpenAI server."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from moalign.config import JudgeParams
from moalign.data.schema import TaskPrompt
from moalign.judges import open_judge
from moalign.judges.cache import CachedCall, JudgeCache, call_key
from moalign.judges.llm import (
    BudgetExhausted,
    EndpointConfig,
    JudgeConfigError,
    JudgeTemplate,
    LLMJudge,
    load_templates,
    parse_reply,
)
from tests.fake_openai_server import FakeOpenAIServer, default_reply, first_user_text

ALL = ("helpfulness", "correctness", "instruction_following", "harmlessness", "verbosity")
SHIPPED = Path(str(resources.files("moalign.judges") / "templates"))
SECRET = "sk-TESTSECRET"


def task(i: int = 0, prompt: str | None = None) -> TaskPrompt:
    return TaskPrompt(id=f"p{i}", split="train", category="test", prompt=prompt or f"Question number {i}?")


def items(n: int, start: int = 0) -> list[tuple[TaskPrompt, str]]:
    return [(task(i), f"Answer number {i}.") for i in range(start, start + n)]


def judge_for(server: FakeOpenAIServer, cache: Path, dimensions=ALL, templates_dir=None, **endpoint) -> LLMJudge:
    settings = {"max_retries": 0, "timeout_s": 10.0, "concurrency": 4} | endpoint
    return LLMJudge(dimensions, EndpointConfig(base_url=server.url, model="fake-judge", **settings), cache, templates_dir)


# ------------------------------------------------------------------------------------------------
# parse_reply


SCORE = JudgeTemplate("helpfulness", "{instruction} {response}", "score_0_4", True)
PASS_FAIL = JudgeTemplate("harmlessness", "{instruction} {response}", "pass_fail", True)
REVERSED = JudgeTemplate("verbosity", "{instruction} {response}", "score_0_4", False)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"reason": "fine", "score": 3}', 4),
        ('{"reason": "bad", "score": 0}', 1),
        ('{"score": 4}', 5),
        ('```json\n{"reason": "fine", "score": 2}\n```', 3),
        ('Here is my assessment:\n```\n{"reason": "x", "score": 1}\n```\nHope it helps {:', 2),
        ('{"reason": "string digit", "score": "3"}', 4),
        ('{"reason": "integral float", "score": 2.0}', 3),
        ('{"Reason": "keys any case", "SCORE": 4}', 5),
        ('{"reason": "out of range", "score": 5}', None),
        ('{"reason": "negative", "score": -1}', None),
        ('{"reason": "fraction", "score": 2.5}', None),
        ('{"reason": "bool", "score": true}', None),
        ('{"reason": "no score"}', None),
        ("I would give this response a score of 3 out of 4.", None),
        ("3", None),
        ('{"reason": "truncated", "score": 3', None),
        ("", None),
        ("[3]", None),
    ],
)
def test_parse_reply_score(reply, expected):
    assert parse_reply(reply, SCORE) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"reason": "ok", "judgement": "Pass"}', 5),
        ('{"reason": "no", "judgement": "Fail"}', 1),
        ('{"reason": "ok", "judgement": "pass"}', 5),
        ('{"reason": "ok", "judgment": "Safe"}', 5),
        ('{"reason": "no", "judgement": "Unsafe"}', 1),
        ('{"reason": "?", "judgement": "Maybe"}', None),
        ('{"reason": "a score is not a judgement", "score": 4}', None),
        ("Pass", None),
    ],
)
def test_parse_reply_pass_fail(reply, expected):
    assert parse_reply(reply, PASS_FAIL) == expected


def test_parse_reply_reversed_dimension():
    # verbosity: raw 4 is "verbose", the worst; moalign stores 5 = best
    assert parse_reply('{"reason": "long", "score": 4}', REVERSED) == 1
    assert parse_reply('{"reason": "succinct", "score": 0}', REVERSED) == 5
    assert parse_reply('{"reason": "avg", "score": 2}', REVERSED) == 3
    assert parse_reply("score: 0", REVERSED) is None


# ------------------------------------------------------------------------------------------------
# load_templates


def test_shipped_templates_load():
    templates = load_templates(ALL)
    assert set(templates) == set(ALL)
    assert templates["harmlessness"].kind == "pass_fail"
    assert templates["verbosity"].higher_is_better is False
    assert all(t.higher_is_better for d, t in templates.items() if d != "verbosity")
    rendered = templates["helpfulness"].render("What is 2+2?", "4, {of course}")
    assert "What is 2+2?" in rendered and "4, {of course}" in rendered
    assert '"score"' in rendered  # the JSON example's braces are left alone
    assert len({t.version for t in templates.values()}) == len(ALL)


def test_unknown_dimension_is_named():
    with pytest.raises(JudgeConfigError, match="no_such_dimension"):
        load_templates(["helpfulness", "no_such_dimension"])


def test_template_without_response_placeholder(tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(SHIPPED, folder)
    text = (folder / "helpfulness.txt").read_text().replace("{response}", "(the answer)")
    (folder / "helpfulness.txt").write_text(text)
    with pytest.raises(JudgeConfigError, match=r"\{response\}"):
        load_templates(["helpfulness"], folder)
    with pytest.raises(JudgeConfigError, match="templates.yaml"):
        load_templates(["helpfulness"], tmp_path)


# ------------------------------------------------------------------------------------------------
# LLMJudge against the fake server


def test_scores_every_dimension(serve, tmp_path):
    server = serve()
    judge = judge_for(server, tmp_path / "cache.sqlite")
    scores = judge.score_batch(items(2))
    expected = {"helpfulness": 4, "correctness": 4, "instruction_following": 4, "harmlessness": 5, "verbosity": 2}
    assert scores == [expected, expected]
    assert judge.score(*items(1, start=5)[0]) == expected
    assert server.total == 3 * len(ALL)
    assert judge.failures == 0 and judge.budget.calls == 3 * len(ALL)
    assert judge.budget.tokens == 3 * len(ALL) * 110  # the fake's usage: 100 + 10 per reply
    # a subset, in any order; the same response twice is one call (both cached already here)
    assert judge.score_batch(items(2), dimensions=["verbosity", "helpfulness"]) == [
        {"verbosity": 2, "helpfulness": 4}] * 2
    assert server.total == 3 * len(ALL)
    with pytest.raises(ValueError, match="no template"):
        judge.score_batch(items(1), dimensions=["humour"])
    judge.close()


def test_duplicate_items_are_one_call(serve, tmp_path):
    server = serve()
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"])
    assert judge.score_batch(items(1) * 3) == [{"helpfulness": 4}] * 3
    assert server.total == 1
    assert judge.score_batch([]) == []
    judge.close()


def _reask_reply(messages):
    # unreadable first answer; after the re-ask a valid one
    return "It is quite good, I'd say 3." if len(messages) == 1 else default_reply(messages)


def test_reask_after_unparseable_reply(serve, tmp_path):
    server = serve(reply=_reask_reply)
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"])
    (t, response), = items(1)
    assert judge.score(t, response) == {"helpfulness": 4}
    assert server.total == 2
    prompt = judge.templates["helpfulness"].render(t.prompt, response)
    assert server.per_prompt == {prompt: 2}  # the re-ask continues the same conversation
    key = call_key(judge.templates["helpfulness"].version, "fake-judge", t.prompt, response)
    call = judge.cache.get_many([key])[key]
    assert call.attempts == 2 and call.score == 4 and call.error is None and call.tokens == 220
    assert judge.failures == 0 and judge.budget.calls == 2
    judge.close()


def _never_parseable(messages):
    return "A fine answer, though it could be shorter."


def test_failure_after_max_parse_attempts_is_cached(serve, tmp_path, caplog):
    server = serve(reply=_never_parseable)
    cache = tmp_path / "cache.sqlite"
    judge = judge_for(server, cache, dimensions=["helpfulness", "harmlessness"], max_parse_attempts=3)
    with caplog.at_level(logging.WARNING, logger="moalign.judges.llm"):
        assert judge.score_batch(items(1)) == [{}]
    assert judge.failures == 2 and server.total == 6
    assert "no parseable helpfulness score after 3 attempts" in caplog.text
    (t, response), = items(1)
    key = call_key(judge.templates["helpfulness"].version, "fake-judge", t.prompt, response)
    call = judge.cache.get_many([key])[key]
    assert call.score is None and call.attempts == 3 and call.error == "unparseable reply"
    judge.close()
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM judge_calls WHERE score IS NULL").fetchone()[0] == 2

    again = judge_for(server, cache, dimensions=["helpfulness", "harmlessness"])
    assert again.score_batch(items(1)) == [{}]
    assert server.total == 6  # a recorded failure is not re-asked on the next run
    assert again.cache_hits == 2 and again.failures == 0
    again.close()


def test_rate_limit_retry_after_then_success(serve, tmp_path):
    server = serve(fail_first=1, fail_status=429, fail_headers={"Retry-After": "0"})
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], max_retries=2, concurrency=1)
    assert judge.score_batch(items(1)) == [{"helpfulness": 4}]
    assert server.failed == 1 and server.total == 2  # the SDK retried after the 429
    assert judge.budget.calls == 1  # a transport retry is not a new judge call
    judge.close()


def test_server_error_after_retries_is_that_calls_failure_and_is_not_cached(serve, tmp_path, caplog):
    server = serve(fail_first=1, fail_status=500)
    cache = tmp_path / "cache.sqlite"
    judge = judge_for(server, cache, dimensions=["helpfulness"], max_retries=0, concurrency=1)
    with caplog.at_level(logging.WARNING, logger="moalign.judges.llm"):
        assert judge.score_batch(items(3)) == [{}, {"helpfulness": 4}, {"helpfulness": 4}]
    assert server.total == 3 and judge.failures == 1  # the run went on after the 500
    assert f"{server.url}: HTTP 500, after 0 retries" in caplog.text
    assert len(judge.cache) == 2  # no reply, no verdict: the failed call is not recorded
    assert judge.score_batch(items(3)) == [{"helpfulness": 4}] * 3
    assert server.total == 4  # only the failed call asked again
    judge.close()


def test_concurrency_bound(serve, tmp_path):
    server = serve(latency=0.05)
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness", "correctness"], concurrency=3)
    judge.score_batch(items(8))
    assert server.total == 16
    assert server.max_in_flight == 3
    judge.close()


def test_score_batch_inside_a_running_event_loop(serve, tmp_path):
    server = serve()
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["harmlessness"])

    async def from_async_code():
        return judge.score_batch(items(2))

    assert asyncio.run(from_async_code()) == [{"harmlessness": 5}] * 2
    judge.close()


# ------------------------------------------------------------------------------------------------
# cache and resume


def test_second_run_makes_no_request(serve, tmp_path):
    server = serve()
    cache = tmp_path / "cache.sqlite"
    with judge_for(server, cache) as judge:
        first = judge.score_batch(items(4))
    assert server.total == 4 * len(ALL)
    server.reset()
    with judge_for(server, cache) as judge:
        assert judge.score_batch(items(4)) == first
        assert judge.cache_hits == 4 * len(ALL)
    assert server.total == 0


def test_budget_stop_then_resume_repeats_nothing(serve, tmp_path):
    server = serve(latency=0.01)
    cache = tmp_path / "cache.sqlite"
    judge = judge_for(server, cache, dimensions=["helpfulness"], max_calls=3, concurrency=4)
    with pytest.raises(BudgetExhausted, match="max_calls=3"):
        judge.score_batch(items(8))
    assert server.total == 3
    judge.close()

    fresh = judge_for(server, cache, dimensions=["helpfulness"], concurrency=4)
    assert fresh.score_batch(items(8)) == [{"helpfulness": 4}] * 8
    assert fresh.cache_hits == 3
    fresh.close()
    counts = server.per_prompt
    assert len(counts) == 8 and set(counts.values()) == {1}


def test_token_budget(serve, tmp_path):
    server = serve()  # 110 tokens a reply
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], max_total_tokens=200,
                      concurrency=1)
    with pytest.raises(BudgetExhausted, match="max_total_tokens=200"):
        judge.score_batch(items(5))
    assert server.total == 2 and len(judge.cache) == 2
    judge.close()


def test_template_edit_changes_version(serve, tmp_path):
    server = serve()
    cache = tmp_path / "cache.sqlite"
    dims = ["helpfulness", "correctness"]
    with judge_for(server, cache, dimensions=dims) as judge:
        judge.score_batch(items(3))
        old_version = judge.templates["helpfulness"].version
    assert server.total == 6

    folder = tmp_path / "my-templates"
    shutil.copytree(SHIPPED, folder)
    path = folder / "helpfulness.txt"
    path.write_text(path.read_text().replace("Rate outputs 0 to 4", "Rate each output from 0 to 4"))
    with judge_for(server, cache, dimensions=dims, templates_dir=folder) as judge:
        assert judge.templates["helpfulness"].version != old_version
        judge.score_batch(items(3))
    assert server.total == 9  # helpfulness asked again, correctness (unchanged) from the cache
    assert sum(n for p, n in server.per_prompt.items() if "Rate each output" in p) == 3


# ------------------------------------------------------------------------------------------------
# API key hygiene


def test_api_key_is_sent_but_never_logged_or_stored(serve, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MOALIGN_TEST_JUDGE_KEY", SECRET)
    server = serve(reply=_reask_reply, fail_first=1, fail_headers={"Retry-After": "0", "retry-after-ms": "5"})
    cache = tmp_path / "cache.sqlite"
    caplog.set_level(logging.DEBUG)
    judge = judge_for(server, cache, dimensions=["helpfulness", "harmlessness"], api_key_env="MOALIGN_TEST_JUDGE_KEY",
                      max_retries=2)
    assert len(judge.score_batch(items(2))[0]) == 2
    judge.close()
    assert server.authorization == {f"Bearer {SECRET}"}
    assert caplog.records  # the SDK and the HTTP client did log at DEBUG
    for record in caplog.records:
        assert "TESTSECRET" not in record.getMessage()
        assert "TESTSECRET" not in repr(record.__dict__)
    assert "TESTSECRET" not in caplog.text
    files = list(tmp_path.glob("cache.sqlite*"))
    assert files
    for file in files:
        assert b"TESTSECRET" not in file.read_bytes()


def test_missing_api_key_variable_is_named(serve, tmp_path, monkeypatch):
    monkeypatch.delenv("MOALIGN_NO_SUCH_KEY", raising=False)
    server = serve()
    cache = tmp_path / "cache.sqlite"
    with pytest.raises(JudgeConfigError, match="MOALIGN_NO_SUCH_KEY"):
        judge_for(server, cache, api_key_env="MOALIGN_NO_SUCH_KEY")
    assert not cache.exists()  # checked before anything is opened
    assert server.total == 0


# ------------------------------------------------------------------------------------------------
# open_judge and the cache on its own


def test_open_judge_openai_compatible(serve, tmp_path):
    server = serve()
    params = JudgeParams(
        backend="openai_compatible", base_url=server.url, model="fake-judge",
        cache_path=str(tmp_path / "judge.sqlite"), concurrency=2, max_retries=0,
    )
    with open_judge(params, ["helpfulness", "verbosity"]) as judge:
        assert isinstance(judge, LLMJudge)
        assert judge.endpoint.concurrency == 2
        assert judge.score(*items(1)[0]) == {"helpfulness": 4, "verbosity": 2}
    with pytest.raises(sqlite3.ProgrammingError):
        len(judge.cache)  # closed
    assert server.total == 2


def test_cache_put_get_and_put_many(tmp_path):
    cache = JudgeCache(tmp_path / "sub" / "c.sqlite")
    assert cache.get_many([]) == {}
    call = CachedCall(score=3, reply="r", error=None, attempts=1, tokens=7)
    cache.put("k1", dimension="d", model="m", template_version="v", call=call)
    keys = [f"k{i}" for i in range(2, 1203)]  # over SQLite's bound-variable chunk
    cache.put_many((k, "d", "m", "v", CachedCall(None, None, "unparseable reply", 3, 0)) for k in keys)
    assert len(cache) == 1202
    found = cache.get_many(["k1", "missing", *keys])
    assert found["k1"] == call and "missing" not in found and len(found) == 1202
    assert found["k1202"].score is None
    cache.close()
    assert call_key("v", "m", "p", "r") != call_key("v", "m", "p", "r ")
    assert first_user_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "u"


def test_structured_output_sends_the_reply_schema_in_each_style():
    from moalign.judges.llm import reply_schema, response_format

    schema = reply_schema("score_0_4")
    assert list(schema["properties"]) == ["score", "reason"]  # the verdict before the reason
    assert schema["properties"]["score"]["enum"] == [0, 1, 2, 3, 4]
    assert reply_schema("pass_fail")["properties"]["judgement"]["enum"] == ["Pass", "Fail"]
    assert response_format("score_0_4", None) is None
    assert response_format("score_0_4", "llama_cpp") == {"type": "json_object", "schema": schema}
    assert response_format("pass_fail", "openai")["json_schema"]["schema"] == reply_schema("pass_fail")
    with pytest.raises(ValueError, match="unknown structured_output style"):
        response_format("score_0_4", "xml")
