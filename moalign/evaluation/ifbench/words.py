"""Verifiers of the ``words:`` family: letters, syllables, lengths and positions of words."""

from __future__ import annotations

import re
import string
from collections import Counter
from itertools import pairwise
from typing import Any

from moalign.evaluation.ifbench.lexicon import is_verb_form
from moalign.evaluation.ifbench.text import (
    edge_strip,
    int_arg,
    no_punct,
    plain_words,
    split_sentences,
    syllable_count,
    tokenize,
    word_tokenize,
)


_PRIMES = frozenset({2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47})


def _is_prime(n: int) -> bool:
    if n < 50:
        return n in _PRIMES
    return all(n % d for d in range(2, int(n**0.5) + 1))


def alphabet_words(response: str, kwargs: dict[str, Any]) -> bool:
    """Consecutive words start with consecutive letters, wrapping from z to a."""
    initials = [w[0].lower() for w in no_punct(response).split()]
    if not initials or initials[0] not in string.ascii_lowercase:
        return False
    for prev, cur in pairwise(initials):
        expected = string.ascii_lowercase[(string.ascii_lowercase.index(prev) + 1) % 26]
        if cur != expected:
            return False
    return True


_CONSONANT_PAIR = re.compile(r"[bcdfghjklmnpqrstvwxyz]{2}")


def consonant_clusters(response: str, kwargs: dict[str, Any]) -> bool:
    """Every word (token with a letter) has two adjacent consonants."""
    words = [t.lower() for t in response.split() if any(ch.isalpha() for ch in t)]
    return bool(words) and all(_CONSONANT_PAIR.search(w) for w in words)


def keyword_specific_position(response: str, kwargs: dict[str, Any]) -> bool:
    """``keyword`` is word ``m`` of sentence ``n`` (1-based, any case)."""
    sentences = split_sentences(response)
    n, m = int_arg(kwargs, "n"), int_arg(kwargs, "m")
    if not 1 <= n <= len(sentences):
        return False
    words = word_tokenize(sentences[n - 1])
    return (
        1 <= m <= len(words)
        and words[m - 1].lower() == str(kwargs["keyword"]).strip().lower()
    )


def last_word_first(response: str, kwargs: dict[str, Any]) -> bool:
    """The last word of each sentence is the first word of the next."""
    sentences = split_sentences(response)
    for current, following in pairwise(sentences):
        last = current.split()[-1:]
        first = following.split()[:1]
        if not last or not first:
            return False
        if edge_strip(last[0]).lower() != edge_strip(first[0]).lower():
            return False
    return bool(sentences)


def no_consecutive_first_letter(response: str, kwargs: dict[str, Any]) -> bool:
    """No two consecutive words start with the same letter (case-insensitive)."""
    initials = [w[0] for w in plain_words(response)]
    return all(a != b for a, b in pairwise(initials))


def odd_even_syllables(response: str, kwargs: dict[str, Any]) -> bool:
    """Consecutive words alternate between odd and even syllable counts."""
    parities = [
        syllable_count(w) % 2
        for w in plain_words(response)
        if any(ch.isalpha() for ch in w)
    ]
    return all(a != b for a, b in pairwise(parities))


def palindromes(response: str, kwargs: dict[str, Any]) -> bool:
    """At least 10 words (occurrences) that are palindromes of 5+ characters."""
    return sum(1 for w in plain_words(response) if len(w) >= 5 and w == w[::-1]) >= 10


def paragraph_last_first(response: str, kwargs: dict[str, Any]) -> bool:
    """Every paragraph (non-blank line) ends with the word it starts with."""
    paragraphs = [line.split() for line in response.lower().split("\n") if line.strip()]
    return bool(paragraphs) and all(
        edge_strip(p[0]) == edge_strip(p[-1]) for p in paragraphs
    )


def prime_lengths(response: str, kwargs: dict[str, Any]) -> bool:
    """Every word's length (punctuation deleted) is a prime number."""
    return all(_is_prime(len(w)) for w in no_punct(response).split())


def word_repeats(response: str, kwargs: dict[str, Any]) -> bool:
    """No word occurs more than ``small_n`` times (lowercased, punctuation deleted)."""
    counts = Counter(plain_words(response))
    return max(counts.values(), default=0) <= int_arg(kwargs, "small_n")


def start_verb(response: str, kwargs: dict[str, Any]) -> bool:
    """The first token is a verb form (lexicon and inflection check, no tagger)."""
    tokens = tokenize(response)
    return bool(tokens) and is_verb_form(tokens[0])


def three_vowels(response: str, kwargs: dict[str, Any]) -> bool:
    """One paragraph (no line break) using at most three of the vowels a e i o u."""
    text = response.strip()
    return "\n" not in text and len(set(text.lower()) & set("aeiou")) <= 3


def words_position(response: str, kwargs: dict[str, Any]) -> bool:
    """The second and the second-to-last words are both ``keyword`` (any case)."""
    words = [w.lower() for w in word_tokenize(response)]
    keyword = str(kwargs["keyword"]).strip().lower()
    return len(words) >= 2 and words[1] == words[-2] == keyword
