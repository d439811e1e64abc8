"""An LLM judge behind any OpenAI-compatible chat endpoint, with the AMoPO Appendix C templates.

One call per (response, dimension): the dimension's template is filled with the instruction and the
response, sent as a user message at temperature 0, and the reply is parsed strictly (a JSON object
with ``score`` 0-4, or ``judgement`` Pass/Fail). A reply that does not parse is asked again, up to
``max_parse_attempts``; after that the failure is recorded and that dimension stays unscored (the
annotation counts it and the validation gate quarantines the pair) instead of stopping the run.

Transport: the ``openai`` SDK's async client. It already retries 408/409/429/5xx, timeouts and
connection errors with exponential backoff and jitter and honours ``Retry-After``, so moalign does
not re-implement that; a 200 whose body cannot be used (not JSON, no choices, no message content),
which the SDK would not retry, is turned into a transport error that it does retry the same way
(:func:`_refuse_unusable_body`). A call whose request still fails after those retries is that
call's failure, named with the endpoint and counted by kind (:meth:`LLMCaller.failure_summary`, in
the annotate stage's ``stats.json``), and the other calls go on; an error of the request or the
setup (another 4xx: a bad key, a wrong model) stops the run, as does an endpoint that fails many
calls in a row (:class:`EndpointDown`). moalign adds what the SDK lacks for paid annotation runs:
bounded concurrency, a per-run budget (calls and tokens) that stops cleanly, and the SQLite cache
(:mod:`moalign.judges.cache`) that makes a rerun after a crash or a budget stop repeat no answered
call.

The transport is :class:`LLMCaller`, shared by every kind of judge call: it runs a batch of
:class:`JudgeCall` specs (cache key, chat messages, a strict parser, the re-ask text) and returns
their outcomes. :class:`LLMJudge` (per-dimension scores) is one user of it; the pairwise judge and
the MT-bench rater (:mod:`moalign.judges.pairwise`) are the others.

The API key is read from the environment variable the config names, and never logged or stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Self

import yaml

from moalign.data.schema import SCORE_MAX, SCORE_MIN, TaskPrompt
from moalign.judges.base import Scores
from moalign.judges.cache import CachedCall, JudgeCache, call_key

logger = logging.getLogger(__name__)

KINDS = ("score_0_4", "pass_fail")
_UNPARSEABLE = "unparseable reply"  # the error of a call answered but never parsed


class JudgeConfigError(ValueError):
    """The judge cannot start: a missing template, API key or endpoint setting."""


class BudgetExhausted(RuntimeError):
    """The run's call or token budget is spent. Every result so far is in the cache: rerun to go
    on."""


class EndpointDown(RuntimeError):
    """Many calls in a row got no reply after their retries: the endpoint looks down, so the run
    stops instead of failing every item. Every answered call is in the cache: rerun to go on."""


@dataclass(frozen=True)
class JudgeTemplate:
    dimension: str
    text: str
    kind: str
    higher_is_better: bool

    @functools.cached_property
    def version(self) -> str:
        """Changes when the wording or the reading of the reply changes, so stale cache entries
        are not reused."""
        payload = f"{self.kind}|{self.higher_is_better}|{self.text}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def render(self, instruction: str, response: str) -> str:
        # replace, not str.format: the JSON example in the template has braces of its own
        return self.text.replace("{instruction}", instruction).replace("{response}", response)


def load_templates(
    dimensions: Sequence[str], directory: str | os.PathLike[str] | None = None
) -> dict[str, JudgeTemplate]:
    """The templates of ``dimensions`` from ``directory`` (default: the ones shipped with
    moalign)."""
    folder = Path(directory) if directory else templates_folder()
    manifest_path = folder / "templates.yaml"
    if not manifest_path.is_file():
        raise JudgeConfigError(f"{folder}: no templates.yaml (judge.templates_dir)")
    manifest = yaml.safe_load(manifest_path.read_text()) or {}
    templates = {}
    for dimension in dimensions:
        entry = manifest.get(dimension)
        if entry is None:
            raise JudgeConfigError(
                f"no judge template for dimension {dimension!r} in {manifest_path}; "
                f"it has: {', '.join(manifest)}"
            )
        if entry.get("kind") not in KINDS:
            raise JudgeConfigError(
                f"{manifest_path}: {dimension}.kind must be one of {KINDS}, "
                f"got {entry.get('kind')!r}"
            )
        text = (folder / entry["file"]).read_text()
        for placeholder in ("{instruction}", "{response}"):
            if placeholder not in text:
                raise JudgeConfigError(
                    f"{folder / entry['file']}: the template has no {placeholder}"
                )
        templates[dimension] = JudgeTemplate(
            dimension, text, entry["kind"], bool(entry.get("higher_is_better", True))
        )
    return templates


def templates_folder() -> Path:
    """The folder of the templates shipped with moalign."""
    return Path(str(resources.files("moalign.judges") / "templates"))


_DECODER = json.JSONDecoder()


def first_json_object(reply: str) -> dict | None:
    """The first JSON object in ``reply`` (bare, fenced or after a lead-in), or None."""
    for match in re.finditer(r"\{", reply):
        try:
            payload, _ = _DECODER.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        return payload if isinstance(payload, dict) else None
    return None


def parse_reply(reply: str, template: JudgeTemplate) -> int | None:
    """The reply's score on moalign's 1-5 scale (5 best), or None when it does not parse strictly.

    Strict: the reply's first JSON object (a fenced block is fine) has ``score`` an integer 0-4 (or
    a string of one digit, or an integral float), or ``judgement`` Pass/Fail (Safe/Unsafe
    accepted). Prose around a bare number is not a score.
    """
    payload = first_json_object(reply or "")
    if payload is None:
        return None
    fields = {str(k).strip().lower(): v for k, v in payload.items()}
    if template.kind == "pass_fail":
        verdict = fields.get("judgement", fields.get("judgment"))
        verdicts = {"pass": 4, "safe": 4, "fail": 0, "unsafe": 0}
        raw = verdicts.get(verdict.strip().lower()) if isinstance(verdict, str) else None
    else:
        value = fields.get("score")
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        raw = value if is_int and 0 <= value <= 4 else None
    if raw is None:
        return None
    if not template.higher_is_better:
        raw = 4 - raw
    return SCORE_MIN + raw * (SCORE_MAX - SCORE_MIN) // 4


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    model: str
    api_key_env: str | None = None  # the variable's name; None for a local server without auth
    concurrency: int = 8
    max_retries: int = 5  # transport retries (the SDK's backoff), per call
    timeout_s: float = 60.0
    max_parse_attempts: int = 3
    max_tokens: int = 256  # of the reply
    max_calls: int | None = None  # per run (cache hits are free)
    max_total_tokens: int | None = None
    # constrain the reply to the score's JSON schema: "openai" (response_format json_schema, which
    # OpenAI and vLLM accept), "llama_cpp" (llama-cpp-python's json_object + schema), or None
    structured_output: str | None = None


def reply_schema(kind: str) -> dict:
    """The JSON schema of a reply. The verdict comes first, so a reply cut at max_tokens while the
    reason is still being written has already given it; the reason is bounded for the same
    cause."""
    verdict = (
        {"score": {"type": "integer", "enum": [0, 1, 2, 3, 4]}}
        if kind == "score_0_4"
        else {"judgement": {"type": "string", "enum": ["Pass", "Fail"]}}
    )
    return object_schema(verdict)


def object_schema(verdict: dict[str, dict]) -> dict:
    """The schema of a reply object: the ``verdict`` properties, then a bounded ``reason``."""
    properties = {**verdict, "reason": {"type": "string", "maxLength": 160}}
    return {
        "type": "object", "properties": properties, "required": list(properties),
        "additionalProperties": False,
    }


def schema_format(name: str, schema: dict, style: str | None) -> dict | None:
    """The ``response_format`` that constrains a reply to ``schema`` in ``style`` (None: none)."""
    if style is None:
        return None
    if style == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    if style == "openai":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    raise ValueError(f"unknown structured_output style {style!r}; allowed: openai, llama_cpp")


def response_format(kind: str, style: str | None) -> dict | None:
    return schema_format(f"judge_{kind}", reply_schema(kind), style)


def _body_fault(content_type: str, body: bytes) -> str | None:
    """Why a 2xx chat-completion body cannot be used, or None when it can."""
    try:
        payload = json.loads(body)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        media_type = content_type.split(";")[0].strip() or "untyped"
        if media_type.endswith("json"):
            return f"malformed JSON body ({error})"
        return f"a {media_type} body, not JSON"
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices:
        return "no choices in the completion"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return "no message content in the completion"
    return None


async def _refuse_unusable_body(response) -> None:
    """An HTTP client hook: a 2xx chat completion with a body the judge cannot use raises a transport
    error, which the SDK retries with the backoff it gives a 5xx. Without it a malformed body raises
    a bare JSONDecodeError after the 200 (not retried), and an empty one reads as an unparseable
    reply, re-asked and then cached as the judge's verdict."""
    import httpx2

    if not response.is_success or not response.request.url.path.endswith("/chat/completions"):
        return
    await response.aread()
    fault = _body_fault(response.headers.get("content-type", ""), response.content)
    if fault:
        raise httpx2.DecodingError(fault, request=response.request)


