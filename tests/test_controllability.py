"""Controllability (MOSLIM Fig. 5): requests laid out, requested vs measured summarised, plotted."""

import io
import json
import math

import pytest

from moalign.evaluation.controllability import (
    ControlRequest,
    control_requests,
    controllability_curve_rows,
    controllability_figure,
    controllability_summary,
)

DIMS = ["correctness", "verbosity"]
LEVELS = [1, 3, 5]
PROMPTS = [("a", "Explain DNS."), ("b", "Name a prime.")]
RISING = {1: [1, 2], 3: [3, 3], 5: [4, 5]}  # measured scores of prompts a and b per requested level


def requests() -> list[ControlRequest]:
    return control_requests(PROMPTS, DIMS, LEVELS, style="moslim")


def scores(table: dict[str, dict[int, list[float | None]]]) -> dict[str, float | None]:
    """Measured scores from {dimension: {level: [score of prompt a, score of prompt b]}}."""
    return {
        f"{dim}={level}:{prompt_id}": value
        for dim, by_level in table.items()
        for level, values in by_level.items()
        for (prompt_id, _), value in zip(PROMPTS, values, strict=True)
    }


def test_one_request_per_dimension_level_and_prompt_with_a_single_goal():
    made = requests()
    assert len(made) == len(DIMS) * len(LEVELS) * len(PROMPTS)
    assert len({r.key for r in made}) == len(made)
    assert made[0] == ControlRequest(
        key="correctness=1:a", prompt_id="a", dimension="correctness", level=1,
        prompt="<correctness 1>\nExplain DNS.",
    )
    assert [r.key for r in made[:3]] == ["correctness=1:a", "correctness=1:b", "correctness=3:a"]
    verbosity_5_b = next(r for r in made if r.key == "verbosity=5:b")
    assert verbosity_5_b.prompt == "<verbosity 5>\nName a prime."


def test_requests_in_cpo_style():
    made = control_requests([("q", "Hi")], ["instruction_following"], [2], style="cpo")
    assert [r.prompt for r in made] == ["<instruction following: 2>\nHi"]


def test_repeated_prompt_ids_or_levels_are_refused():
    with pytest.raises(ValueError, match="prompt id 'a' appears more than once"):
        control_requests([("a", "x"), ("a", "y")], DIMS, LEVELS)
    with pytest.raises(ValueError, match="repeat a level"):
        control_requests(PROMPTS, DIMS, [1, 3, 1])


def test_levels_outside_the_tag_scale_are_refused():
    with pytest.raises(ValueError, match="outside the allowed range 1-5"):
        control_requests(PROMPTS, DIMS, [0, 3])


def test_summary_means_and_spearman_by_hand():
    measured = scores({
        # ranks by hand: levels (1.5,1.5,3.5,3.5,5.5,5.5), scores (1,2,3.5,3.5,5,6) -> rho = 4/sqrt(17)
        "correctness": {1: [1.0, 2.0], 3: [3.0, 3.0], 5: [4.0, 5.0]},
        # perfectly inverted: every higher level scores lower
        "verbosity": {1: [5.0, 5.0], 3: [4.0, 4.0], 5: [2.0, 2.0]},
    })
    summary = controllability_summary(requests(), measured, DIMS, LEVELS)
    assert summary["levels"] == LEVELS
    assert summary["n_prompts"] == 2
    correctness = summary["dimensions"]["correctness"]
    assert correctness["mean_by_level"] == {"1": 1.5, "3": 3.0, "5": 4.5}
    assert correctness["spearman"] == pytest.approx(4 / math.sqrt(17))
    assert 0 < correctness["p_value"] < 0.05
    assert (correctness["n"], correctness["failures"], correctness["undefined_reason"]) == (6, 0, None)
    assert summary["dimensions"]["verbosity"]["spearman"] == pytest.approx(-1.0)
    assert summary["dimensions"]["verbosity"]["mean_by_level"] == {"1": 5.0, "3": 4.0, "5": 2.0}


