"""A loopback OpenAI-compatible chat server for tests and benchmarks (no network, no model).

``POST /v1/chat/completions`` and ``GET /v1/models``, served by uvicorn on 127.0.0.1 at a free port,
either in a background thread of this process (the default: counters are read directly) or in a
child process (``process=True``: the server then does not share this process's GIL, which is what
a benchmark of the client wants; counters are read over ``GET /_fake/stats``).

Behaviour, all set in the constructor:

* ``latency``: seconds every served request sleeps (``asyncio.sleep``, so it costs no CPU);
* ``capacity``: requests served in parallel at most; the excess waits (a semaphore), as at a real
  endpoint with a fixed number of slots. ``None``: unlimited;
* ``reply``: a function of the request's ``messages`` (a list of ``{"role", "content"}`` dicts) to
  the reply text. The default, :func:`default_reply`, answers ``{"reason": "ok", "judgement":
  "Pass"}`` when the prompt asks for a judgement and ``{"reason": "ok", "score": 3}`` otherwise.
  In process mode it must be picklable (a module-level function);
* ``fail_first`` / ``fail_status`` / ``fail_headers``: the first N requests are answered with that
  status (429 with ``Retry-After: 0`` by default; 500 works too) and an OpenAI-style error body;
* ``slow_first`` / ``slow_latency``: the first N requests sleep ``slow_latency`` seconds
  (``asyncio.sleep``) instead of ``latency``: a client's timeout, then a retry that is answered;
* ``faults`` / ``fault_seed``: a fault injected at a rate per kind (:data:`FAULTS`), e.g.
  ``faults={"malformed_json": 0.1, "reset": 0.05}``, the rates summing to at most 1. The draw is a
  hash of the seed, the request's first user message and how many requests with that message came
  before (:meth:`FakeServerConfig.fault_for`): the same calls meet the same faults whatever the
  concurrency or the order of arrival. A faulted request still waits ``latency`` first;
* ``prompt_tokens`` / ``completion_tokens``: the ``usage`` of every reply;
* ``model``: the model id ``/v1/models`` lists.

Counters (:meth:`FakeOpenAIServer.stats`, or the properties): ``total`` requests received (failed
ones included), ``per_prompt`` (requests per first-user-message text: re-asks and retries of one
judge call count under its prompt), ``answered`` (the same, counting only requests answered with a
reply: no injected failure or fault), ``max_in_flight`` (the most requests inside the server at one
time, waiting or served), ``failed`` (injected failures and faults sent), ``faults`` (faults sent
per kind), ``authorization`` (the distinct ``Authorization`` headers seen). ``stats(brief=True)``
gives counts in place of the per-prompt dicts (``answered_calls``, ``answered_twice``...), for load
runs whose prompts would make those dicts large.

Use it as a context manager, or through the ``fake_openai`` pytest fixture at the bottom::

    with FakeOpenAIServer(latency=0.05, capacity=4) as server:
        client = OpenAI(base_url=server.url, api_key="x")
        ...
        assert server.total == 1

Run it by hand: ``python tests/fake_openai_server.py --latency 0.2 --capacity 64 --port 8000``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import multiprocessing
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

Reply = Callable[[list[dict[str, Any]]], str]


def default_reply(messages: list[dict[str, Any]]) -> str:
    """A valid judge reply for the template in ``messages``: a Pass judgement or a score of 3."""
    prompt = first_user_text(messages)
    if '"judgement"' in prompt:
        return '{"reason": "ok", "judgement": "Pass"}'
    return '{"reason": "ok", "score": 3}'


def first_user_text(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


#: the faults ``faults`` can inject, each a way a real endpoint or a proxy in front of it misbehaves
FAULTS = {
    "malformed_json": "200, application/json, the completion cut in half: not JSON (Unterminated string ...)",
    "empty_choices": "200, a completion whose choices list is empty",
    "missing_content": "200, a completion whose message has no content",
    "wrong_content_type": "200, text/html: a proxy's error page",
    "reset": "the connection closed in the middle of the body",
    "http_500": "500 with an OpenAI-style error body",
    "http_429": "429 with Retry-After: 0",
}


@dataclass
class FakeServerConfig:
    latency: float = 0.0
    capacity: int | None = None
    reply: Reply = default_reply
    fail_first: int = 0
    fail_status: int = 429
    fail_headers: Mapping[str, str] = field(default_factory=lambda: {"Retry-After": "0"})
    faults: Mapping[str, float] = field(default_factory=dict)
    fault_seed: int = 0
    slow_first: int = 0
    slow_latency: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int = 10
    model: str = "fake-judge"

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; allowed: {', '.join(FAULTS)}")
        if any(not 0 <= rate <= 1 for rate in self.faults.values()) or sum(self.faults.values()) > 1:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, got {dict(self.faults)}")

    def fault_for(self, text: str, number: int) -> str | None:
        """The fault injected into the ``number``-th request (from 1) whose first user message is
        ``text``, or None."""
        if not self.faults:
            return None
        digest = hashlib.sha256(f"{self.fault_seed}|{number}|{text}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        for kind, rate in self.faults.items():
            if draw < rate:
                return kind
            draw -= rate
        return None


class _State:
    """The counters, updated on the server's event loop and read from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.failed = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.per_prompt: collections.Counter[str] = collections.Counter()
            self.answered: collections.Counter[str] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.authorization: set[str] = set()

    def snapshot(self, brief: bool = False) -> dict[str, Any]:
        """The counters; ``brief``: counts in place of the per-prompt dicts, whose keys are whole
        prompts (tens of MB over HTTP after a 10,000-item load run)."""
        with self.lock:
            counts = {
                "total": self.total,
                "failed": self.failed,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "faults": dict(self.faults),
                "authorization": sorted(self.authorization),
            }
            if brief:
                return {**counts, "prompts": len(self.per_prompt), "answered_calls": self.answered.total(),
                        "answered_prompts": len(self.answered),
                        "answered_twice": sum(n > 1 for n in self.answered.values())}
            return {**counts, "per_prompt": dict(self.per_prompt), "answered": dict(self.answered)}


