"""Judge faults never stop a run (issue 16): bad bodies, resets and 5xx are retried, and a call that
still fails is that item's failure, named, while the other items are scored and no answered call is
asked twice. Against the loopback fake server's seeded fault injection."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import openai
import openai._base_client
import pytest

from moalign.data.schema import TaskPrompt
from moalign.judges.llm import EndpointConfig, EndpointDown, LLMJudge, load_templates
from tests.fake_openai_server import FAULTS, FakeOpenAIServer, FakeServerConfig, default_reply

DIMS = ("helpfulness", "harmlessness")
RETRIES = 2  # max_retries: a call has 3 tries
SECRET = "sk-FAULTSECRET"

#: what the failure's message says for each kind of fault
NAMED = {
    "malformed_json": "malformed JSON body",
    "empty_choices": "no choices",
    "missing_content": "no message content",
    "wrong_content_type": "text/html body",
    "reset": "peer closed connection",
    "http_500": "HTTP 500",
    "http_429": "HTTP 429",
}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """The SDK's backoff (0.5 s doubling, at most 8 s) shortened: the tests count requests, not time."""
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(openai._base_client, "MAX_RETRY_DELAY", 0.002)


def items(n: int, tag: str = "q") -> list[tuple[TaskPrompt, str]]:
    return [
        (TaskPrompt(id=f"{tag}{i}", split="train", category="test", prompt=f"[{tag}] Question number {i}?"),
         f"Answer number {i}.")
        for i in range(n)
    ]


def judge_for(server: FakeOpenAIServer, cache: Path, dimensions=DIMS, **endpoint) -> LLMJudge:
    settings = {"max_retries": RETRIES, "timeout_s": 10.0, "concurrency": 4} | endpoint
    config = EndpointConfig(base_url=server.url, model="fake-judge", **settings)
    return LLMJudge(dimensions, config, cache)


def first_message(dimension: str, item: tuple[TaskPrompt, str]) -> str:
    """The first user message of the judge call on ``item``: the fake server draws faults by it."""
    task, response = item
    return load_templates([dimension])[dimension].render(task.prompt, response)


def fails_for_good(config: FakeServerConfig, text: str, tries: int = RETRIES + 1) -> bool:
    """Whether a call meets a fault on each of its ``tries`` requests (a fresh server's count)."""
    return all(config.fault_for(text, n) for n in range(1, tries + 1))


def test_malformed_json_body_is_retried_and_does_not_stop_the_run(serve, tmp_path):
    # before the fix the first malformed body raised JSONDecodeError out of score_batch
    server = serve(faults={"malformed_json": 0.3}, fault_seed=3)
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], concurrency=2)
    batch = items(16)
    scores = judge.score_batch(batch)
    lost = [fails_for_good(server.config, first_message("helpfulness", item)) for item in batch]
    assert scores == [{} if gone else {"helpfulness": 4} for gone in lost]
    assert server.faults["malformed_json"] > sum(lost)  # most malformed bodies were retried away
    assert judge.failures == sum(lost)
    judge.close()


@pytest.mark.parametrize("kind", list(FAULTS))
def test_each_fault_at_a_high_rate(kind, serve, tmp_path, caplog):
    server = serve(faults={kind: 0.6}, fault_seed=11)
    cache = tmp_path / "cache.sqlite"
    batch = items(12)
    judge = judge_for(server, cache)
    with caplog.at_level(logging.WARNING, logger="moalign.judges.llm"):
        scores = judge.score_batch(batch)
    expected_score = {"helpfulness": 4, "harmlessness": 5}
    lost = {
        (i, d) for i, item in enumerate(batch) for d in DIMS
        if fails_for_good(server.config, first_message(d, item))
    }
    assert lost and len(lost) < len(batch) * len(DIMS)  # the seed gives both outcomes
    # every item accounted for: scored, or that dimension left out as a recorded failure
    assert scores == [{d: expected_score[d] for d in DIMS if (i, d) not in lost} for i in range(len(batch))]
    assert judge.failures == len(lost)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == len(lost)
    assert all(server.url in line and NAMED[kind] in line for line in failures), failures[:2]
    # no answered call asked twice; an unanswered call is not cached, so a rerun may ask it again
    answered = server.answered
    assert set(answered.values()) == {1} and sum(answered.values()) == len(batch) * len(DIMS) - len(lost)
    assert len(judge.cache) == sum(answered.values())
    judge.close()

    server.reset()  # the draws start over: the lost calls meet the same faults again
    with judge_for(server, cache) as again:
        assert again.score_batch(batch) == scores
        assert again.cache_hits == sum(answered.values())  # every answered call from the cache
        assert again.failures == len(lost)
    assert not set(server.answered) & set(answered)


