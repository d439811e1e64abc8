"""Verifiers of the ``count:`` family: conjunctions, keywords, numbers, names, pronouns, words."""

from __future__ import annotations

import re
from typing import Any

from moalign.evaluation.ifbench.lexicon import CONJUNCTIONS, PERSON_NAMES, PRONOUNS
from moalign.evaluation.ifbench.text import (
    count_whole_word,
    count_words,
    edge_strip,
    int_arg,
    no_punct,
    tokenize,
)


def conjunctions(response: str, kwargs: dict[str, Any]) -> bool:
    """At least ``small_n`` different conjunctions from and/but/for/nor/or/so/yet."""
    used = {
        w
        for w in (edge_strip(t).lower() for t in response.split())
        if w in CONJUNCTIONS
    }
    return len(used) >= int_arg(kwargs, "small_n")


KEYWORD_TIMES = (
    ("keyword1", 1),
    ("keyword2", 2),
    ("keyword3", 3),
    ("keyword4", 5),
    ("keyword5", 7),
)


def keywords_multiple(response: str, kwargs: dict[str, Any]) -> bool:
    """keyword1..5 occur exactly 1, 2, 3, 5, 7 times as whole words (any case)."""
    return all(
        count_whole_word(response, str(kwargs[name]).strip()) == times
        for name, times in KEYWORD_TIMES
    )


def numbers(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly ``N`` digit runs once punctuation is deleted (3.14, 1,000 count once)."""
    return len(re.findall(r"\d+", no_punct(response))) == int_arg(kwargs, "N")


def person_names(response: str, kwargs: dict[str, Any]) -> bool:
    """At least ``N`` different names of the prompt's 50, as case-sensitive words."""
    found = sum(1 for name in PERSON_NAMES if re.search(rf"\b{name}\b", response))
    return found >= int_arg(kwargs, "N")


def pronouns(response: str, kwargs: dict[str, Any]) -> bool:
    """At least ``N`` pronoun tokens (personal, demonstrative, wh-, indefinite...)."""
    # "she/her/hers" is a common way to write pronoun sets; each member counts
    tokens = tokenize(response.replace("/", " ").lower())
    return sum(1 for t in tokens if t in PRONOUNS) >= int_arg(kwargs, "N")


def punctuation(response: str, kwargs: dict[str, Any]) -> bool:
    """An interrobang (?!, !? or ‽) and, besides it, each of . , ! ? ; : as well."""
    for interrobang in ("?!", "!?"):
        if interrobang in response:
            rest = response.replace(interrobang, "", 1)
            break
    else:
        if "\u203d" not in response:
            return False
        rest = response
    return set(".,!?;:") <= set(rest)


def unique_word_count(response: str, kwargs: dict[str, Any]) -> bool:
    """At least ``N`` distinct words (lowercased, edge punctuation stripped)."""
    words = {w for w in (edge_strip(t.lower()) for t in response.split()) if w}
    return len(words) >= int_arg(kwargs, "N")


def word_count_range(response: str, kwargs: dict[str, Any]) -> bool:
    """Between ``min_words`` and ``max_words`` (inclusive) runs of \\w characters."""
    return (
        int_arg(kwargs, "min_words") <= count_words(response) <= int_arg(kwargs, "max_words")
    )


_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def words_japanese(response: str, kwargs: dict[str, Any]) -> bool:
    """Every ``N``-th whitespace word has kana or kanji (bare numbers are exempt)."""
    n = int_arg(kwargs, "N")
    if n < 1:
        raise ValueError(f"argument 'N' must be at least 1, got {n}")
    for position, token in enumerate(response.split(), start=1):
        word = edge_strip(token)
        if (
            position % n == 0
            and word
            and not word.isdigit()
            and not _JAPANESE.search(word)
        ):
            return False
    return True