class _InjectedReset(Exception):
    """Raised mid-body so that uvicorn drops the connection (the ``reset`` fault)."""


class _DropInjectedResets(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" for an injected reset out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _InjectedReset))


def _completion(number: int, model: str, text: str, config: FakeServerConfig) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": config.prompt_tokens,
            "completion_tokens": config.completion_tokens,
            "total_tokens": config.prompt_tokens + config.completion_tokens,
        },
    }


def _fault_response(fault: str, number: int, completion: dict[str, Any]):
    """The response of an injected fault (:data:`FAULTS`)."""
    from starlette.responses import JSONResponse, Response

    if fault in ("http_500", "http_429"):
        error = {"error": {"message": f"injected {fault} {number}", "type": "fake", "code": None}}
        status, headers = (500, {}) if fault == "http_500" else (429, {"Retry-After": "0"})
        return JSONResponse(error, status_code=status, headers=headers)
    if fault == "wrong_content_type":
        return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html")
    if fault == "empty_choices":
        return JSONResponse({**completion, "choices": []})
    if fault == "missing_content":
        del completion["choices"][0]["message"]["content"]
        return JSONResponse(completion)
    body = json.dumps(completion).encode()
    if fault == "malformed_json":
        return Response(body[: len(body) // 2], media_type="application/json")

    async def cut_short(scope, receive, send) -> None:  # "reset"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[:16], "more_body": True})
        raise _InjectedReset(f"injected reset {number}")

    return cut_short


def build_app(config: FakeServerConfig, state: _State):
    """The Starlette app (plain Starlette: FastAPI's validation layer would only add overhead)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    slots: list[asyncio.Semaphore] = []  # made on the server's loop, at the first request

    async def chat(request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages") or []
        text = first_user_text(messages)
        with state.lock:
            state.total += 1
            number = state.total
            state.per_prompt[text] += 1
            fault = config.fault_for(text, state.per_prompt[text]) if number > config.fail_first else None
            if "authorization" in request.headers:
                state.authorization.add(request.headers["authorization"])
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if number <= config.fail_first:
                with state.lock:
                    state.failed += 1
                error = {"error": {"message": f"injected failure {number}", "type": "fake", "code": None}}
                return JSONResponse(error, status_code=config.fail_status, headers=dict(config.fail_headers))
            if number <= config.slow_first:
                await asyncio.sleep(config.slow_latency)
            elif config.capacity is not None:
                if not slots:
                    slots.append(asyncio.Semaphore(config.capacity))
                async with slots[0]:
                    if config.latency:
                        await asyncio.sleep(config.latency)
            elif config.latency:
                await asyncio.sleep(config.latency)
            completion = _completion(number, body.get("model", config.model), config.reply(messages), config)
            with state.lock:
                if fault:
                    state.failed += 1
                    state.faults[fault] += 1
                else:
                    state.answered[text] += 1
            return _fault_response(fault, number, completion) if fault else JSONResponse(completion)
        finally:
            with state.lock:
                state.in_flight -= 1

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": config.model, "object": "model", "created": 0, "owned_by": "fake"},
        ]})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot(brief="brief" in request.query_params))

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_fake/stats", stats, methods=["GET"]),
        Route("/_fake/reset", reset, methods=["POST"]),
    ])


def _uvicorn_server(app):
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off",
        timeout_keep_alive=30, backlog=4096,
    )
    server = uvicorn.Server(config)
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropInjectedResets) for f in error_log.filters):
        error_log.addFilter(_DropInjectedResets())
    server.install_signal_handlers = lambda: None  # older uvicorn; newer ones skip it off the main thread
    return server


def _bound_socket() -> socket.socket:
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says TCP, and without it every response waits ~40 ms (Nagle + delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _serve_in_child(config: FakeServerConfig, port_pipe) -> None:
    sock = _bound_socket()
    state = _State()
    server = _uvicorn_server(build_app(config, state))
    port_pipe.send(sock.getsockname()[1])
    port_pipe.close()
    server.run(sockets=[sock])


class FakeOpenAIServer:
    """The server; ``with FakeOpenAIServer(...) as server:`` starts it and stops it cleanly."""

    def __init__(self, *, process: bool = False, startup_timeout_s: float = 30.0, **settings: Any):
        self.config = FakeServerConfig(**settings)
        self.process = process
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._state = _State()
        self._server = None
        self._thread: threading.Thread | None = None
        self._child: multiprocessing.Process | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base(self) -> str:
        if self.port is None:
            raise RuntimeError("the fake server is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI ``base_url`` (ends with /v1)."""
        return f"{self.base}/v1"

    def start(self) -> FakeOpenAIServer:
        if self.process:
            self._start_child()
        else:
            self._start_thread()
        return self

    def _start_thread(self) -> None:
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        self._server = _uvicorn_server(build_app(self.config, self._state))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-openai-server", daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        # uvicorn closes the socket at shutdown

    def _start_child(self) -> None:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self._child = context.Process(target=_serve_in_child, args=(self.config, sender), daemon=True)
        self._child.start()
        sender.close()
        if not receiver.poll(self.startup_timeout_s):
            self.stop()
            raise RuntimeError("the fake OpenAI server process did not start")
        self.port = receiver.recv()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or not self._child.is_alive():
                    self.stop()
                    raise RuntimeError("the fake OpenAI server process does not answer") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._child is not None:
            self._child.terminate()  # uvicorn handles SIGTERM as a graceful shutdown
            self._child.join(timeout=10)
            if self._child.is_alive():
                self._child.kill()
                self._child.join()
            self._child = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- counters ------------------------------------------------------------------------------

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """The counters (:meth:`_State.snapshot`; ``brief``: counts, not per-prompt dicts)."""
        if self.process:
            query = "?brief=1" if brief else ""
            with urllib.request.urlopen(f"{self.base}/_fake/stats{query}", timeout=10) as answer:
                return json.loads(answer.read())
        return self._state.snapshot(brief)

    def reset(self) -> None:
        """Zero the counters (the failure injection counts from zero again too)."""
        if self.process:
            request = urllib.request.Request(f"{self.base}/_fake/reset", data=b"", method="POST")
            urllib.request.urlopen(request, timeout=10).close()
        else:
            self._state.reset()

    @property
    def total(self) -> int:
        return self.stats()["total"]

    @property
    def failed(self) -> int:
        return self.stats()["failed"]

    @property
    def answered(self) -> collections.Counter[str]:
        return collections.Counter(self.stats()["answered"])

    @property
    def faults(self) -> collections.Counter[str]:
        return collections.Counter(self.stats()["faults"])

    @property
    def max_in_flight(self) -> int:
        return self.stats()["max_in_flight"]

    @property
    def per_prompt(self) -> collections.Counter[str]:
        return collections.Counter(self.stats()["per_prompt"])

    @property
    def authorization(self) -> set[str]:
        return set(self.stats()["authorization"])


try:  # the fixture, for tests that import it (``from tests.fake_openai_server import fake_openai``)
    import pytest

    @pytest.fixture
    def fake_openai():
        """A default fake server (instant valid replies), stopped after the test."""
        with FakeOpenAIServer() as server:
            yield server
except ImportError:  # pragma: no cover - the benchmark does not need pytest
    pass


def main() -> None:  # pragma: no cover - by hand
    import argparse

    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible chat endpoint on loopback.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per served request")
    parser.add_argument("--capacity", type=int, default=None, help="requests served in parallel at most")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --fail-status")
    parser.add_argument("--fail-status", type=int, default=429)
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                        help=f"inject a fault at a rate, repeatable; kinds: {', '.join(FAULTS)}")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args()
    import uvicorn

    faults = {kind: float(rate) for kind, _, rate in (f.partition("=") for f in args.fault)}
    config = FakeServerConfig(latency=args.latency, capacity=args.capacity, fail_first=args.fail_first,
                              fail_status=args.fail_status, faults=faults, fault_seed=args.fault_seed)
    uvicorn.run(build_app(config, _State()), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()
