"""Text helpers the verifiers share: a sentence splitter and tokenizer standing in for NLTK's,
word counts, emoji and syllables, and reading whole-number arguments."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any

PUNCT = string.punctuation
_REMOVE_PUNCT = str.maketrans("", "", string.punctuation)


def no_punct(text: str) -> str:
    return text.translate(_REMOVE_PUNCT)


def edge_strip(token: str) -> str:
    return token.strip(PUNCT + " ")


def plain_words(text: str) -> list[str]:
    """Lowercased whitespace words with ASCII punctuation deleted."""
    return no_punct(text.lower()).split()


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def count_whole_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


# Abbreviations after which a period rarely ends a sentence; punkt learns such a list
# from data, this one is the handful that turns up in model answers.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st vs etc cf al fig figs eq eqs no nos vol approx dept
    est inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen
    col lt sgt rev ph
    """.split()
)
_BOUNDARY = re.compile(r"([.!?\u203d]+)([\"'\u201d\u2019)\]]*)(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")


def _ends_sentence(block: str, match: re.Match[str]) -> bool:
    marks = match.group(1)
    if any(m in marks for m in "!?\u203d"):
        return True
    following = block[match.end() :].lstrip()
    if len(marks) > 1:  # an ellipsis only ends a sentence when a new one visibly starts
        return not following[:1].islower()
    word_start = match.start()
    while word_start > 0 and not block[word_start - 1].isspace():
        word_start -= 1
    word = block[word_start : match.start()].lstrip("([\"'\u201c\u2018")
    if not word or not following:
        return True
    lowered = word.lower()
    # "e.g." and "U.S." reach here as "e.g" and "u.s"
    if lowered in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", lowered):
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return False
    # "1. " at the start of a line numbers a list item rather than ending a sentence
    line_prefix = block[:word_start].rsplit("\n", 1)[-1]
    return not (word.isdigit() and len(word) <= 3 and not line_prefix.strip())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: a stand-in for the NLTK punkt splitter IFBench uses.

    A sentence ends at ``.``, ``!``, ``?`` or ``‽`` (plus closing quotes/brackets)
    followed by whitespace, except after a known abbreviation, an initial, a list number
    that starts a line, or an ellipsis followed by lowercase. Like punkt, a single line
    break does not end a sentence (the "stairs" and "each word on a new line" answers
    rely on that); unlike punkt, a blank line does, so a heading or a bullet block
    without final punctuation does not merge into the next sentence.
    """
    sentences: list[str] = []
    for block in _PARAGRAPH_BREAK.split(text):
        start = 0
        for match in _BOUNDARY.finditer(block):
            if _ends_sentence(block, match):
                piece = block[start : match.end()].strip()
                if piece:
                    sentences.append(piece)
                start = match.end()
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


_TOKEN = re.compile(r"\w+(?:[-'\u2019.]\w+)*|[^\w\s]")
_CLITIC = re.compile(
    r"^(.+?)((?:n['\u2019]t)|(?:['\u2019](?:s|re|ve|ll|d|m)))$", re.IGNORECASE
)


def tokenize(text: str) -> list[str]:
    """Word and punctuation tokens, clitics split off as Treebank does (it's: it 's)."""
    out: list[str] = []
    for token in _TOKEN.findall(text):
        clitic = _CLITIC.match(token)
        out.extend(clitic.groups() if clitic else (token,))
    return out


def word_tokenize(text: str) -> list[str]:
    return [t for t in tokenize(text) if any(ch.isalnum() for ch in t)]


def fold_diacritics(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


_EMOJI_RANGES = (
    (0x1F000, 0x1FAFF),
    (0x2600, 0x27BF),
    (0x2B05, 0x2B07),
    (0x2B1B, 0x2B1C),
    (0x2B50, 0x2B50),
    (0x2B55, 0x2B55),
    (0x231A, 0x231B),
    (0x2328, 0x2328),
    (0x23CF, 0x23CF),
    (0x23E9, 0x23F3),
    (0x23F8, 0x23FA),
    (0x2194, 0x2199),
    (0x21A9, 0x21AA),
    (0x25AA, 0x25AB),
    (0x25B6, 0x25B6),
    (0x25C0, 0x25C0),
    (0x25FB, 0x25FE),
    (0x2934, 0x2935),
    (0x3030, 0x3030),
    (0x303D, 0x303D),
    (0x3297, 0x3297),
    (0x3299, 0x3299),
    (0x00A9, 0x00A9),
    (0x00AE, 0x00AE),
    (0x203C, 0x203C),
    (0x2049, 0x2049),
    (0x2122, 0x2122),
    (0x2139, 0x2139),
    (0x24C2, 0x24C2),
    (0x20E3, 0x20E3),
)
# joiners, variation selectors and tag characters trail or glue emoji without being one
_EMOJI_GLUE = "\u200d\ufe0e\ufe0f" + "".join(chr(c) for c in range(0xE0020, 0xE0080))


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _EMOJI_RANGES)


def ends_with_emoji(text: str) -> bool:
    core = text.rstrip(PUNCT + _EMOJI_GLUE + string.whitespace)
    return bool(core) and _is_emoji(core[-1])


def starts_with_emoji(text: str) -> bool:
    core = text.lstrip(PUNCT + string.whitespace)
    return bool(core) and _is_emoji(core[0])


def syllable_count(word: str) -> int:
    """Syllables from vowel groups, silent final e and -es/-ed (syllapy stand-in)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    count = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not re.search(r"[^aeiouy]le$", w) and count > 1:
        count -= 1
    elif re.search(r"[^aeiouytd]ed$", w) and count > 1:
        count -= 1
    elif (
        re.search(r"[^aeiouy]es$", w)
        and not re.search(r"(?:[sxzcg]|ch|sh)es$", w)
        and count > 1
    ):
        count -= 1  # makes, likes; but boxes, places, changes keep the syllable
    return max(count, 1)


def int_arg(kwargs: Mapping[str, Any], name: str) -> int:
    # 8.0 may stand for 8; a fractional count is a data error, not a rounding case
    value = kwargs[name]
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"argument {name!r} must be a whole number, got {value!r}")
    return int(value)
