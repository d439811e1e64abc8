"""Verifiers of the ``format:`` family: line layout, bullets, brackets, quotes, templates, case."""

from __future__ import annotations

import re
import string
from itertools import pairwise
from typing import Any

from moalign.evaluation.ifbench.lexicon import MINOR_TITLE_WORDS
from moalign.evaluation.ifbench.text import (
    PUNCT,
    ends_with_emoji,
    no_punct,
    split_sentences,
    starts_with_emoji,
)


def emoji_sentences(response: str, kwargs: dict[str, Any]) -> bool:
    """Every sentence ends with an emoji (one after the full stop counts too)."""
    sentences = split_sentences(response)
    if not sentences:
        return False
    for i, sentence in enumerate(sentences):
        if ends_with_emoji(sentence):
            continue
        # "Done. 😀 Next" splits as "Done." / "😀 Next"; the emoji closes "Done."
        if i + 1 < len(sentences) and starts_with_emoji(sentences[i + 1]):
            continue
        return False
    return True


def line_indent(response: str, kwargs: dict[str, Any]) -> bool:
    """Stairs: each non-blank line has more leading spaces than the one before."""
    indents = [
        len(line) - len(line.lstrip(" "))
        for line in response.split("\n")
        if line.strip()
    ]
    return all(b > a for a, b in pairwise(indents))


def custom_bullet_list(response: str, kwargs: dict[str, Any]) -> bool:
    """At least two lines start with the marker ``sep`` in place of a bullet point."""
    sep = str(kwargs["sep"])
    return sum(1 for line in response.split("\n") if line.lstrip().startswith(sep)) >= 2


def newline_words(response: str, kwargs: dict[str, Any]) -> bool:
    """Every non-blank line holds exactly one word (punctuation ignored)."""
    lines = [line for line in no_punct(response).split("\n") if line.strip()]
    return bool(lines) and all(len(line.split()) == 1 for line in lines)


def no_bullets_then_bullets(response: str, kwargs: dict[str, Any]) -> bool:
    """Two or more prose sentences, then two or more ``*`` bullet lines, and no more."""
    sentences = bullets = 0
    for line in response.split("\n"):
        text = line.strip()
        if text.startswith("*"):
            if sentences < 2:
                return False
            bullets += 1
        elif bullets:
            if text:  # prose after the bullet block
                return False
        else:
            sentences += len(split_sentences(text))
    return bullets >= 2


def no_whitespace(response: str, kwargs: dict[str, Any]) -> bool:
    """No whitespace character anywhere."""
    return not any(ch.isspace() for ch in response)


def options(response: str, kwargs: dict[str, Any]) -> bool:
    """The answer is one of the options; lettered ones ("a), b)...") match exactly."""
    text = str(kwargs["options"])
    lettered = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", text) is not None
    if "/" in text:
        choices = text.split("/")
    elif re.search(r"\bor\b", text):
        choices = re.split(r"\s+or\s+", text)
    else:
        choices = text.split(",")
    choices = [c.strip() for c in choices]
    if lettered:
        return response.strip() in choices

    def norm(s: str) -> str:
        return s.strip(PUNCT + string.whitespace).lower()

    return norm(response) in {norm(c) for c in choices}


def output_template(response: str, kwargs: dict[str, Any]) -> bool:
    """Contains "My Answer:", "My Conclusion:" and "Future Outlook:" in that order."""
    positions = [
        response.find(label)
        for label in ("My Answer:", "My Conclusion:", "Future Outlook:")
    ]
    return -1 not in positions and positions == sorted(positions)


_CLOSER = {")": "(", "]": "[", "}": "{"}


def nested_brackets(response: str, kwargs: dict[str, Any]) -> bool:
    """Brackets ( [ { nested 5+ deep, the innermost closed by its matching bracket."""
    stack: list[str] = []
    deepest = 0
    for ch in response:
        if ch in "([{":
            stack.append(ch)
            deepest = max(deepest, len(stack))
        elif ch in _CLOSER:
            if stack and stack[-1] == _CLOSER[ch]:
                stack.pop()
                if deepest >= 5:
                    return True
            else:  # a mismatched closer breaks the nesting; start counting again
                stack, deepest = [], 0
    return False


def quote_unquote(response: str, kwargs: dict[str, Any]) -> bool:
    """No quote directly follows another quote, and the text does not end on one."""
    text = response.replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("'\"'", "")  # talking about the character '"' is not quoting
    text = "".join(text.split())
    if '""' in text:
        return False
    return not text.rstrip(string.digits + PUNCT.replace('"', "")).endswith('"')


def nested_quotes(response: str, kwargs: dict[str, Any]) -> bool:
    """Quotes nested 3+ levels deep, alternating double and single quotes."""
    text = response.translate({0x201C: '"', 0x201D: '"', 0x2018: "'", 0x2019: "'"})
    stack: list[list[Any]] = []  # [mark, levels reached inside, itself included]
    for i, ch in enumerate(text):
        if ch not in "\"'":
            continue
        # an apostrophe inside a word (don't, it's) is not a quote mark
        if (
            ch == "'"
            and 0 < i < len(text) - 1
            and text[i - 1].isalnum()
            and text[i + 1].isalnum()
        ):
            continue
        if stack and stack[-1][0] == ch:
            _, levels = stack.pop()
            if levels >= 3:
                return True
            if stack:
                stack[-1][1] = max(stack[-1][1], levels + 1)
        else:
            stack.append([ch, 1])
    return False


def sub_bullets(response: str, kwargs: dict[str, Any]) -> bool:
    """One or more ``*`` bullet lines, each followed by a ``-`` sub-bullet line."""
    bullets = 0
    waiting_for_sub = False
    for line in response.split("\n"):
        text = line.strip()
        if re.match(r"\*\s", text):
            if waiting_for_sub:
                return False
            bullets += 1
            waiting_for_sub = True
        elif re.match(r"-\s", text):
            waiting_for_sub = False
    return bullets > 0 and not waiting_for_sub


def italic_thesis(response: str, kwargs: dict[str, Any]) -> bool:
    """A non-empty <i>/<em> italic thesis, followed by non-italic text."""
    match = re.search(r"<(i|em)>(.*?)</\1>", response, flags=re.IGNORECASE | re.DOTALL)
    return bool(match and match.group(2).strip() and response[match.end() :].strip())


def title_case(response: str, kwargs: dict[str, Any]) -> bool:
    """Every word capitalised, bar minor words (a, of, the...) and ones like iPhone."""
    for word in re.findall(r"\w+(?:['\u2019-]\w+)*", response):
        if not word[0].isalpha() or word[0].isupper():
            continue
        if word.lower() in MINOR_TITLE_WORDS:
            continue
        if len(word) > 1 and not word[1:].islower() and not word[1:].isupper():
            continue  # deliberate mixed case: iPhone, eBay
        return False
    return True
