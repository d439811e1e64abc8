"""Control tags: both spellings written exactly, read back exactly, and bad tags named."""

import pytest

from moalign.control_tags import ControlTagError, format_tags, parse_tags, tag_prompt
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.training.phases import condition_prompt

DIMS = ["correctness", "instruction_following", "verbosity", "harmlessness"]


def test_moslim_tags_keep_the_configured_names_and_are_concatenated():
    targets = {"instruction_following": 3, "correctness": 5}
    assert format_tags(targets, DIMS) == "<correctness 5><instruction_following 3>"
    assert tag_prompt("Hi", targets, DIMS) == "<correctness 5><instruction_following 3>\nHi"


def test_cpo_tags_match_the_format_controllable_cpo_trains_with():
    scores = {"correctness": 5, "instruction_following": 2, "verbosity": 4, "harmlessness": 1}
    expected = "<correctness: 5> <instruction following: 2> <verbosity: 4> <harmlessness: 1>\nWhat is 2 + 2?"
    assert tag_prompt("What is 2 + 2?", scores, DIMS, style="cpo") == expected
    # the f-string condition_prompt used before it called tag_prompt
    old = " ".join(f"<{d.replace('_', ' ')}: {scores[d]}>" for d in DIMS) + "\nWhat is 2 + 2?"
    assert expected == old


def test_condition_prompt_is_the_cpo_tagged_prompt():
    row = PreferenceRow(
        id="p", source="test", prompt_id="q", split="train", prompt="Name a prime.",
        chosen=ScoredResponse(text="7", scores={"correctness": 5, "instruction_following": 4,
                                                "verbosity": 2, "harmlessness": 5}),
        rejected=ScoredResponse(text="8", scores=dict.fromkeys(DIMS, 1)),
    )
    assert condition_prompt(row, DIMS) == (
        "<correctness: 5> <instruction following: 4> <verbosity: 2> <harmlessness: 5>\nName a prime."
    )


def test_tags_follow_the_dimension_order_not_the_dict_order():
    one = {"verbosity": 1, "correctness": 4}
    other = {"correctness": 4, "verbosity": 1}
    for style in ("moslim", "cpo"):
        assert format_tags(one, DIMS, style=style) == format_tags(other, DIMS, style=style)
    assert format_tags(one, DIMS) == "<correctness 4><verbosity 1>"


def test_no_targets_leave_the_prompt_uncontrolled():
    assert format_tags({}, DIMS) == ""
    assert tag_prompt("Just answer.", {}, DIMS, style="cpo") == "Just answer."


@pytest.mark.parametrize("style", ["moslim", "cpo"])
@pytest.mark.parametrize(
    ("prompt", "targets"),
    [
        ("Explain DNS.", {"correctness": 1}),
        ("Explain DNS.", {"instruction_following": 5, "harmlessness": 2}),
        ("Explain DNS.", {"correctness": 3, "instruction_following": 4, "verbosity": 2, "harmlessness": 5}),
        ("  indented\nand two lines\n", {"verbosity": 2}),
        ("", {"verbosity": 2}),
        ("<b>bold</b> question", {"verbosity": 4}),
        ("<verbosity 3> a prompt that starts with a tag", {"correctness": 2}),
    ],
)
def test_round_trip(style, prompt, targets):
    assert parse_tags(tag_prompt(prompt, targets, DIMS, style=style), DIMS) == (targets, prompt)


def test_round_trip_with_another_scale():
    text = tag_prompt("x", {"correctness": 0}, DIMS, levels=(0, 4))
    assert parse_tags(text, DIMS, levels=(0, 4)) == ({"correctness": 0}, "x")


def test_parse_accepts_whitespace_between_tags_and_either_spelling():
    text = "<correctness 2>  <instruction following: 5>\t<verbosity:1>\nQ?"
    assert parse_tags(text, DIMS) == ({"correctness": 2, "instruction_following": 5, "verbosity": 1}, "Q?")


def test_html_after_the_tags_is_not_eaten():
    text = "<correctness 4><b>Bold</b> and <i>italic</i>"
    assert parse_tags(text, DIMS) == ({"correctness": 4}, "<b>Bold</b> and <i>italic</i>")
    assert parse_tags("<correctness 4>\n<b>Bold</b>", DIMS) == ({"correctness": 4}, "<b>Bold</b>")


@pytest.mark.parametrize(
    "text",
    ["Plain prompt.", "<b>Bold</b> prompt", '<div class="x">hi</div>', "<https://example.com>",
     "  <correctness 3> (tags must open the text)"],
)
def test_text_without_leading_tags_is_unchanged(text):
    assert parse_tags(text, DIMS) == ({}, text)


def test_format_refuses_an_unknown_dimension_naming_it_and_the_allowed_ones():
    with pytest.raises(ControlTagError, match=r"'helpfulness'.*correctness, instruction_following"):
        format_tags({"helpfulness": 3}, DIMS)


@pytest.mark.parametrize("value", [0, 6, -1])
def test_format_refuses_an_out_of_range_intensity(value):
    with pytest.raises(ControlTagError, match=rf"'verbosity' is {value}, outside the allowed range 1-5"):
        format_tags({"verbosity": value}, DIMS)


@pytest.mark.parametrize("value", [True, 3.0, "3", None])
def test_format_refuses_a_non_integer_intensity(value):
    with pytest.raises(ControlTagError, match=r"'verbosity' must be an integer in 1-5"):
        format_tags({"verbosity": value}, DIMS, style="cpo")


def test_format_refuses_an_unknown_style():
    with pytest.raises(ControlTagError, match="unknown control-tag style 'xml'"):
        format_tags({"verbosity": 3}, DIMS, style="xml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<helpfulness 3>\nQ", r"unknown dimension 'helpfulness' in tag '<helpfulness 3>'; allowed: correct"),
        ("<helpfulness: 3>\nQ", r"unknown dimension 'helpfulness' in tag '<helpfulness: 3>'"),
        ("<correctness 3.5>\nQ", r"intensity '3\.5' in tag '<correctness 3\.5>' is not an integer"),
        ("<verbosity: high>\nQ", r"intensity 'high' in tag '<verbosity: high>' is not an integer"),
        ("<correctness 6>\nQ", r"intensity 6 in tag '<correctness 6>' is outside the allowed range 1-5"),
        ("<correctness 0>\nQ", r"intensity 0 in tag '<correctness 0>' is outside"),
        ("<correctness 2><verbosity 1><correctness: 4>\nQ", r"'correctness' is tagged twice \(again in '<c"),
    ],
)
def test_parse_names_the_bad_tag(text, message):
    with pytest.raises(ControlTagError, match=message):
        parse_tags(text, DIMS)


def test_control_tag_error_is_a_value_error():
    assert issubclass(ControlTagError, ValueError)
