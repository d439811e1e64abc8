"""The judge's HTTP transport keeps the openai SDK's retry rules (issue 17): Retry-After honoured,
exponential backoff with jitter, 408/409/429/5xx, timeouts and connection errors retried, other 4xx
not. Against the loopback fake server; the waits are recorded, and shortened where only their
number matters."""

from __future__ import annotations

import socket
import time

import openai
import pytest

from moalign.data.schema import TaskPrompt
from moalign.judges import llm
from moalign.judges.llm import EndpointConfig, LLMJudge, failure_kind, retry_delay, should_retry


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The delay of every retry the transport waits, in order."""
    seen: list[float] = []
    real = llm.retry_delay

    def recording(retries_taken, headers=None):
        seen.append(real(retries_taken, headers))
        return seen[-1]

    monkeypatch.setattr(llm, "retry_delay", recording)
    return seen


def judge(url: str, tmp_path, **settings) -> LLMJudge:
    settings = {"max_retries": 2, "timeout_s": 10.0, "concurrency": 1} | settings
    judge = LLMJudge(["helpfulness"], EndpointConfig(base_url=url, model="fake-judge", **settings),
                     tmp_path / "cache.sqlite")
    judge.show_progress = False
    return judge


def one_item(tag: str = "q") -> list[tuple[TaskPrompt, str]]:
    return [(TaskPrompt(id=tag, split="train", category="test", prompt=f"[{tag}] Why?"), "Because.")]


@pytest.mark.parametrize("headers", [{"Retry-After": "0.3"}, {"retry-after-ms": "300", "Retry-After": "9"}])
def test_retry_after_is_honoured(serve, tmp_path, waits, headers):
    server = serve(fail_first=1, fail_status=429, fail_headers=headers)
    with judge(server.url, tmp_path) as j:
        start = time.perf_counter()
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
        assert time.perf_counter() - start >= 0.3
    assert waits == [0.3] and server.total == 2  # the server's wait, not the backoff (0.375-0.5 s)


def test_a_retry_after_over_two_minutes_is_not_waited_for(serve, tmp_path, waits):
    server = serve(fail_first=5, fail_status=429, fail_headers={"Retry-After": "121"})
    with judge(server.url, tmp_path) as j:
        assert j.score_batch(one_item()) == [{}]
        assert list(j.failed_calls.values()) == ["http_429"]
    assert waits == [] and server.total == 1


def test_backoff_doubles_with_jitter_up_to_its_cap(serve, tmp_path, waits, monkeypatch):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.02)
    monkeypatch.setattr(llm, "MAX_RETRY_DELAY", 0.08)
    # Retry-After: 0 is no wait the SDK honours (it needs 0 < s <= 120): the backoff applies
    server = serve(fail_first=5, fail_status=500, fail_headers={"Retry-After": "0"})
    with judge(server.url, tmp_path, max_retries=5) as j:
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
    assert server.total == 6 and len(waits) == 5
    for wait, full in zip(waits, [0.02, 0.04, 0.08, 0.08, 0.08], strict=True):
        assert 0.75 * full <= wait <= full  # less a random 0-25 %


def test_the_sdk_backoff_constants_and_jitter():
    assert (llm.INITIAL_RETRY_DELAY, llm.MAX_RETRY_DELAY, llm.MAX_RETRY_AFTER_DELAY) == (0.5, 8.0, 120.0)
    first = [retry_delay(0) for _ in range(200)]
    assert all(0.375 <= w <= 0.5 for w in first) and max(first) - min(first) > 0.05  # jittered
    assert all(6.0 <= retry_delay(n) <= 8.0 for n in (4, 10, 5000))  # capped, no overflow
    assert retry_delay(3, {"retry-after": "2.5"}) == 2.5  # a server's wait is not jittered
    assert 1.5 <= retry_delay(2, {"retry-after": "soon"}) <= 2.0  # unreadable: the backoff
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_delay(0, {"retry-after": http_date}) <= 31


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_transient_statuses_are_retried(serve, tmp_path, waits, monkeypatch, status):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    server = serve(fail_first=2, fail_status=status, fail_headers={})
    with judge(server.url, tmp_path) as j:
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
    assert server.total == 3 and len(waits) == 2


@pytest.mark.parametrize(("status", "error"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError), (422, openai.UnprocessableEntityError), (418, openai.APIStatusError),
])
def test_other_client_errors_are_not_retried_and_stop_the_run(serve, tmp_path, waits, status, error):
    server = serve(fail_first=10, fail_status=status, fail_headers={})
    with judge(server.url, tmp_path, max_retries=5) as j, pytest.raises(error, match=f"Error code: {status}"):
        j.score_batch(one_item())
    assert server.total == 1 and waits == []


def test_x_should_retry_overrides_the_status(serve, tmp_path, waits, monkeypatch):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    server = serve(fail_first=1, fail_status=400, fail_headers={"x-should-retry": "true"})
    with judge(server.url, tmp_path) as j:
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
    assert server.total == 2
    assert not should_retry(503, {"x-should-retry": "false"}) and should_retry(503, {})


def test_a_timeout_is_retried(serve, tmp_path, waits, monkeypatch):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    server = serve(slow_first=1, slow_latency=2.0)  # the first request outlasts the client's timeout
    with judge(server.url, tmp_path, timeout_s=0.3, max_retries=1) as j:
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
    assert len(waits) == 1 and server.total == 2


def test_a_call_that_always_times_out_is_that_calls_timeout(serve, tmp_path, waits, monkeypatch):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    server = serve(latency=0.5)
    with judge(server.url, tmp_path, timeout_s=0.1, max_retries=1) as j:
        assert j.score_batch(one_item()) == [{}]
        assert list(j.failed_calls.values()) == ["timeout"]
    assert len(waits) == 1


def test_a_refused_connection_is_retried_then_named(tmp_path, waits, monkeypatch):
    monkeypatch.setattr(llm, "INITIAL_RETRY_DELAY", 0.001)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=3) as j:
        assert j.score_batch(one_item()) == [{}]
        (error,) = [call.error for call in j.run_calls([j._spec("helpfulness", *one_item()[0])]).values()]
    assert len(waits) == 6  # 3 retries for each of the two batches
    assert failure_kind(error) == "connection_error" and error.endswith("after 3 retries")


def test_the_key_is_sent_as_a_bearer_token(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("MOALIGN_TRANSPORT_KEY", "sk-TRANSPORT")
    server = serve()
    with judge(server.url, tmp_path, api_key_env="MOALIGN_TRANSPORT_KEY") as j:
        assert j.score_batch(one_item()) == [{"helpfulness": 4}]
    assert server.authorization == {"Bearer sk-TRANSPORT"}
