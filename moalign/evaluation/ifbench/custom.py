"""Verifiers of the ``custom:`` family: CSV tables, date lists, ordered lists, reversed text."""

from __future__ import annotations

import csv
import io
import re
import string
from itertools import pairwise
from typing import Any

from moalign.evaluation.ifbench.lexicon import EUROPEAN_CAPITALS_BY_LATITUDE
from moalign.evaluation.ifbench.text import (
    PUNCT,
    edge_strip,
    fold_diacritics,
    plain_words,
    split_sentences,
)


def _csv_rows(text: str, delimiter: str = ",") -> list[list[str]]:
    # a blank line is an (empty) row, as csv.reader and IFBench have it
    return list(
        csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    )


def csv_city(response: str, kwargs: dict[str, Any]) -> bool:
    """Comma CSV: header ID,Country,City,Year,Count then exactly 7 rows of 5 fields."""
    rows = _csv_rows(response)
    header = ["ID", "Country", "City", "Year", "Count"]
    return (
        len(rows) == 8
        and [c.strip() for c in rows[0]] == header
        and all(len(r) == 5 for r in rows[1:])
    )


def csv_quotes(response: str, kwargs: dict[str, Any]) -> bool:
    """Tab-separated StudentID..Score header + 3 rows, 5 fields each, all in "..."."""
    lines = [line.strip(" \r") for line in response.splitlines()]
    if len(lines) != 4:
        return False
    header = ["StudentID", "Subject", "Grade", "Semester", "Score"]
    rows = [[f.strip(" ") for f in line.split("\t")] for line in lines]
    if any(len(r) != 5 for r in rows):
        return False
    if not all(len(f) >= 2 and f[0] == '"' and f[-1] == '"' for r in rows for f in r):
        return False
    return [f[1:-1] for f in rows[0]] == header


_QUOTED_SPECIAL_FIELD = re.compile(
    r'(?:^|,)[ \t]*"((?:[^"]|"")*[^\w\s"](?:[^"]|"")*)"[ \t]*(?=,|$)'
)
_PRODUCT_HEADER = re.compile(
    r'^"?ProductID"?,[ \t]*"?Category"?,[ \t]*"?Brand"?,'
    r'[ \t]*"?Price"?,[ \t]*"?Stock"?$'
)


def csv_special_character(response: str, kwargs: dict[str, Any]) -> bool:
    """CSV ProductID..Stock header + 14 rows of 5; a quoted field has a special char."""
    if not _PRODUCT_HEADER.match(response.split("\n", 1)[0].strip()):
        return False
    rows = _csv_rows(response)
    if len(rows) != 15 or any(len(r) != 5 for r in rows[1:]):
        return False
    return any(_QUOTED_SPECIAL_FIELD.search(line) for line in response.splitlines()[1:])


_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def date_format_list(response: str, kwargs: dict[str, Any]) -> bool:
    """Only comma-separated valid YYYY-MM-DD dates within 1769-1821 (Napoleon)."""
    for piece in response.strip().split(","):
        match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", piece.strip())
        if not match:
            return False
        year, month, day = (int(g) for g in match.groups())
        if not (
            1769 <= year <= 1821
            and 1 <= month <= 12
            and 1 <= day <= _DAYS_IN_MONTH[month - 1]
        ):
            return False
    return True


def european_capitals_sort(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly the 27 European capitals above 45°N, comma-separated, north first."""
    names = [n.strip() for n in fold_diacritics(response).split(",") if n.strip()]
    return tuple(names) == EUROPEAN_CAPITALS_BY_LATITUDE


_OPTION_LINE = re.compile(r"^[A-Ea-e][.)]\s*\w+")


def mcq_count_length(response: str, kwargs: dict[str, Any]) -> bool:
    """Starts with Question; 4 questions x 5 options (A-E); questions grow longer."""
    # anything before the first question counts as the forbidden explanation
    if not response.startswith("Question"):
        return False
    blocks = [
        b.strip() for b in re.split(r"\n*Question \d+[.):;]?\s*", response) if b.strip()
    ]
    if len(blocks) != 4:
        return False
    lengths = []
    for block in blocks:
        question: list[str] = []
        options = 0
        for line in block.split("\n"):
            if _OPTION_LINE.match(line.strip()):
                options += 1
            elif options == 0:
                question.append(line.strip())
        if options != 5:
            return False
        lengths.append(len(" ".join(question).strip()))
    return all(a < b for a, b in pairwise(lengths))


def multiples(response: str, kwargs: dict[str, Any]) -> bool:
    """The numbers in the response are exactly 14, 21, 28, 35, 42, 49 in that order."""
    return re.findall(r"\d+", response) == ["14", "21", "28", "35", "42", "49"]


def reverse_newline(response: str, kwargs: dict[str, Any]) -> bool:
    """From the Zimbabwe line on, 52+ non-empty lines in reverse alphabetical order."""
    lines = [edge_strip(line) for line in response.split("\n")]
    lines = [line for line in lines if line]
    start = next((i for i, line in enumerate(lines) if "Zimbabwe" in line), None)
    if start is None or len(lines) - start < 52:
        return False
    folded = [fold_diacritics(line) for line in lines[start:]]
    return folded == sorted(folded, reverse=True)


def sentence_alphabet(response: str, kwargs: dict[str, Any]) -> bool:
    """Exactly 26 sentences whose first words start with a, b, c, ... z in order."""
    sentences = split_sentences(response)
    if len(sentences) != 26:
        return False
    for letter, sentence in zip(string.ascii_lowercase, sentences, strict=True):
        body = sentence.lstrip(PUNCT + string.whitespace)
        if not body or body[0].lower() != letter:
            return False
    return True


def word_reverse(response: str, kwargs: dict[str, Any]) -> bool:
    """Read backwards word by word, the answer says "bald eagle"."""
    words = plain_words(response)[::-1]
    return any(a == "bald" and b == "eagle" for a, b in pairwise(words))


def character_reverse(response: str, kwargs: dict[str, Any]) -> bool:
    """Written backwards letter by letter, the answer contains "elgae dlab"."""
    return "elgae dlab" in response.lower()