def _endpoint_fault(error: Exception) -> str | None:
    """What went wrong, when ``error`` (raised after the SDK's retries) is a fault of the endpoint
    that retrying may cure; None for an error of the request or the setup, which stops the run."""
    from openai import APIConnectionError, APIStatusError

    if isinstance(error, APIStatusError):
        transient = error.status_code in (408, 409, 429) or error.status_code >= 500
        return f"HTTP {error.status_code}" if transient else None
    if isinstance(error, APIConnectionError):  # timeouts, resets, refused connections, bad bodies
        cause = error.__cause__  # the HTTP library's error says what happened; a timeout's is blank
        return f"{type(cause).__name__}: {cause}".removesuffix(": ") if cause is not None else str(error)
    return None


#: a failed call's kind, for the stage summary: the first pattern its error's fault text matches.
#: The text, not the exception, so that a failure taken from the cache (its error string) is named
#: the same way as one that happened in this run.
_FAILURE_KINDS = (
    ("malformed_json", re.compile(r"malformed JSON body")),
    ("wrong_content_type", re.compile(r"body, not JSON")),
    ("empty_choices", re.compile(r"no choices in the completion")),
    ("missing_content", re.compile(r"no message content")),
    ("timeout", re.compile(r"timeout|timed out", re.IGNORECASE)),
    ("connection_reset", re.compile(r"RemoteProtocolError|ReadError|peer closed|reset", re.IGNORECASE)),
    ("connection_error", re.compile(r"ConnectError|connection error|refused", re.IGNORECASE)),
)