def test_perfectly_monotone_is_one():
    measured = scores({"correctness": {1: [2, 2], 3: [3, 3], 5: [5, 5]},
                       "verbosity": {1: [1, 1], 3: [2, 2], 5: [3, 3]}})
    summary = controllability_summary(requests(), measured, DIMS, LEVELS)
    assert [summary["dimensions"][d]["spearman"] for d in DIMS] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_constant_scores_and_failures_give_no_nan():
    measured = scores({
        "correctness": {1: [4.0, None], 3: [4.0, 4.0], 5: [None, 4.0]},  # constant, two judge failures
        "verbosity": {1: [None, None], 3: [2.0, None], 5: [None, 3.0]},  # two scored answers only
    })
    summary = controllability_summary(requests(), measured, DIMS, LEVELS)
    correctness = summary["dimensions"]["correctness"]
    assert correctness["spearman"] is None and correctness["p_value"] is None
    assert correctness["undefined_reason"] == "the measured score is constant"
    assert (correctness["n"], correctness["failures"]) == (4, 2)
    verbosity = summary["dimensions"]["verbosity"]
    assert verbosity["mean_by_level"] == {"1": None, "3": 2.0, "5": 3.0}
    assert verbosity["undefined_reason"] == "fewer than 3 scored answers"
    assert (verbosity["n"], verbosity["failures"]) == (2, 4)
    json.dumps(summary, allow_nan=False)


def test_a_single_scored_level_is_undefined():
    measured = scores({"correctness": {1: [None, None], 3: [2.0, 3.0], 5: [None, None]},
                       "verbosity": RISING})
    measured["correctness=3:b"] = 4.0
    summary = controllability_summary(requests(), measured, DIMS, LEVELS)
    assert summary["dimensions"]["correctness"]["undefined_reason"] == "fewer than 3 scored answers"
    reqs = [*requests(), ControlRequest("correctness=3:c", "c", "correctness", 3, "<correctness 3>\nc")]
    summary = controllability_summary(reqs, measured | {"correctness=3:c": 5.0}, DIMS, LEVELS)
    reason = summary["dimensions"]["correctness"]["undefined_reason"]
    assert reason == "fewer than 2 levels have a scored answer"
    json.dumps(summary, allow_nan=False)


def test_a_missing_score_is_named():
    measured = scores({"correctness": RISING, "verbosity": RISING})
    del measured["verbosity=3:b"]
    with pytest.raises(ValueError, match="no measured score for request 'verbosity=3:b'"):
        controllability_summary(requests(), measured, DIMS, LEVELS)


def test_a_nan_score_is_refused():
    measured = scores({"correctness": RISING, "verbosity": RISING})
    measured["correctness=5:a"] = float("nan")
    with pytest.raises(ValueError, match="'correctness=5:a' is nan"):
        controllability_summary(requests(), measured, DIMS, LEVELS)


def test_curve_rows_are_one_per_level_with_a_column_per_dimension():
    measured = scores({"correctness": RISING,
                       "verbosity": {1: [None, None], 3: [2, 2], 5: [3, 3]}})
    rows = controllability_curve_rows(controllability_summary(requests(), measured, DIMS, LEVELS))
    assert rows == [
        {"requested": 1, "correctness": 1.5, "verbosity": None},
        {"requested": 3, "correctness": 3.0, "verbosity": 2.0},
        {"requested": 5, "correctness": 4.5, "verbosity": 3.0},
    ]


def test_figure_has_one_line_per_dimension_and_rho_in_the_legend():
    measured = scores({"correctness": RISING,
                       "verbosity": {1: [4, 4], 3: [4, 4], 5: [4, 4]}})
    figure = controllability_figure(controllability_summary(requests(), measured, DIMS, LEVELS))
    ax = figure.axes[0]
    assert len(ax.lines) == len(DIMS)
    assert [list(line.get_xdata()) for line in ax.lines] == [LEVELS, LEVELS]
    assert list(ax.lines[0].get_ydata()) == [1.5, 3.0, 4.5]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["correctness (ρ = 0.97)", "verbosity (ρ n/a)"]
    assert ax.get_ylabel() == "measured score (judge)"
    assert ax.get_title() == "Controllability: requested vs measured"
    figure.savefig(io.BytesIO(), format="png")  # renders without pyplot


def test_figure_without_scored_answers_says_so():
    measured = dict.fromkeys((r.key for r in requests()), None)
    figure = controllability_figure(controllability_summary(requests(), measured, DIMS, LEVELS))
    ax = figure.axes[0]
    assert len(ax.lines) == len(DIMS)
    assert any("no scored answers" in text.get_text() for text in ax.texts)
    empty = controllability_figure({"levels": [], "n_prompts": 0, "dimensions": {}})
    assert any("no scored answers" in text.get_text() for text in empty.axes[0].texts)
    empty.savefig(io.BytesIO(), format="png")
