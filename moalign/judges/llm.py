"""An LLM judge behind any OpenAI-compatible chat endpoint, with the AMoPO Appendix C templates.

One call per (response, dimension): the dimension's template is filled with the instruction and the
response, sent as a user message at temperature 0, and the reply is parsed strictly (a JSON object
with ``score`` 0-4, or ``judgement`` Pass/Fail). A reply that does not parse is asked again, up to
``max_parse_attempts``; after that the failure is recorded and that dimension stays unscored (the
annotation counts it and the validation gate quarantines the pair) instead of stopping the run.

Transport: one ``aiohttp`` session per batch and a thin chat-completions call (JSON in, JSON out:
:class:`_ChatTransport`), with the ``openai`` SDK's retry rules copied exactly (:func:`should_retry`,
:func:`retry_delay`): 408/409/429/5xx, timeouts, connection errors and a 200 whose body cannot be
used (not JSON, no choices, no message content) are retried with exponential backoff and jitter,
``Retry-After``/``retry-after-ms`` honoured. Not the SDK itself: its per-call CPU (4-6 ms, its
request transform, pydantic models and httpx's pool bookkeeping; ``benchmarks/README.md``,
``judge.py``) capped one event loop near 200 calls/s. A call whose request still fails after those
retries is that call's failure, named with the endpoint and counted by kind
(:meth:`LLMCaller.failure_summary`, in the annotate stage's ``stats.json``), and the other calls go
on; an error of the request or the setup (another 4xx: a bad key, a wrong model; raised as the
SDK's error class) stops the run, as does an endpoint that fails many calls in a row
(:class:`EndpointDown`). moalign adds what the SDK lacks for paid annotation runs: bounded
concurrency, a per-run budget (calls and tokens) that stops cleanly, and the SQLite cache
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
import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import time
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


def _read_completion(content_type: str, body: bytes) -> tuple[dict | None, str | None]:
    """A 2xx chat-completion body: ``(completion, None)``, or ``(None, why it cannot be used)``."""
    try:
        payload = json.loads(body)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        media_type = content_type.split(";")[0].strip() or "untyped"
        if media_type.endswith("json"):
            return None, f"malformed JSON body ({error})"
        return None, f"a {media_type} body, not JSON"
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices:
        return None, "no choices in the completion"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return None, "no message content in the completion"
    return payload, None


# The openai SDK's retry constants (openai/_constants.py), so that the judge backs off exactly as it
# did when the SDK made its calls
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER_DELAY = 120.0


def retry_after(headers: Any) -> float | None:
    """The server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date) in seconds, or
    None; the SDK's ``_parse_retry_after_header``."""
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in ("inf", "+inf", "infinity", "+infinity"):
            return MAX_RETRY_AFTER_DELAY + 1  # an overflowing number: too long, not a wait of 0
        return delay / divisor
    try:
        date = email.utils.parsedate_tz(headers.get("retry-after"))
        if date is None:
            return None
        return float(email.utils.mktime_tz(date) - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def retry_delay(retries_taken: int, headers: Any = None) -> float:
    """Seconds to wait before retry ``retries_taken + 1``: the server's ``Retry-After`` when it is in
    (0, 120] s, else 0.5 s doubled per retry up to 8 s, less a random 0-25 % (the SDK's
    ``_calculate_retry_timeout``)."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER_DELAY:
        return wait
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY)
    return max(backoff * (1 - 0.25 * random.random()), 0.0)


def _transient(status: int) -> bool:
    """A status that is the endpoint's passing fault (the call fails, the run goes on)."""
    return status in (408, 409, 429) or status >= 500


def should_retry(status: int, headers: Any) -> bool:
    """Whether a non-2xx reply is retried: 408, 409, 429 and 5xx, unless ``Retry-After`` asks for
    more than two minutes; ``x-should-retry`` overrides (the SDK's ``_should_retry``)."""
    wait = retry_after(headers)
    if wait is not None and math.isfinite(wait) and wait > MAX_RETRY_AFTER_DELAY:
        return False
    verdict = headers.get("x-should-retry")
    if verdict in ("true", "false"):
        return verdict == "true"
    return _transient(status)


class _EndpointFault(Exception):
    """A request still failing after its retries, for a fault of the endpoint; the text says what
    went wrong (``HTTP 500``, ``DecodingError: malformed JSON body (...)``, ``SocketTimeoutError:
    ...``)."""


def _status_error(status: int, headers: Any, body: bytes, url: str) -> Exception:
    """The openai SDK's error for a refused request (401: ``openai.AuthenticationError``...), with the
    SDK's message, so that callers catching those classes keep working."""
    import httpx2
    import openai

    text = body.decode("utf-8", "replace").strip()
    message, data = f"Error code: {status}", text
    try:
        payload = json.loads(text)
    except ValueError:
        pass
    else:
        data = payload.get("error", payload) if isinstance(payload, dict) else payload
        detail = data.get("message") if isinstance(data, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    classes = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
               404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
               429: openai.RateLimitError}
    kind = classes.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    response = httpx2.Response(status, headers=list(headers.items()), content=body,
                               request=httpx2.Request("POST", url))
    return kind(message, response=response, body=data)


class _ChatTransport:
    """Chat completions over one ``aiohttp`` session: keep-alive connections, at most ``concurrency``
    of them, made per batch (they belong to its event loop) and closed with :meth:`close`.

    aiohttp rather than the SDK or httpx: measured against the fake server at concurrency 64 on
    this 2-core machine, a call costs about 0.5 ms of client CPU through aiohttp (its C parser),
    2 ms through httpx2 and 4-6 ms through the SDK, which capped the judge at 55 % of a 320 calls/s
    endpoint. The retry rules are the SDK's, copied (:func:`should_retry`, :func:`retry_delay`).
    """

    def __init__(self, endpoint: EndpointConfig):
        import aiohttp
        import yarl

        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        url = yarl.URL(endpoint.base_url.rstrip("/") + "/chat/completions")
        self.url = url
        self.max_retries = endpoint.max_retries
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if not (url.user or url.password):  # credentials in the URL are sent as basic auth, as httpx did
            self.headers["Authorization"] = f"Bearer {key or 'not-needed'}"  # local servers ignore it
        t = endpoint.timeout_s
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=endpoint.concurrency, ssl=_shared_tls_context()),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
            trust_env=True,  # HTTP(S)_PROXY and NO_PROXY, as the SDK's httpx honoured them
        )
        # what a request can raise that is the endpoint's or the network's fault, retried
        self.faults: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)

    async def close(self) -> None:
        await self.session.close()

    async def complete(self, request: dict) -> dict:
        """The completion of ``request`` (the JSON body), after the SDK's retries. Raises
        :class:`_EndpointFault` when the endpoint still fails, the SDK's status error when it refuses
        the request (a 4xx other than 408/409/429)."""
        data = json.dumps(request).encode()
        for retries_taken in range(self.max_retries + 1):
            headers = None  # a reply's headers: only a status error's Retry-After is honoured (the SDK's)
            try:
                async with self.session.post(self.url, data=data, headers=self.headers) as response:
                    body = await response.read()
            except self.faults as error:
                fault = f"{type(error).__name__}: {error}".removesuffix(": ")
            else:
                if response.status < 400:
                    completion, why = _read_completion(response.headers.get("Content-Type", ""), body)
                    if completion is not None:
                        return completion
                    fault = f"DecodingError: {why}"  # the name httpx gave it: cached errors read alike
                elif not should_retry(response.status, response.headers):
                    if _transient(response.status):
                        raise _EndpointFault(f"HTTP {response.status}")
                    from moalign.credentials import redact_url_password

                    raise _status_error(response.status, response.headers, body,
                                        redact_url_password(str(self.url)))
                else:
                    fault, headers = f"HTTP {response.status}", response.headers
            if retries_taken == self.max_retries:
                raise _EndpointFault(fault)
            delay = retry_delay(retries_taken, headers)
            logger.debug("retrying a judge request in %.2f s (retry %d of %d): %s",
                         delay, retries_taken + 1, self.max_retries, fault)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last try returns or raises")