def failure_kind(error: str | None) -> str:
    """The kind of a failed call from its ``error`` (``http_500``, ``malformed_json``, ``timeout``,
    ``connection_reset``, ``unparseable_reply``...; ``other`` when nothing matches)."""
    if error is None or error == _UNPARSEABLE:
        return "unparseable_reply"
    # "<base_url>: <fault>, after N retries": only the fault counts (a host may be named "reset")
    head, sep, fault = error.partition(": ")
    fault = fault if sep and "://" in head else error
    status = re.search(r"\bHTTP (\d{3})\b", fault)
    if status:
        return f"http_{status.group(1)}"
    return next((kind for kind, pattern in _FAILURE_KINDS if pattern.search(fault)), "other")


@functools.cache
def _shared_tls_context():
    """The default TLS context of the SDK's HTTP library, made once per process.

    A client is made per batch (its connections belong to that batch's event loop), and making
    one loads the system CA bundle every time: 40-70 ms on a small machine, a per-batch cost as
    large as a few calls. None (the SDK makes its own) where the SDK uses another HTTP library.
    """
    try:
        import httpx2  # openai 3.x's HTTP library
    except ImportError:
        return None
    return httpx2.create_ssl_context()


class _Budget:
    """Calls and tokens spent by one judge (one run). Every request counts, re-asks included; the
    check is made before a judge call starts, and a started call finishes its re-asks, so a run can
    overshoot ``max_calls`` by at most ``(max_parse_attempts - 1) x concurrency`` requests."""

    def __init__(self, max_calls: int | None, max_tokens: int | None):
        self.max_calls, self.max_tokens = max_calls, max_tokens
        self.calls = self.tokens = 0

    def check(self) -> None:
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise BudgetExhausted(
                f"judge budget spent: {self.calls} calls (judge.max_calls={self.max_calls})"
            )
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(
                f"judge budget spent: {self.tokens} tokens "
                f"(judge.max_total_tokens={self.max_tokens})"
            )

    def take_call(self) -> None:
        self.check()
        self.calls += 1