def test_mixed_faults_every_item_completes_over_reruns_with_no_answered_call_repeated(
    serve, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("MOALIGN_FAULT_KEY", SECRET)
    mix = {"malformed_json": 0.1, "empty_choices": 0.05, "missing_content": 0.05, "wrong_content_type": 0.05,
           "reset": 0.05, "http_500": 0.1}
    server = serve(faults=mix, fault_seed=5)
    cache = tmp_path / "cache.sqlite"
    batch = items(30)
    calls = len(batch) * len(DIMS)
    caplog.set_level(logging.DEBUG)
    scored_per_run: list[int] = []
    while len(scored_per_run) < 8 and sum(scored_per_run[-1:]) < calls:
        # the draws go on across runs: a call lost in one run gets new chances in the next
        answered_before = sum(server.answered.values())
        with judge_for(server, cache, concurrency=8, max_retries=1, api_key_env="MOALIGN_FAULT_KEY") as judge:
            scores = judge.score_batch(batch)
            assert judge.cache_hits == answered_before  # every call answered in an earlier run
            scored_per_run.append(sum(len(s) for s in scores))
            assert judge.failures == calls - scored_per_run[-1]
    assert len(scored_per_run) > 1  # with 40 % of requests faulted, the first run lost some calls
    assert scored_per_run[-1] == calls and scored_per_run == sorted(scored_per_run)
    answered = server.answered
    assert sum(answered.values()) == calls and set(answered.values()) == {1}
    assert server.faults and set(server.faults) <= set(mix)
    assert server.authorization == {f"Bearer {SECRET}"}
    assert "FAULTSECRET" not in caplog.text


def test_reask_answered_then_faults_is_cached_so_no_answered_request_repeats(serve, tmp_path, caplog):
    # the first reply is unparseable and answered; the re-ask then meets faults on every try
    def unreadable_first(messages):
        return "Quite good." if len(messages) == 1 else default_reply(messages)

    (item,) = items(1)
    text = first_message("helpfulness", item)
    draws = (FakeServerConfig(faults={"http_500": 0.5}, fault_seed=s) for s in itertools.count())
    # request 1 answered, requests 2 to 2 + RETRIES (the re-ask and its retries) faulted
    seed = next(c.fault_seed for c in draws
                if c.fault_for(text, 1) is None and all(c.fault_for(text, n) for n in range(2, RETRIES + 3)))
    server = serve(reply=unreadable_first, faults={"http_500": 0.5}, fault_seed=seed)
    cache = tmp_path / "cache.sqlite"
    with judge_for(server, cache, dimensions=["helpfulness"]) as judge:
        with caplog.at_level(logging.WARNING, logger="moalign.judges.llm"):
            assert judge.score_batch([item]) == [{}]
        assert server.total == 1 + RETRIES + 1 and server.answered == {text: 1}
        assert judge.failures == 1 and len(judge.cache) == 1  # answered once: recorded for good
    assert f"{server.url}: HTTP 500" in caplog.text
    server.reset()
    with judge_for(server, cache, dimensions=["helpfulness"]) as again:
        assert again.score_batch([item]) == [{}]
        assert again.cache_hits == 1
    assert server.total == 0


def test_an_endpoint_that_is_down_stops_the_run_naming_it(serve, tmp_path):
    server = serve(faults={"reset": 1.0})
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], max_retries=0, concurrency=2)
    with pytest.raises(EndpointDown, match="peer closed connection") as raised:
        judge.score_batch(items(200))
    assert server.url in str(raised.value) and "rerun" in str(raised.value)
    assert server.total < 100  # stopped early, not after trying every item
    assert len(judge.cache) == 0
    judge.close()


def test_a_client_error_still_stops_the_run(serve, tmp_path):
    server = serve(fail_first=1000, fail_status=401)
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], concurrency=1)
    with pytest.raises(openai.AuthenticationError):
        judge.score_batch(items(5))
    assert server.total == 1 and len(judge.cache) == 0  # a bad key is not retried, nor each item's failure
    judge.close()


def test_fault_draws_are_seeded_and_checked():
    config = FakeServerConfig(faults={"reset": 0.3, "http_500": 0.2}, fault_seed=1)
    draws = [config.fault_for("prompt", n) for n in range(1, 2001)]
    assert draws == [FakeServerConfig(faults={"reset": 0.3, "http_500": 0.2}, fault_seed=1).fault_for("prompt", n)
                     for n in range(1, 2001)]
    assert abs(draws.count("reset") / 2000 - 0.3) < 0.05 and abs(draws.count("http_500") / 2000 - 0.2) < 0.05
    assert draws != [FakeServerConfig(faults={"reset": 0.3, "http_500": 0.2}, fault_seed=2).fault_for("prompt", n)
                     for n in range(1, 2001)]
    assert FakeServerConfig().fault_for("prompt", 1) is None
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FakeServerConfig(faults={"gremlins": 0.1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        FakeServerConfig(faults={"reset": 0.6, "http_500": 0.6})
