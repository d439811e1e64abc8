"""Arena-Hard v0.1 (Li et al. 2024): 500 hard prompts, judged against a baseline.

``data/benchmarks/arena-hard-v0.1/question.jsonl`` is the benchmark's file, copied
verbatim (Apache-2.0, ``LICENSE`` beside it): one prompt per line with ``uid``,
``category`` ("arena-hard-v0.1"), ``cluster`` (one of 250 topic clusters) and
``prompt``.

The judge prompt is Arena-Hard v0.1's, recorded verbatim below. Source:
``lmarena/arena-hard-auto``, ``config/judge_config.yaml`` (bench_name arena-hard-v0.1:
``system_prompt`` and ``prompt_template``, regex ``\\[\\[([AB<>=]+)\\]\\]``); the same
system prompt is ``OG_ARENA_HARD_PROMPT`` in the newer ``utils/judge_utils.py``. The
judge sees the system prompt and one user message with the template filled.

Scoring. Arena-Hard judges each prompt twice, the baseline as A and then as B; every
game is a "battle", and a strong verdict (``A>>B``, ``B>>A``) counts as 3 battles
(``show_result.py``, ``weight=3``). With one model against one baseline its score is
the mean over the battles (win 1, tie 0.5), which :func:`arena_hard_score` computes
(``strong_weight=3`` for Arena-Hard's number). The simple win-rate view used across
moalign is :func:`label_outcome`: strong and slight verdicts alike are a win for their
side, and the two orders combine as :func:`moalign.evaluation.winrate.swap_outcome`
(a win only when both orders agree). A reply without exactly one known label is a
failure (None), counted by the caller, never a tie.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from moalign.evaluation.mtbench import iter_numbered_rows, unique_rows
from moalign.evaluation.winrate import (
    PAIRWISE_LABELS,
    Outcome,
    Verdict,
    parse_pairwise_label,
    swap_outcome,
)

DEFAULT_DIR = Path("data/benchmarks/arena-hard-v0.1")
QUESTION_FILE = "question.jsonl"

# Source: lmarena/arena-hard-auto, config/judge_config.yaml (bench_name:
# arena-hard-v0.1), field system_prompt; verbatim.
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses "
    "provided by two AI assistants to the user prompt displayed below. You will be "
    "given assistant A's answer and assistant B's answer. Your job is to evaluate "
    "which assistant's answer is better.\n\n"
    "Begin your evaluation by generating your own answer to the prompt. You must "
    "provide your answers before judging any answers.\n\n"
    "When evaluating the assistants' answers, compare both assistants' answers "
    "with your answer. You must identify and correct any mistakes or inaccurate "
    "information.\n\n"
    "Then consider if the assistant's answers are helpful, relevant, and concise. "
    "Helpful means the answer correctly responds to the prompt or follows the "
    "instructions. Note when user prompt has any ambiguity or more than one "
    "interpretation, it is more helpful and appropriate to ask for clarifications "
    "or more information from the user than providing an answer based on "
    "assumptions. Relevant means all parts of the response closely connect or are "
    "appropriate to what is being asked. Concise means the response is clear and "
    "not verbose or excessive.\n\n"
    "Then consider the creativity and novelty of the assistant's answers when "
    "needed. Finally, identify any missing important information in the "
    "assistants' answers that would be beneficial to include when responding to "
    "the user prompt.\n\n"
    "After providing your explanation, you must output only one of the following "
    "choices as your final verdict with a label:\n\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n\n"
    'Example output: "My final verdict is tie: [[A=B]]".'
)

# Source: the same file, field prompt_template (a one-element list there); verbatim,
# with its placeholder names (question_1; answer_1 is assistant A, answer_2 is B).
PROMPT_TEMPLATE = (
    "<|User Prompt|>\n{question_1}\n\n"
    "<|The Start of Assistant A's Answer|>\n{answer_1}\n"
    "<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_2}\n"
    "<|The End of Assistant B's Answer|>"
)

#: the five verdict labels of the v0.1 prompt
LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
#: the labels Arena-Hard counts ``weight`` times (3 in its show_result.py)
STRONG_LABELS = frozenset({"A>>B", "B>>A"})
ARENA_HARD_STRONG_WEIGHT = 3


class ArenaHardQuestion(BaseModel):
    """One Arena-Hard prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uid: str = Field(min_length=1)
    category: str = "arena-hard-v0.1"
    cluster: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


def load_questions(
    path: str | os.PathLike[str] | None = None,
) -> list[ArenaHardQuestion]:
    """The prompts of ``question.jsonl`` (500 in v0.1), in file order; uids unique."""
    path = Path(path) if path is not None else DEFAULT_DIR / QUESTION_FILE
    return unique_rows(path, iter_numbered_rows(path, ArenaHardQuestion), "uid")