@dataclass(slots=True, eq=False)
class JudgeCall:
    """One judge call, whatever it asks: what :meth:`LLMCaller.run_calls` runs.

    ``messages``: the chat messages, or a function that makes them (called only when the call is
    not in the cache: a resumed run then renders no prompt). ``parse`` reads a reply strictly: the
    result, or None to re-ask (``reask`` is the user message sent then, in the same conversation).
    ``as_score``: the result is a dimension's int score (the cache's ``score`` column); otherwise
    any JSON value (the ``value`` column).
    """

    key: str  # the cache key (moalign.judges.cache.call_key)
    dimension: str  # the cache's dimension column: the dimension, or the kind of call
    template_version: str
    messages: Sequence[dict[str, str]] | Callable[[], Sequence[dict[str, str]]]
    parse: Callable[[str], Any]
    reask: str
    what: str  # in the failure's log line: "helpfulness score", "pairwise verdict"
    response_format: dict | None = None
    max_tokens: int | None = None  # None: the endpoint's
    as_score: bool = False


class LLMCaller:
    """The transport of every LLM judge: one endpoint, its call cache, budget and counters.

    ``run_calls(specs)`` runs a batch of :class:`JudgeCall` with bounded concurrency: a call already
    in the cache is not made again, the same key twice is one call, and each finished call is in
    the cache at once. ``close()`` (or ``with ... as judge:``) closes the cache.
    """

    #: show a tqdm progress bar while calls are made (batches of two calls or more)
    show_progress: bool = True

    def __init__(self, endpoint: EndpointConfig, cache_path):
        self.check_endpoint(endpoint)
        self.endpoint = endpoint
        self.cache = JudgeCache(cache_path)
        self.budget = _Budget(endpoint.max_calls, endpoint.max_total_tokens)
        self.failures = 0  # calls made by this judge that failed: no parseable reply, or no reply
        self.cache_hits = 0
        # key -> failure_kind of every failed outcome a batch returned, cached failures included:
        # what failure_summary() reports. Failures only, so it stays small on a large run
        self.failed_calls: dict[str, str] = {}

    @staticmethod
    def check_endpoint(endpoint: EndpointConfig) -> None:
        """What must hold before anything is opened; the key variable's name only, never a
        value."""
        if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
            raise JudgeConfigError(
                f"judge.api_key_env names {endpoint.api_key_env!r}, but that environment variable "
                "is not set (or empty)"
            )
        if endpoint.concurrency < 1:
            raise JudgeConfigError(f"judge.concurrency must be >= 1, got {endpoint.concurrency}")

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _client(self):
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        key = os.environ.get(self.endpoint.api_key_env) if self.endpoint.api_key_env else None
        tls = _shared_tls_context()
        # the SDK's own HTTP client and defaults, with the TLS context built once per process
        http_client = None if tls is None else DefaultAsyncHttpxClient(
            verify=tls, event_hooks={"response": [_refuse_unusable_body]},
        )
        return AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=key or "not-needed",  # local servers ignore it; the SDK insists on one
            max_retries=self.endpoint.max_retries,
            timeout=self.endpoint.timeout_s,
            http_client=http_client,
        )

    def run_calls(self, specs: Sequence[JudgeCall]) -> dict[str, CachedCall]:
        """The outcome of every spec by key (``.result`` is None for a failure: no parseable reply
        after the re-asks, or the endpoint's fault after the retries, which ``.error`` names).

        Raises :class:`BudgetExhausted` once the budget is spent, :class:`EndpointDown` when many
        calls in a row fail, and the SDK's error for a request the endpoint refuses (a 4xx other
        than 408/409/429); then no new call starts, the calls in flight finish and every answered
        call is in the cache, so a rerun repeats none of them.
        """
        specs = list(specs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return asyncio.run(self._run_calls(specs))
        # called from async code (a notebook, a server): run on a loop of our own in a worker thread
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-judge") as pool:
            return pool.submit(asyncio.run, self._run_calls(specs)).result()

    async def _run_calls(self, specs: list[JudgeCall]) -> dict[str, CachedCall]:
        cached = self.cache.get_many(sorted({spec.key for spec in specs}))
        self.cache_hits += sum(1 for spec in specs if spec.key in cached)
        pending: dict[str, JudgeCall] = {}  # the same key twice is one call
        for spec in specs:
            if spec.key not in cached and spec.key not in pending:
                pending[spec.key] = spec
        if pending:
            await self._call_all(pending, cached)
        for spec in specs:
            call = cached.get(spec.key)
            if call is not None and call.result is None:
                self.failed_calls[spec.key] = failure_kind(call.error)
        return cached

    def failure_summary(self) -> dict[str, Any]:
        """The failed calls of every batch so far (made now, or failures taken from the cache): how
        many, by :func:`failure_kind`, and the endpoint (its password masked)."""
        from moalign.credentials import redact_url_password

        by_kind = Counter(self.failed_calls.values())
        return {"calls": len(self.failed_calls), "by_kind": dict(sorted(by_kind.items())),
                "endpoint": redact_url_password(self.endpoint.base_url)}

    async def _call_all(self, pending: dict[str, JudgeCall], cached: dict[str, CachedCall]) -> None:
        from tqdm.auto import tqdm

        stop: list[BaseException] = []  # the first error (or budget stop) ends the run
        progress = tqdm(total=len(pending), desc="judge calls", unit="call",
                        disable=not self.show_progress or len(pending) < 2)
        queue = iter(pending.values())  # shared by the workers: each takes the next when free
        # a short outage fails about one call per worker; this many in a row means the endpoint is down
        most_unanswered = max(16, 2 * self.endpoint.concurrency)
        unanswered = 0  # calls in a row with no reply at all

        async def worker() -> None:
            nonlocal unanswered
            for spec in queue:
                if stop:
                    return
                try:
                    self.budget.take_call()
                    call = await self._ask(client, spec)
                except Exception as error:  # noqa: BLE001 - raised after the calls in flight finish
                    stop.append(error)
                    return
                if call.attempts:  # answered at least once: cached, never asked again
                    self.cache.put(spec.key, dimension=spec.dimension, model=self.endpoint.model,
                                   template_version=spec.template_version, call=call)
                cached[spec.key] = call
                progress.update()
                unanswered = 0 if call.attempts else unanswered + 1
                if call.result is None:
                    self.failures += 1
                    if call.error == _UNPARSEABLE:
                        logger.warning("judge gave no parseable %s after %d attempts: %s",
                                       spec.what, call.attempts, call.error)
                    else:
                        logger.warning("judge call for the %s failed: %s", spec.what, call.error)
                if unanswered >= most_unanswered:
                    stop.append(EndpointDown(
                        f"{call.error}; {unanswered} calls in a row got no reply, so the run stops. "
                        "Every answered call is cached: rerun to go on"
                    ))
                    return

        client = self._client()
        try:
            # concurrency workers, not one task per call: the bound holds by construction, and
            # 10,000 pending calls cost 8 tasks, not 10,000 tasks waiting on a semaphore
            workers = min(self.endpoint.concurrency, len(pending))
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            progress.close()
            await client.close()
        if stop:
            # an endpoint error explains more than the budget stops that followed it
            errors = [e for e in stop if not isinstance(e, BudgetExhausted)]
            raise (errors or stop)[0]

    async def _ask(self, client, spec: JudgeCall) -> CachedCall:
        messages = list(spec.messages() if callable(spec.messages) else spec.messages)
        extra = {} if spec.response_format is None else {"response_format": spec.response_format}
        max_tokens = spec.max_tokens or self.endpoint.max_tokens
        reply, tokens = "", 0
        for attempt in range(1, self.endpoint.max_parse_attempts + 1):
            if attempt > 1:
                self.budget.calls += 1  # a re-ask is a paid request too (never refused: _Budget)
            try:
                completion = await client.chat.completions.create(
                    model=self.endpoint.model, messages=messages, temperature=0.0,
                    max_tokens=max_tokens, **extra,
                )
            except Exception as error:
                fault = _endpoint_fault(error)
                if fault is None:
                    raise
                from moalign.credentials import redact_url_password

                # this call's failure, not the run's; attempts: the requests that were answered. The
                # text is cached and logged: any credentials of the endpoint's URL are masked
                return CachedCall(
                    score=None, reply=reply or None, attempts=attempt - 1, tokens=tokens,
                    error=redact_url_password(f"{self.endpoint.base_url}: {fault}, after "
                                              f"{self.endpoint.max_retries} retries"),
                )
            usage = getattr(completion, "usage", None)
            used = int(getattr(usage, "total_tokens", 0) or 0)
            tokens += used
            self.budget.tokens += used
            choices = getattr(completion, "choices", None) or []
            reply = (choices[0].message.content if choices and choices[0].message else None) or ""
            result = spec.parse(reply)
            if result is not None:
                score, value = (result, None) if spec.as_score else (None, result)
                return CachedCall(score=score, reply=reply, error=None, attempts=attempt,
                                  tokens=tokens, value=value)
            # re-ask in the same conversation, saying what was wrong
            messages = [
                *messages,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": spec.reask},
            ]
        return CachedCall(score=None, reply=reply, error=_UNPARSEABLE, attempts=attempt,
                          tokens=tokens)


class LLMJudge(LLMCaller):
    """The :class:`~moalign.judges.base.Judge` of an OpenAI-compatible endpoint.

    ``close()`` (or ``with LLMJudge(...) as judge:``) closes the call cache.
    """

    def __init__(
        self, dimensions: Sequence[str], endpoint: EndpointConfig, cache_path, templates_dir=None
    ):
        # checked before the templates are read and the cache opened: a failed start opens nothing
        self.check_endpoint(endpoint)
        self.dimensions = tuple(dimensions)
        self.templates = load_templates(self.dimensions, templates_dir)
        self._parsers = {
            d: functools.partial(parse_reply, template=t) for d, t in self.templates.items()
        }
        self._formats = {
            d: response_format(t.kind, endpoint.structured_output)
            for d, t in self.templates.items()
        }
        super().__init__(endpoint, cache_path)

    def score(self, task: TaskPrompt, response: str) -> Scores:
        return self.score_batch([(task, response)])[0]

    def score_batch(
        self, items: Sequence[tuple[TaskPrompt, str]], dimensions: Sequence[str] | None = None
    ) -> list[Scores]:
        """Scores per item on ``dimensions`` (default: all of the judge's); a dimension whose call
        failed (after its re-asks, or the endpoint's retries) is absent from the dict.

        Stops the run as :meth:`~LLMCaller.run_calls` does: no new call starts, the calls in flight
        finish and every answered call is in the cache, so a rerun repeats none of them.
        """
        wanted = self.dimensions if dimensions is None else tuple(dimensions)
        unknown = set(wanted) - set(self.dimensions)
        if unknown:
            raise ValueError(f"the judge has no template loaded for {sorted(unknown)}")
        items = list(items)
        jobs = [
            (index, dimension, self._spec(dimension, task, response))
            for index, (task, response) in enumerate(items)
            for dimension in wanted
        ]
        outcomes = self.run_calls([spec for _, _, spec in jobs])
        results: list[Scores] = [{} for _ in items]
        for index, dimension, spec in jobs:
            call = outcomes.get(spec.key)
            if call is not None and call.score is not None:
                results[index][dimension] = call.score
        return results

    def _spec(self, dimension: str, task: TaskPrompt, response: str) -> JudgeCall:
        template = self.templates[dimension]
        return JudgeCall(
            key=call_key(template.version, self.endpoint.model, task.prompt, response),
            dimension=dimension,
            template_version=template.version,
            messages=functools.partial(_user_message, template, task.prompt, response),
            parse=self._parsers[dimension],
            reask=_REASK[template.kind],
            what=f"{dimension} score",
            response_format=self._formats[dimension],
            as_score=True,
        )


def _user_message(template: JudgeTemplate, instruction: str, response: str) -> list[dict]:
    return [{"role": "user", "content": template.render(instruction, response)}]


_REASK = {
    "score_0_4": (
        'Your reply could not be read. Reply with one JSON object only: '
        '{"reason": "...", "score": <0-4>}'
    ),
    "pass_fail": (
        'Your reply could not be read. Reply with one JSON object only: '
        '{"reason": "...", "judgement": "Pass" or "Fail"}'
    ),
}
