"""Control tags: target intensities per preference dimension, written as plain text before a prompt.

Two papers condition the policy this way, with different spellings, and moalign uses both:

``moslim``
    MOSLIM: ``<helpfulness 4><harmlessness 1>`` then a newline and the prompt. The dimension name is
    kept exactly as configured (``<instruction_following 3>``), so a tag maps back to one dimension.
``cpo``
    Controllable CPO (Guo et al. 2024), the format moalign trains ``controllable_cpo`` with:
    ``<instruction following: 3> <verbosity: 2>`` (underscores shown as spaces, tags separated by one
    space), then a newline and the prompt.

Tags always follow the order of the configured dimensions, never the order of a dict, so one set of
targets gives one prompt string: the same text at training and at inference, and stable cache keys.

:func:`parse_tags` reads either spelling back. It is strict about tags that are clearly meant as
control tags (a known dimension, or a number as the intensity) and raises :class:`ControlTagError`
for them, but leaves other angle-bracket text alone, so a prompt that starts with HTML such as
``<b>`` is not mistaken for a malformed tag.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = ["STYLES", "ControlTagError", "TagStyle", "format_tags", "parse_tags", "tag_prompt"]

TagStyle = Literal["moslim", "cpo"]
STYLES: tuple[str, ...] = ("moslim", "cpo")

# one ``<...>`` group that stays on its line, at a given position
_TAG = re.compile(r"<([^<>\n]*)>")
# inside the brackets: a name, then ``:`` (cpo) or whitespace (moslim), then one token as the intensity.
# The name is matched lazily and the token may hold neither spaces nor colons, so a name containing
# spaces (``instruction following``) or a colon still splits at the last separator.
_BODY = re.compile(r"(?P<name>\S.*?)(?::[ \t]*|[ \t]+)(?P<value>[^\s:]+)")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# after the last tag: spaces or tabs, then the one newline that separates tags from the prompt
_SEPARATOR = re.compile(r"[ \t]*\n?")
_BETWEEN = re.compile(r"[ \t]*")


class ControlTagError(ValueError):
    """A control tag or target that cannot be used: the message names it and what is allowed."""


def _allowed(dimensions: Sequence[str]) -> str:
    return ", ".join(dimensions) if dimensions else "(none configured)"


def _range(levels: tuple[int, int]) -> str:
    return f"{levels[0]}-{levels[1]}"


def format_tags(
    targets: Mapping[str, int],
    dimensions: Sequence[str],
    *,
    style: TagStyle = "moslim",
    levels: tuple[int, int] = (1, 5),
) -> str:
    """The control tags for ``targets``, in the order of ``dimensions``; ``""`` when there are none.

    Every key must be a configured dimension and every value an integer within ``levels`` (inclusive):
    a tag the model never saw in training would silently act as noise, so it is refused here.
    """
    if style not in STYLES:
        raise ControlTagError(f"unknown control-tag style {style!r}; allowed: {', '.join(STYLES)}")
    unknown = [name for name in targets if name not in dimensions]
    if unknown:
        raise ControlTagError(
            f"unknown dimension {unknown[0]!r} in control targets; allowed: {_allowed(dimensions)}"
        )
    low, high = levels
    tags = []
    for name in dimensions:
        if name not in targets:
            continue
        if any(char in name for char in "<>\n"):
            raise ControlTagError(f"dimension {name!r} cannot be a tag: it holds '<', '>' or a newline")
        value = targets[name]
        # bool is an int subclass, but True as an intensity is a bug, not level 1
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ControlTagError(
                f"intensity of {name!r} must be an integer in {_range(levels)}, got {value!r}"
            )
        if not low <= value <= high:
            raise ControlTagError(
                f"intensity of {name!r} is {value}, outside the allowed range {_range(levels)}"
            )
        if style == "cpo":
            tags.append(f"<{name.replace('_', ' ')}: {int(value)}>")
        else:
            tags.append(f"<{name} {int(value)}>")
    return (" " if style == "cpo" else "").join(tags)


def tag_prompt(
    prompt: str,
    targets: Mapping[str, int],
    dimensions: Sequence[str],
    *,
    style: TagStyle = "moslim",
    levels: tuple[int, int] = (1, 5),
) -> str:
    """``prompt`` preceded by its control tags and a newline; unchanged when there are no targets.

    No targets means an uncontrolled prompt, so no empty tag line is added: the text is then the
    same as for a model trained without control tags.
    """
    tags = format_tags(targets, dimensions, style=style, levels=levels)
    return f"{tags}\n{prompt}" if tags else prompt


def parse_tags(
    text: str, dimensions: Sequence[str], *, levels: tuple[int, int] = (1, 5)
) -> tuple[dict[str, int], str]:
    """The control targets at the start of ``text``, and the prompt that follows them.

    Tags of either style are read from the start of the first line (spaces or tabs between them are
    allowed); the tag line ends at its newline, which is removed, so a prompt that itself starts with
    something tag-like is not read as tags. A dimension is recognised by its configured name or with
    underscores shown as spaces (the cpo spelling). Text without leading tags comes back unchanged.

    An ``<...>`` group counts as a control tag when it names a known dimension or carries a number as
    its intensity; then an unknown dimension, a non-integer or out-of-range intensity, or a repeated
    dimension raises :class:`ControlTagError`. Any other group (``<b>``, ``<div class="x">``) ends
    the tags and stays in the prompt.
    """
    # the configured name wins over the spaced spelling should the two ever collide
    lookup = {name.replace("_", " "): name for name in dimensions} | {name: name for name in dimensions}
    low, high = levels
    targets: dict[str, int] = {}
    position = 0
    while True:
        start = _BETWEEN.match(text, position).end() if targets else position
        match = _TAG.match(text, start)
        if match is None:
            break
        tag = match.group(0)
        body = _BODY.fullmatch(match.group(1).strip())
        if body is None:
            break
        name, value = body.group("name").strip(), body.group("value")
        dimension = lookup.get(name)
        if dimension is None:
            if _NUMBER.fullmatch(value) is None:
                break  # not a control tag: leave it to the prompt
            raise ControlTagError(
                f"unknown dimension {name!r} in tag {tag!r}; allowed: {_allowed(dimensions)}"
            )
        if _INTEGER.fullmatch(value) is None:
            raise ControlTagError(
                f"intensity {value!r} in tag {tag!r} is not an integer; allowed: {_range(levels)}"
            )
        level = int(value)
        if not low <= level <= high:
            raise ControlTagError(
                f"intensity {level} in tag {tag!r} is outside the allowed range {_range(levels)}"
            )
        if dimension in targets:
            raise ControlTagError(f"dimension {dimension!r} is tagged twice (again in {tag!r})")
        targets[dimension] = level
        position = match.end()
    if not targets:
        return {}, text
    return targets, text[_SEPARATOR.match(text, position).end():]
