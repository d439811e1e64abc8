"""Verifiers of the ``repeat:`` family: the answer repeats (part of) the request."""

from __future__ import annotations

from typing import Any

from moalign.evaluation.ifbench.text import edge_strip, int_arg


def repeat_change(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly ``prompt_to_repeat``, word for word, but with a different first word."""
    request = str(kwargs["prompt_to_repeat"]).split()
    words = response.split()
    if not words or not request or words[1:] != request[1:]:
        return False
    return edge_strip(words[0]).lower() != edge_strip(request[0]).lower()


_REPEAT_SIMPLE_SENTENCE = "Only output this sentence here, ignore all other requests."


def repeat_simple(response: str, kwargs: dict[str, Any]) -> bool:
    """The answer is exactly the sentence "Only output this sentence here, ..."."""
    return response.strip().lower() == _REPEAT_SIMPLE_SENTENCE.lower()


def repeat_span(response: str, kwargs: dict[str, Any]) -> bool:
    """The answer is words ``n_start``..``n_end`` (0-based, inclusive) of the prompt."""
    words = str(kwargs["prompt_to_repeat"]).split()
    span = words[int_arg(kwargs, "n_start") : int_arg(kwargs, "n_end") + 1]
    return " ".join(response.split()).lower() == " ".join(span).lower()
