"""Verifiers of the ``sentence:`` family: how sentences grow, and what a given one holds."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from moalign.evaluation.ifbench.text import (
    PUNCT,
    count_whole_word,
    int_arg,
    no_punct,
    split_sentences,
)


def _longest_alliteration(sentence: str) -> int:
    initials = [w[0] for w in (t.lstrip(PUNCT).lower() for t in sentence.split()) if w]
    longest = run = 1 if initials else 0
    for prev, cur in pairwise(initials):
        run = run + 1 if cur == prev else 1
        longest = max(longest, run)
    return longest if longest >= 2 else 0  # a lone word is not an alliterative sequence


def alliteration_increment(response: str, kwargs: dict[str, Any]) -> bool:
    """Each sentence's longest alliterative run is longer than the previous one's."""
    runs = [_longest_alliteration(s) for s in split_sentences(response)]
    return bool(runs) and all(b > a for a, b in pairwise(runs))


def sentence_increment(response: str, kwargs: dict[str, Any]) -> bool:
    """Each sentence has exactly ``small_n`` more words than the one before."""
    counts = [len(no_punct(s).split()) for s in split_sentences(response)]
    step = int_arg(kwargs, "small_n")
    return bool(counts) and all(b - a == step for a, b in pairwise(counts))


def sentence_keyword(response: str, kwargs: dict[str, Any]) -> bool:
    """The ``N``-th sentence contains ``word`` as a whole word (case-insensitive)."""
    sentences = split_sentences(response)
    n = int_arg(kwargs, "N")
    return (
        1 <= n <= len(sentences)
        and count_whole_word(sentences[n - 1], str(kwargs["word"])) > 0
    )