def pairwise_messages(
    question: ArenaHardQuestion | str, answer_a: str, answer_b: str
) -> list[dict[str, str]]:
    """One game's judge messages: Arena-Hard's system prompt, then the filled template.

    ``answer_a`` is shown as assistant A, ``answer_b`` as assistant B.
    """
    prompt = question.prompt if isinstance(question, ArenaHardQuestion) else question
    user = PROMPT_TEMPLATE.format(
        question_1=prompt, answer_1=answer_a, answer_2=answer_b
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def parse_label(text: str) -> str | None:
    """The reply's one Arena-Hard label (``"A>>B"``...), or None.

    Strict, as :func:`moalign.evaluation.winrate.parse_pairwise_label`; MT-bench's
    ``[[A]]``-style labels are not Arena-Hard verdicts and give None here.
    """
    label = parse_pairwise_label(text)
    return label if label in LABELS else None


def label_verdict(label: str) -> Verdict:
    """The preferred position of a label, strength dropped: A>>B and A>B give "A"."""
    if label not in LABELS:
        raise ValueError(
            f"not an Arena-Hard label: {label!r}; allowed: {', '.join(LABELS)}"
        )
    return PAIRWISE_LABELS[label]


def label_outcome(
    candidate_as_a: str | None, candidate_as_b: str | None
) -> Outcome | None:
    """The simple win-rate view of one prompt's two games.

    ``candidate_as_a`` is the label of the game with the candidate as assistant A,
    ``candidate_as_b`` with it as B. Strength is dropped (a strong verdict is a plain
    win) and the two orders combine with :func:`swap_outcome`. None when either game's
    reply gave no label: a judge failure to count, not a tie.
    """
    if candidate_as_a is None or candidate_as_b is None:
        return None
    return swap_outcome(label_verdict(candidate_as_a), label_verdict(candidate_as_b))


def battle_scores(
    candidate_as_a: str,
    candidate_as_b: str,
    *,
    strong_weight: int = ARENA_HARD_STRONG_WEIGHT,
) -> list[float]:
    """The candidate's battles from one prompt's two games, as Arena-Hard counts them.

    Each game is a battle scored 1 (candidate better), 0.5 (tie) or 0; a strong verdict
    is repeated ``strong_weight`` times (arena-hard-auto ``show_result.py``:
    ``label_to_score``, ``weight=3``).
    """
    if strong_weight < 1:
        raise ValueError(f"strong_weight must be at least 1, got {strong_weight}")
    scores: list[float] = []
    for label, candidate in ((candidate_as_a, "A"), (candidate_as_b, "B")):
        verdict = label_verdict(label)
        score = 0.5 if verdict == "tie" else 1.0 if verdict == candidate else 0.0
        scores.extend([score] * (strong_weight if label in STRONG_LABELS else 1))
    return scores


def arena_hard_score(
    games: Iterable[tuple[str | None, str | None]],
    *,
    strong_weight: int = ARENA_HARD_STRONG_WEIGHT,
) -> dict[str, float | int]:
    """Arena-Hard's score of a candidate against the baseline: the mean of its battles.

    ``games`` holds one ``(label with the candidate as A, label with it as B)`` pair per
    prompt. As arena-hard-auto's current ``show_result.py``, a prompt with a failed game
    (None) is left out; here it is also counted in ``failures``. That script reports
    this battle mean (its bootstrap over battles is not reproduced; use
    :func:`moalign.evaluation.winrate.bootstrap_ci` on the simple outcomes). The v0.1
    leaderboard fitted a Bradley-Terry model over many models' battles against the
    baseline instead; with battles against the baseline only, an unpenalised fit gives
    each model this same mean.
    """
    battles: list[float] = []
    failures = prompts = 0
    for candidate_as_a, candidate_as_b in games:
        prompts += 1
        if candidate_as_a is None or candidate_as_b is None:
            failures += 1
            continue
        battles.extend(
            battle_scores(candidate_as_a, candidate_as_b, strong_weight=strong_weight)
        )
    if not battles:
        raise ValueError(f"no judged prompts among {prompts} (failures: {failures})")
    return {
        "score": sum(battles) / len(battles),
        "battles": len(battles),
        "prompts": prompts,
        "failures": failures,
    }


def questions_by_cluster(
    questions: Sequence[ArenaHardQuestion],
) -> dict[str, list[ArenaHardQuestion]]:
    """The questions grouped by topic cluster, clusters in order of first appearance."""
    grouped: dict[str, list[ArenaHardQuestion]] = {}
    for question in questions:
        grouped.setdefault(question.cluster, []).append(question)
    return grouped


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str


class _AnswerChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    turns: list[_Turn] = Field(min_length=1)


class BaselineAnswer(BaseModel):
    """A baseline's answer to one prompt: arena-hard-auto's ``model_answer`` format
    (``question_id`` or ``uid``, ``choices[0].turns[0].content``) or a plain ``uid`` + ``answer``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    uid: str = Field(min_length=1, validation_alias=AliasChoices("uid", "question_id"))
    answer: str | None = None
    choices: list[_AnswerChoice] | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> BaselineAnswer:
        if self.answer is None and not self.choices:
            raise ValueError("needs 'answer' or 'choices' (arena-hard-auto's model_answer format)")
        return self

    @property
    def text(self) -> str:
        return self.answer if self.answer is not None else self.choices[0].turns[0].content


def load_baseline_answers(
    path: str | os.PathLike[str], questions: Sequence[ArenaHardQuestion]
) -> dict[str, str]:
    """The baseline's answer per uid of ``questions``; an error names the file and line of a bad
    row, or the first question the file has no answer for."""
    path = Path(path)
    answers = {row.uid: row.text for row in unique_rows(path, iter_numbered_rows(path, BaselineAnswer), "uid")}
    missing = [q.uid for q in questions if q.uid not in answers]
    if missing:
        raise ValueError(
            f"{path}: no baseline answer for {len(missing)} of {len(questions)} Arena-Hard prompts "
            f"(first: uid {missing[0]!r})"
        )
    return {q.uid: answers[q.uid] for q in questions}