#: a failed call's kind, for the stage summary: the first pattern its error's fault text matches.
#: The text, not the exception, so that a failure taken from the cache (its error string) is named
#: the same way as one that happened in this run.
_FAILURE_KINDS = (
    ("malformed_json", re.compile(r"malformed JSON body")),
    ("wrong_content_type", re.compile(r"body, not JSON")),
    ("empty_choices", re.compile(r"no choices in the completion")),
    ("missing_content", re.compile(r"no message content")),
    ("timeout", re.compile(r"timeout|timed out", re.IGNORECASE)),
    # httpx's names (errors cached before moalign used aiohttp) and aiohttp's
    ("connection_reset", re.compile(r"RemoteProtocolError|ReadError|peer closed|reset|ClientPayloadError"
                                    r"|payload is not completed|ServerDisconnected", re.IGNORECASE)),
    ("connection_error", re.compile(r"ConnectError|ConnectorError|connection error|refused|Cannot connect",
                                    re.IGNORECASE)),
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

    A session is made per batch (its connections belong to that batch's event loop), and making a
    context loads the CA bundle: 40-70 ms on a small machine, a per-batch cost as large as a few
    calls. httpx's, so that the judge trusts what it trusted through the SDK (certifi's bundle,
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``); True (aiohttp's default) where httpx2 is missing.
    """
    try:
        import httpx2  # installed with the openai SDK
    except ImportError:
        return True
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
    the cache at once (committed by the cache's writer thread, every one before the batch returns).
    ``close()`` (or ``with ... as judge:``) closes the cache.
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

    def _client(self) -> _ChatTransport:
        return _ChatTransport(self.endpoint)

    def run_calls(self, specs: Sequence[JudgeCall]) -> dict[str, CachedCall]:
        """The outcome of every spec by key (``.result`` is None for a failure: no parseable reply
        after the re-asks, or the endpoint's fault after the retries, which ``.error`` names).

        Raises :class:`BudgetExhausted` once the budget is spent, :class:`EndpointDown` when many
        calls in a row fail, and the SDK's error for a request the endpoint refuses (a 4xx other
        than 408/409/429, as the SDK's error class); then no new call starts, the calls in flight finish and every answered
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
                    self.cache.put_soon(spec.key, dimension=spec.dimension, model=self.endpoint.model,
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
            self.cache.flush()  # every answer committed before the batch returns or raises
        if stop:
            # an endpoint error explains more than the budget stops that followed it
            errors = [e for e in stop if not isinstance(e, BudgetExhausted)]
            raise (errors or stop)[0]

    async def _ask(self, client: _ChatTransport, spec: JudgeCall) -> CachedCall:
        messages = list(spec.messages() if callable(spec.messages) else spec.messages)
        request: dict[str, Any] = {"model": self.endpoint.model, "temperature": 0.0,
                                   "max_tokens": spec.max_tokens or self.endpoint.max_tokens}
        if spec.response_format is not None:
            request["response_format"] = spec.response_format
        reply, tokens = "", 0
        for attempt in range(1, self.endpoint.max_parse_attempts + 1):
            if attempt > 1:
                self.budget.calls += 1  # a re-ask is a paid request too (never refused: _Budget)
            try:
                completion = await client.complete({**request, "messages": messages})
            except _EndpointFault as fault:
                from moalign.credentials import redact_url_password

                # this call's failure, not the run's; attempts: the requests that were answered. The
                # text is cached and logged: any credentials of the endpoint's URL are masked
                return CachedCall(
                    score=None, reply=reply or None, attempts=attempt - 1, tokens=tokens,
                    error=redact_url_password(f"{self.endpoint.base_url}: {fault}, after "
                                              f"{self.endpoint.max_retries} retries"),
                )
            usage = completion.get("usage")
            used = usage.get("total_tokens") if isinstance(usage, dict) else None
            used = used if isinstance(used, int) and not isinstance(used, bool) else 0
            tokens += used
            self.budget.tokens += used
            reply = completion["choices"][0]["message"]["content"]  # a str: _read_completion checked
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
