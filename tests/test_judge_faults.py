"""Judge faults never stop a run (issue 16): bad bodies, resets and 5xx are retried, and a call that
still fails is that item's failure, named, while the other items are scored and no answered call is
asked twice. Against the loopback fake server's seeded fault injection."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from components import annotate as annotate_component
from moalign.config import Params
from moalign.judges import llm
from moalign.data.schema import PreferenceRow, TaskPrompt, read_jsonl, write_jsonl
from moalign.judges.llm import EndpointConfig, EndpointDown, LLMJudge, failure_kind, load_templates
from moalign.validation import validate_pairs
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
    "reset": "payload is not completed",  # aiohttp's words for a body cut short
    "http_500": "HTTP 500",
    "http_429": "HTTP 429",
}
#: the stage summary's kind (moalign.judges.llm.failure_kind) of each fault kind of the fake server
KIND = {kind: kind for kind in FAULTS} | {"reset": "connection_reset", "http_500": "http_500", "http_429": "http_429"}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """The judge's backoff (the SDK's: 0.5 s doubling, at most 8 s) shortened: the tests count
    requests, not time."""
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(llm, "MAX_RETRY_DELAY", 0.002)


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
    assert judge.failure_summary() == {"calls": len(lost), "by_kind": {KIND[kind]: len(lost)}, "endpoint": server.url}
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
        # a failure taken from the cache is still this run's unscored item, named as when it happened
        assert again.failure_summary()["by_kind"] == {"http_500": 1}
    assert server.total == 0


def test_an_endpoint_that_is_down_stops_the_run_naming_it(serve, tmp_path):
    server = serve(faults={"reset": 1.0})
    judge = judge_for(server, tmp_path / "cache.sqlite", dimensions=["helpfulness"], max_retries=0, concurrency=2)
    with pytest.raises(EndpointDown, match="payload is not completed") as raised:
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


@pytest.mark.parametrize(("error", "kind"), [
    ("unparseable reply", "unparseable_reply"),
    ("http://h/v1: HTTP 500, after 5 retries", "http_500"),
    ("http://h/v1: HTTP 429, after 5 retries", "http_429"),
    ("http://h/v1: DecodingError: malformed JSON body (Expecting value: line 1), after 5 retries", "malformed_json"),
    ("http://h/v1: DecodingError: a text/html body, not JSON, after 5 retries", "wrong_content_type"),
    ("http://h/v1: DecodingError: no choices in the completion, after 5 retries", "empty_choices"),
    ("http://h/v1: DecodingError: no message content in the completion, after 5 retries", "missing_content"),
    ("http://h/v1: ReadTimeout, after 5 retries", "timeout"),
    ("http://h/v1: Request timed out., after 5 retries", "timeout"),
    ("http://h/v1: RemoteProtocolError: peer closed connection without sending complete message body, after 1 retries",
     "connection_reset"),
    ("http://h/v1: ReadError: [Errno 104] Connection reset by peer, after 1 retries", "connection_reset"),
    ("http://h/v1: ConnectError: [Errno 111] Connection refused, after 1 retries", "connection_error"),
    # aiohttp's words (the transport since issue 17); the ones above are httpx's, in older caches
    ("http://h/v1: SocketTimeoutError: Timeout on reading data from socket, after 5 retries", "timeout"),
    ("http://h/v1: ConnectionTimeoutError: Connection timeout to host http://h/v1, after 5 retries", "timeout"),
    ("http://h/v1: ClientPayloadError: Response payload is not completed: <ContentLengthError: 400, "
     "message='Not enough data to satisfy content length header (received 16 of 344 bytes).'>, after 1 retries",
     "connection_reset"),
    ("http://h/v1: ServerDisconnectedError: Server disconnected, after 1 retries", "connection_reset"),
    ("http://h/v1: ClientOSError: [Errno 104] Connection reset by peer, after 1 retries", "connection_reset"),
    ("http://h/v1: ClientConnectorError: Cannot connect to host h:80 ssl:default [Connect call failed "
     "('127.0.0.1', 1)], after 1 retries", "connection_error"),
    # only the fault counts, not the endpoint's name
    ("https://reset-timeout.example/v1: HTTP 503, after 2 retries", "http_503"),
    ("http://u:p@reset.example/v1: DecodingError: malformed JSON body (x), after 2 retries", "malformed_json"),
    ("http://h/v1: SomethingNew: surprise, after 1 retries", "other"),
])
def test_failure_kind_names_each_fault(error, kind):
    assert failure_kind(error) == kind


def test_annotate_stage_summary_names_failed_calls_and_the_gate_quarantines_their_pairs(serve, tmp_path, caplog):
    """A file whose pairs lack verbosity: the judge scores it through a faulty endpoint. stats.json and the
    stage's closing line count the failed calls by kind and name the endpoint; the validation gate
    quarantines exactly the pairs left without a verbosity score."""
    dims = ["helpfulness", "correctness", "verbosity"]
    records = [
        {"id": f"r{i}", "prompt": f"Prompt number {i}?",
         "chosen": {"response": f"A careful answer {i}.", "helpfulness": 4, "correctness": 4},
         "rejected": {"response": f"A sloppy answer {i}.", "helpfulness": 1, "correctness": 1}}
        for i in range(12)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", records)
    server = serve(faults={"malformed_json": 0.3, "http_500": 0.25, "reset": 0.2}, fault_seed=4)
    params = Params.model_validate({
        "dimensions": {"names": dims},
        "data": {"source": "file", "path": str(tmp_path / "pairs.jsonl"), "format": "amopo", "eval_fraction": 0.0},
        "judge": {"backend": "openai_compatible", "base_url": server.url, "model": "fake-judge",
                  "cache_path": str(tmp_path / "cache.sqlite"), "max_retries": RETRIES, "concurrency": 4},
    })
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(by_alias=True)))
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(annotate_component.app, [
            "--tasks", "unused", "--model", "unused", "--out", str(tmp_path / "out"),
            "--params", str(tmp_path / "params.yaml"),
        ])
    assert result.exit_code == 0, result.output

    # the calls lost for good, and the fault of their last try: the draws are seeded
    template = load_templates(["verbosity"])["verbosity"]
    lost: dict[tuple[str, str], str] = {}
    for record in records:
        for side in ("chosen", "rejected"):
            text = template.render(record["prompt"], record[side]["response"])
            if fails_for_good(server.config, text):
                lost[record["prompt"], side] = KIND[server.config.fault_for(text, RETRIES + 1)]
    rows = read_jsonl(tmp_path / "out/pairs.jsonl", PreferenceRow)
    lost_pairs = {row.id for row in rows for prompt, _ in lost if row.prompt == prompt}
    assert len(set(lost.values())) > 1 and 0 < len(lost_pairs) < len(records)  # the seed gives a mix

    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["judge_failed"] == {
        "items": len(lost), "calls": len(lost), "by_kind": dict(sorted(Counter(lost.values()).items())),
        "endpoint": server.url,
    }
    assert stats["judge_failures"] == len(lost)
    closing = [r.getMessage() for r in caplog.records if "judge_failed" in r.getMessage()]
    assert len(closing) == 1 and f"at {server.url} failed {len(lost)} calls" in closing[0], closing
    assert f"{len(lost)} items lack a score" in closing[0]
    assert all(f"{kind} {n}" in closing[0] for kind, n in Counter(lost.values()).items())

    # downstream: the gate quarantines exactly those pairs, under scores_complete
    assert {r.id for r in rows if "verbosity" not in r.chosen.scores or "verbosity" not in r.rejected.scores} \
        == lost_pairs
    report = validate_pairs(rows, dimensions=dims, max_tokens=1000, count_tokens=lambda text: len(text.split()))
    assert {q.row.id: q.failed for q in report.quarantined} == {pair: ["scores_complete"] for pair in lost_pairs}
    assert len(report.valid) == len(records) - len(lost_pairs)


def test_failure_summary_masks_the_endpoints_password(serve, tmp_path):
    # params.yaml refuses such a base_url, but an EndpointConfig made in code may carry one
    server = serve(faults={"reset": 1.0})
    url = server.url.replace("http://", "http://judge:TOPSECRET@")
    config = EndpointConfig(base_url=url, model="fake-judge", max_retries=0, concurrency=1)
    with LLMJudge(["helpfulness"], config, tmp_path / "cache.sqlite") as judge:
        assert judge.score_batch(items(3)) == [{}, {}, {}]
        assert judge.failure_summary() == {"calls": 3, "by_kind": {"connection_reset": 3},
                                           "endpoint": server.url.replace("http://", "http://judge:***@")}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("load_bench", Path(__file__).parents[1] / "benchmarks/load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_benchmark_accounts_for_every_item_and_repeats_no_answered_call(tmp_path):
    """benchmarks/load.py's core at a small size: 300 items at concurrency 16 with 10 % faults, no retries
    (so about one call in ten fails), the server in a thread."""
    result = _load_benchmark().run_load(items=300, concurrency=16, fault_rate=0.1, max_retries=0,
                                        server_process=False, folder=tmp_path, sample_every=0.01)
    assert result["ok"] and result["accounted"]
    assert result["items_completed"] + result["items_failed"] == result["items_scored"] == 300
    assert result["calls_failed"] == result["unscored_calls"] == result["failures_named"] > 20
    assert sum(result["failed_by_kind"].values()) == result["calls_failed"]
    assert result["answered_twice"] == 0 and result["answered_calls"] == 600 - result["calls_failed"]
    assert result["requests"] == 600  # no retries: one request per call
    assert result["max_in_flight"] <= 16
    assert 0 < result["rss_start_mib"] <= result["rss_peak_mib"] and result["samples"] > 2
