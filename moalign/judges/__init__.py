"""Judges score responses per dimension; :func:`open_judge` builds the one ``params.yaml`` names.

The same endpoint also judges pairs (win rates with position swap) and rates single answers on
MT-bench's scale: :func:`open_judges` opens all three on one endpoint and one call cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from moalign.judges.base import Judge, Scores, score_many

if TYPE_CHECKING:
    from moalign.judges.llm import EndpointConfig
    from moalign.judges.pairwise import LLMPairwiseJudge, LLMRater


def make_judge(name: str, dimensions: Sequence[str]) -> Judge:
    """The programmatic judge (the only one that needs no endpoint); see :func:`open_judge` for
    all."""
    if name == "programmatic":
        from moalign.judges.programmatic import ProgrammaticJudge

        return ProgrammaticJudge(dimensions)
    raise ValueError(f"unknown judge {name!r}; allowed: programmatic (LLM judges: open_judge)")


@contextlib.contextmanager
def open_endpoint(params) -> Iterator[EndpointConfig]:
    """The LLM endpoint of ``params`` (moalign.config.JudgeParams, backend openai_compatible or
    local_server), with the local server started before and stopped after (local_server)."""
    from dataclasses import replace

    from moalign.judges.llm import EndpointConfig

    if params.backend not in ("openai_compatible", "local_server"):
        raise ValueError(
            f"judge.backend {params.backend!r} has no LLM endpoint; "
            "use openai_compatible or local_server"
        )
    endpoint = EndpointConfig(
        base_url=params.base_url or "", model=params.model or "", api_key_env=params.api_key_env,
        concurrency=params.concurrency, max_retries=params.max_retries, timeout_s=params.timeout_s,
        max_parse_attempts=params.max_parse_attempts, max_tokens=params.max_reply_tokens,
        max_calls=params.max_calls, max_total_tokens=params.max_total_tokens,
        structured_output="openai" if params.structured_output else None,
    )
    if params.backend != "local_server":
        yield endpoint
        return
    from moalign.judges.server import local_judge_server

    server = params.server
    with local_judge_server(
        server.model_path, server.port, server.n_ctx, server.startup_timeout_s
    ) as (url, model):
        structured = "llama_cpp" if params.structured_output in (None, True) else None
        yield replace(
            endpoint, base_url=url, model=model, api_key_env=None, structured_output=structured
        )


@contextlib.contextmanager
def open_judge(params, dimensions: Sequence[str]) -> Iterator[Judge]:
    """The judge of ``params`` (moalign.config.JudgeParams), with whatever it runs on (the local
    server, the call cache) started before and stopped after."""
    with open_judges(params, dimensions) as judges:
        yield judges.scorer


class JudgeSet:
    """Every judge one evaluation needs, on one endpoint (one local server start, one cache file):
    ``scorer`` scores per dimension; :meth:`pairwise` and :meth:`rater` open the pairwise judge and
    the MT-bench rater on first use, and the set closes them all. Built by :func:`open_judges`."""

    def __init__(self, params, scorer: Judge, endpoint: EndpointConfig | None, stack: contextlib.ExitStack):
        self.params, self.scorer, self.endpoint, self._stack = params, scorer, endpoint, stack
        self._opened: dict[str, object] = {}

    @property
    def model(self) -> str:
        """The judge's name in reports: the endpoint's model, or ``programmatic``."""
        return self.endpoint.model if self.endpoint is not None else "programmatic"

    def _need_endpoint(self, what: str) -> EndpointConfig:
        if self.endpoint is None:
            raise ValueError(f"{what} needs an LLM judge: set judge.backend to openai_compatible or local_server")
        return self.endpoint

    def pairwise(self, template: str = "amopo_winrate") -> LLMPairwiseJudge:
        if f"pairwise:{template}" not in self._opened:
            from moalign.judges.pairwise import LLMPairwiseJudge

            endpoint = self._need_endpoint(f"the {template} pairwise judge")
            self._opened[f"pairwise:{template}"] = self._stack.enter_context(
                LLMPairwiseJudge(endpoint, self.params.cache_path, template)
            )
        return self._opened[f"pairwise:{template}"]

    def rater(self) -> LLMRater:
        if "rater" not in self._opened:
            from moalign.judges.pairwise import LLMRater

            endpoint = self._need_endpoint("MT-bench rating")
            self._opened["rater"] = self._stack.enter_context(LLMRater(endpoint, self.params.cache_path))
        return self._opened["rater"]


@contextlib.contextmanager
def open_judges(params, dimensions: Sequence[str]) -> Iterator[JudgeSet]:
    """The :class:`JudgeSet` of ``params`` (moalign.config.JudgeParams); with an LLM backend the
    endpoint (the local server) is started once for all of them."""
    with contextlib.ExitStack() as stack:
        if params.backend == "programmatic":
            yield JudgeSet(params, make_judge("programmatic", dimensions), None, stack)
            return
        from moalign.judges.llm import LLMJudge

        endpoint = stack.enter_context(open_endpoint(params))
        scorer = stack.enter_context(LLMJudge(dimensions, endpoint, params.cache_path, params.templates_dir))
        yield JudgeSet(params, scorer, endpoint, stack)


__all__ = [
    "Judge", "JudgeSet", "Scores", "make_judge", "open_endpoint", "open_judge", "open_judges", "score_many",
]
