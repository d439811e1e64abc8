"""Verifiers of the ``ratio:`` family: trigram overlap, sentence-type balance, stop-word share."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from moalign.evaluation.ifbench.lexicon import STOPWORDS
from moalign.evaluation.ifbench.text import plain_words, split_sentences, tokenize


def _trigrams(text: str) -> set[tuple[str, str, str]]:
    tokens = tokenize(text)
    return set(zip(tokens, tokens[1:], tokens[2:], strict=False))


def trigram_overlap(response: str, kwargs: dict[str, Any]) -> bool:
    """Share of the answer's trigrams in ``reference_text`` is ``percentage`` ± 2."""
    mine = _trigrams(response)
    if not mine:
        return False
    shared = 100 * len(mine & _trigrams(str(kwargs["reference_text"]))) / len(mine)
    return abs(shared - float(kwargs["percentage"])) <= 2 + 1e-9


def _sentence_endings(text: str) -> Counter[str]:
    return Counter(s.rstrip("\"'\u201d\u2019)]")[-1:] for s in split_sentences(text))


def sentence_balance(response: str, kwargs: dict[str, Any]) -> bool:
    """Equal numbers (at least one) of . and ? and ! sentences."""
    ends = _sentence_endings(response)
    return ends["."] == ends["?"] == ends["!"] >= 1


def sentence_type(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly twice as many . sentences as ? sentences, with at least one question."""
    ends = _sentence_endings(response)
    return ends["?"] >= 1 and ends["."] == 2 * ends["?"]


def sentence_words(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly three sentences of equal character length with no word used twice."""
    sentences = split_sentences(response)
    if len(sentences) != 3 or len({len(s) for s in sentences}) != 1:
        return False
    words = plain_words(" ".join(sentences))
    return len(words) == len(set(words))


def stop_words(response: str, kwargs: dict[str, Any]) -> bool:
    """Stop words are at most ``percentage`` % of the words (no words: fails)."""
    tokens = re.findall(r"\w+", response)
    if not tokens:
        return False
    stop = sum(1 for t in tokens if t.lower() in STOPWORDS)
    return 100 * stop / len(tokens) <= float(kwargs["percentage"])
