"""The evaluate stage's work: generate every answer, then judge each suite.

Suites, each optional but the first (``evaluate.benchmarks`` and ``evaluate.controllability``):

* ``heldout``: the held-out prompts, scored per dimension by the judge; the win rate against the
  reference is the pairwise LLM judge's verdict in both orders when the judge is an LLM, else the
  comparison of the programmatic judge's scores (:mod:`moalign.evaluation.embedded`);
* ``ifbench``: verified by code (:mod:`moalign.evaluation.ifbench`);
* ``mt_bench``: both turns answered in one conversation, each turn rated 1-10 as FastChat does;
* ``arena_hard``: the policy against the baseline (the reference's answers, or a file of a
  baseline model's answers), Arena-Hard's judge prompt in both orders;
* ``alpaca_eval``: the policy and the reference against the file's baseline answers;
* ``controllability``: the policy asked for each level of each dimension with one control tag
  (MOSLIM Fig. 5), the judge measuring that dimension.

Generation comes first for both models (one model in memory at a time), journaled per batch in
``cache/generations`` so a killed run resumes; judging afterwards reads the judge's SQLite cache, so
a rerun after a crash pays only for the calls it had not made. Writes the per-prompt JSONL files
and returns the metrics dict; :func:`evaluate_stage` writes ``metrics.json``, headline first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moalign.data.schema import TaskPrompt, atomic_write_text, write_jsonl
from moalign.generation import Prompt

logger = logging.getLogger(__name__)

MODELS = ("policy", "reference")


@dataclass
class Suite:
    """Prompts to answer, by id, and for which models."""

    prompts: dict[str, Prompt]
    max_new_tokens: int
    models: tuple[str, ...] = MODELS


@dataclass
class Plan:
    """What one evaluation runs: the loaded benchmark data and the suites to generate."""

    held_out: list[TaskPrompt]
    suites: dict[str, Suite] = field(default_factory=dict)
    ifbench: list | None = None
    mt_bench: list | None = None
    mt_bench_references: dict[int, list[str]] | None = None
    arena_hard: list | None = None
    arena_hard_baseline: dict[str, str] | None = None  # None: the reference model's answers
    alpaca_eval: list | None = None
    control: list | None = None  # ControlRequest per (dimension, level, prompt)
    control_style: str | None = None


def plan_evaluation(config, held_out: Sequence[TaskPrompt], benchmarks_dir: Path) -> Plan:
    """Load every benchmark file ``config.evaluate`` asks for, before any model is loaded: a missing
    file or a bad row fails in a second, not after an hour of generation."""
    from moalign.evaluation import alpacaeval, arenahard, mtbench
    from moalign.evaluation.ifbench import TEST_FILE as IFBENCH_FILE, load_ifbench

    section = config.evaluate
    first = section.benchmark_prompts
    plan = Plan(held_out=list(held_out))
    plan.suites["heldout"] = Suite({t.id: t.prompt for t in held_out}, section.max_new_tokens)
    long_answers = section.benchmark_max_new_tokens
    if "ifbench" in section.benchmarks:
        plan.ifbench = load_ifbench(benchmarks_dir / "ifbench" / IFBENCH_FILE)[:first]
        plan.suites["ifbench"] = Suite({item.key: item.prompt for item in plan.ifbench}, long_answers)
    if "mt_bench" in section.benchmarks:
        folder = benchmarks_dir / "mt_bench"
        plan.mt_bench = mtbench.load_questions(folder / mtbench.QUESTION_FILE)[:first]
        plan.mt_bench_references = mtbench.load_reference_answers(folder / mtbench.REFERENCE_FILE)
        mtbench.load_judge_prompts(folder / mtbench.JUDGE_PROMPT_FILE)  # fail early on a bad file
        plan.suites["mt_bench_turn_1"] = Suite({str(q.question_id): q.turns[0] for q in plan.mt_bench}, long_answers)
    if "arena_hard" in section.benchmarks:
        plan.arena_hard = arenahard.load_questions(benchmarks_dir / "arena-hard-v0.1" / arenahard.QUESTION_FILE)[:first]
        if section.arena_hard_baseline:
            plan.arena_hard_baseline = arenahard.load_baseline_answers(section.arena_hard_baseline, plan.arena_hard)
        plan.suites["arena_hard"] = Suite({q.uid: q.prompt for q in plan.arena_hard}, long_answers)
    if "alpaca_eval" in section.benchmarks:
        plan.alpaca_eval = alpacaeval.load_alpaca_eval(section.alpaca_eval_path)[:first]
        plan.suites["alpaca_eval"] = Suite(
            {str(i): record.instruction for i, record in enumerate(plan.alpaca_eval)}, long_answers
        )
    style = config.control_tag_style
    if section.controllability is True or (section.controllability == "auto" and style is not None):
        from moalign.evaluation.controllability import control_requests

        chosen = [(t.id, t.prompt) for t in held_out[: section.controllability_prompts]]
        plan.control_style = style
        plan.control = control_requests(
            chosen, config.dimensions.names, section.controllability_levels, style=style
        )
        if style == "moslim":
            # a MOSLIM policy was trained on intensities 1..classes of each reward head
            classes = dict(zip(config.dimensions.names, config.reward_classes, strict=True))
            plan.control = [r for r in plan.control if r.level <= classes[r.dimension]]
        plan.suites["controllability"] = Suite(
            {r.key: r.prompt for r in plan.control}, section.max_new_tokens, models=("policy",)
        )
    return plan


def generate_answers(
    config, plan: Plan, models: Mapping[str, tuple[Path, str]], generations_dir: Path
) -> dict[str, dict[str, dict[str, str]]]:
    """model -> suite -> prompt id -> greedy answer. ``models``: name -> (directory, the stage that
    makes it, for the error when it is missing). One model in memory at a time."""
    from moalign.generation import DecodingConfig, generate_resumable
    from moalign.models import model_fingerprint
    from moalign.models import load_model_and_tokenizer

    section = config.evaluate
    answers: dict[str, dict[str, dict[str, str]]] = {}
    for name, (model_dir, made_by) in models.items():
        model, tokenizer = load_model_and_tokenizer(model_dir, config.model.dtype, made_by=made_by)
        model_id = model_fingerprint(model_dir)

        def answer(suite: str, prompts: Mapping[str, Prompt], max_new_tokens: int, *, model=model,
                   tokenizer=tokenizer, model_id=model_id, name=name) -> dict[str, str]:
            decoding = DecodingConfig(max_new_tokens=max_new_tokens, batch_size=section.batch_size,
                                      **config.generation.decoding_fields())
            done = generate_resumable(
                model, tokenizer, prompts, decoding, generations_dir / f"{suite}-{name}.jsonl",
                model_id=model_id, description=f"{name} {suite}",
            )
            return {key: completions[0] for key, completions in done.items()}

        answers[name] = {
            suite: answer(suite, spec.prompts, spec.max_new_tokens)
            for suite, spec in plan.suites.items() if name in spec.models
        }
        if plan.mt_bench is not None:
            # the second turn is asked in the conversation the model's own first answer started
            first = answers[name]["mt_bench_turn_1"]
            conversations = {
                str(q.question_id): [
                    {"role": "user", "content": q.turns[0]},
                    {"role": "assistant", "content": first[str(q.question_id)]},
                    {"role": "user", "content": q.turns[1]},
                ]
                for q in plan.mt_bench if len(q.turns) > 1
            }
            answers[name]["mt_bench_turn_2"] = answer(
                "mt_bench_turn_2", conversations, section.benchmark_max_new_tokens
            )
        del model, tokenizer, answer  # one model in memory at a time
    return answers


def preference_accuracy(config, rows, models: Mapping[str, tuple[Path, str]]) -> dict[str, Any]:
    """Held-out preference accuracy and margin per dimension of each model on the validated eval pairs
    (:mod:`moalign.training.diagnostics`): the same pairs and numbers the training logs as ``eval_*``.
    Where the policy's training logged them for these pairs (:data:`~moalign.training.diagnostics.LOGGED_FILE`),
    its last point is the policy's row and its step 0 the reference's (when the reference is the
    model the training started from); only what is missing is computed, each model loaded once."""
    from moalign.models import model_fingerprint
    from moalign.models import load_model_and_tokenizer
    from moalign.training.diagnostics import LOGGED_FILE, diagnostic_pairs, preference_diagnostics, reuse_logged

    pairs = diagnostic_pairs(rows, config.train.eval_pairs)
    record_path = Path(models["policy"][0]) / LOGGED_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    reused = reuse_logged(record, pairs, model_fingerprint(models["reference"][0])) if record else {}
    result: dict[str, Any] = {"n_pairs": len(pairs), "from_training_log": sorted(reused)}
    for name, (model_dir, made_by) in models.items():
        if name in reused:
            result[name] = reused[name]
            continue
        model, tokenizer = load_model_and_tokenizer(model_dir, config.model.dtype, made_by=made_by)
        result[name] = preference_diagnostics(
            model, tokenizer, pairs, config.dimensions.names, config.dimensions.template,
            max_length=config.train.max_length, batch_size=config.train.batch_size,
        )
        del model, tokenizer
    return result


def training_budget_of(policy_dir: Path) -> dict | None:
    """The policy's training budget (pairs, steps, tokens, seconds) saved beside it by train_policy,
    reported with the result it bought; None for a policy made elsewhere."""
    from moalign.training.runs import BUDGET_FILE

    path = Path(policy_dir) / BUDGET_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_reward_of(policy_dir: Path, train) -> dict | None:
    """An online method's reward trend per phase (:func:`moalign.training.runs.reward_trend`) from the
    log saved beside the policy; None for offline methods and for policies made elsewhere."""
    from moalign.training.methods import algorithm_of, get_method
    from moalign.training.online import REWARD_LOG_KEYS
    from moalign.training.runs import FINISHED_LOG, reward_trend

    path = Path(policy_dir) / FINISHED_LOG
    if not get_method(train.method).online or not path.is_file():
        return None
    key = REWARD_LOG_KEYS[algorithm_of(train.method, train.online)]
    trend = reward_trend(json.loads(path.read_text()), key)
    return None if trend is None else {"key": key, "phases": trend}


def judge_answers(config, plan: Plan, answers, judges, out_dir: Path) -> tuple[list[dict], dict[str, Any]]:
    """Score every suite; writes the benchmarks' per-prompt files into ``out_dir`` and returns the
    held-out rows (the caller writes them) and the metrics."""
    from moalign.evaluation.embedded import evaluate_against_reference

    held_out = plan.held_out
    policy = [answers["policy"]["heldout"][t.id] for t in held_out]
    reference = [answers["reference"]["heldout"][t.id] for t in held_out]
    pairwise = pairwise_name = None
    if judges.endpoint is not None:
        template = config.evaluate.pairwise_template
        judge = judges.pairwise(template)
        pairwise = judge.compare_with_swap_many
        pairwise_name = f"{judges.model} ({template}, both orders)"
    rows, metrics = evaluate_against_reference(
        held_out, policy, reference, judges.scorer, pairwise=pairwise, pairwise_name=pairwise_name
    )
    if plan.ifbench is not None:
        per_prompt, metrics["ifbench"] = score_ifbench(plan.ifbench, answers)
        write_jsonl(out_dir / "ifbench.jsonl", per_prompt)
    if plan.mt_bench is not None:
        per_prompt, metrics["mt_bench"] = score_mt_bench(plan, answers, judges)
        write_jsonl(out_dir / "mt_bench.jsonl", per_prompt)
    if plan.arena_hard is not None:
        per_prompt, metrics["arena_hard"] = score_arena_hard(plan, answers, judges)
        write_jsonl(out_dir / "arena_hard.jsonl", per_prompt)
    if plan.alpaca_eval is not None:
        per_prompt, metrics["alpaca_eval"] = score_alpaca_eval(plan, answers, judges, config.evaluate.alpaca_eval_path)
        write_jsonl(out_dir / "alpaca_eval.jsonl", per_prompt)
    if plan.control is not None:
        per_prompt, metrics["controllability"] = score_controllability(plan, answers, judges.scorer)
        write_jsonl(out_dir / "controllability.jsonl", per_prompt)
        write_controllability_curve(out_dir / "controllability.csv", metrics["controllability"])
    else:
        # header only: dvc.yaml's controllability plot then draws nothing rather than failing on a missing file
        atomic_write_text(out_dir / "controllability.csv", ",".join(["requested", *config.dimensions.names]) + "\n")
    return rows, metrics


def score_ifbench(items, answers) -> tuple[list[dict], dict]:
    """IFBench verdicts of both models' answers: per-prompt rows and the accuracies per model."""
    from moalign.evaluation.ifbench import evaluate_response, ifbench_scores

    rows, summary = [], {}
    for name in MODELS:
        verdicts = [evaluate_response(item, answers[name]["ifbench"][item.key]) for item in items]
        summary[name] = ifbench_scores(verdicts)
        rows.extend({"model": name, "response": answers[name]["ifbench"][v["key"]], **v} for v in verdicts)
    return rows, summary


def score_mt_bench(plan: Plan, answers, judges) -> tuple[list[dict], dict]:
    """Both turns of both models rated 1-10 (reference answers for math, reasoning and coding)."""
    from moalign.evaluation.mtbench import mtbench_scores, needs_reference

    items, slots = [], []
    for name in MODELS:
        for question in plan.mt_bench:
            qid = str(question.question_id)
            turns = [answers[name]["mt_bench_turn_1"][qid]]
            if qid in answers[name].get("mt_bench_turn_2", {}):
                turns.append(answers[name]["mt_bench_turn_2"][qid])
            reference = plan.mt_bench_references.get(question.question_id) if needs_reference(question.category) else None
            if needs_reference(question.category) and reference is None:
                raise ValueError(f"MT-bench question {qid} ({question.category}) has no reference answer to grade with")
            for turn in range(1, len(turns) + 1):
                items.append((question, turns, turn, reference))
                slots.append((name, question, turn, turns[turn - 1]))
    ratings = judges.rater().grade_mtbench_many(items)
    rows = [
        {"model": name, "question_id": q.question_id, "category": q.category, "turn": turn,
         "answer": answer, "score": rating}
        for (name, q, turn, answer), rating in zip(slots, ratings, strict=True)
    ]
    summary = {name: mtbench_scores(r for r in rows if r["model"] == name) for name in MODELS}
    return rows, {"judge": judges.model, **summary}


def score_arena_hard(plan: Plan, answers, judges) -> tuple[list[dict], dict]:
    """The policy (and, against a file baseline, the reference too) judged pairwise against the
    baseline in both orders: Arena-Hard's weighted score and the plain win rate with its interval."""
    from moalign.evaluation.arenahard import arena_hard_score, label_outcome
    from moalign.evaluation.embedded import win_rate_report

    questions = plan.arena_hard
    if plan.arena_hard_baseline is None:
        baseline, candidates, baseline_name = answers["reference"]["arena_hard"], ("policy",), "reference"
    else:
        baseline, candidates, baseline_name = plan.arena_hard_baseline, MODELS, "file"
    judge = judges.pairwise("arena_hard_v0.1")
    rows, summary = [], {"baseline": baseline_name, "judge": judges.model}
    for name in candidates:
        ours = [answers[name]["arena_hard"][q.uid] for q in questions]
        theirs = [baseline[q.uid] for q in questions]
        games = judge.swap_labels_many(list(zip(questions, ours, theirs, strict=True)))
        outcomes = [label_outcome(*game) for game in games]
        report = win_rate_report(outcomes, ours, theirs)
        try:
            report["score"] = arena_hard_score(games)["score"]
        except ValueError:  # every game failed: counted in report["failures"]
            report["score"] = None
        summary[name] = report
        rows.extend(
            {"model": name, "uid": q.uid, "cluster": q.cluster, "answer": a, "baseline": b,
             "label_as_a": game[0], "label_as_b": game[1], "outcome": outcome}
            for q, a, b, game, outcome in zip(questions, ours, theirs, games, outcomes, strict=True)
        )
    return rows, summary


def score_alpaca_eval(plan: Plan, answers, judges, path) -> tuple[list[dict], dict]:
    """Both models against the file's baseline answers, the AMoPO win-rate template in both orders,
    with AlpacaEval's length-controlled win rate."""
    from moalign.evaluation.embedded import win_rate_report

    records = plan.alpaca_eval
    judge = judges.pairwise("amopo_winrate")
    rows, summary = [], {"baseline": Path(path).name, "judge": judges.model}
    theirs = [record.output for record in records]
    for name in MODELS:
        ours = [answers[name]["alpaca_eval"][str(i)] for i in range(len(records))]
        outcomes = judge.compare_with_swap_many(list(zip(records, ours, theirs, strict=True)))
        summary[name] = win_rate_report(outcomes, ours, theirs)
        rows.extend(
            {"model": name, "index": i, "instruction": r.instruction, "answer": a, "baseline": r.output,
             "outcome": outcome}
            for i, (r, a, outcome) in enumerate(zip(records, ours, outcomes, strict=True))
        )
    return rows, summary


def score_controllability(plan: Plan, answers, scorer) -> tuple[list[dict], dict]:
    """The judge's score of the requested dimension for each tagged answer, measured against the
    untagged task (the tag is an instruction to the policy, not part of the task)."""
    from moalign.evaluation.controllability import controllability_summary
    from moalign.judges.base import score_many

    tasks = {t.id: t for t in plan.held_out}
    requests = plan.control
    texts = [answers["policy"]["controllability"][r.key] for r in requests]
    scores = score_many(scorer, [(tasks[r.prompt_id], text) for r, text in zip(requests, texts, strict=True)])
    measured = {r.key: s.get(r.dimension) for r, s in zip(requests, scores, strict=True)}
    summary = controllability_summary(requests, measured, scorer.dimensions, sorted({r.level for r in requests}))
    rows = [
        {"key": r.key, "prompt_id": r.prompt_id, "dimension": r.dimension, "requested": r.level,
         "measured": measured[r.key], "answer": text}
        for r, text in zip(requests, texts, strict=True)
    ]
    return rows, {"style": plan.control_style, **summary}


def write_controllability_curve(path: Path, summary: Mapping[str, Any]) -> None:
    """The requested-vs-measured means as a wide CSV, one column per dimension (the DVC plot)."""
    from moalign.evaluation.controllability import controllability_curve_rows

    rows = controllability_curve_rows(summary)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write_text(path, text.getvalue())


class EvaluationInputError(ValueError):
    """Nothing to evaluate on, or a missing input the settings need."""


def evaluate_stage(config, tasks, eval_pairs, policy, reference, out, metrics, benchmarks, generations) -> dict:
    """The evaluate stage: greedy answers of ``policy`` and ``reference`` on the held-out prompts and
    ``evaluate.benchmarks``, judged; held-out preference diagnostics on ``eval_pairs``; the policy's
    training budget and reward trend. Writes the per-prompt rows to ``out`` (benchmarks beside it)
    and the results to ``metrics``; returns them."""
    from moalign.data.schema import PreferenceRow, read_jsonl, write_jsonl
    from moalign.judges import open_judges

    held_out = held_out_prompts(config, Path(tasks), eval_pairs)[: config.evaluate.n_prompts]
    if not held_out:
        raise EvaluationInputError("no held-out prompts to evaluate on (the eval split is empty)")
    plan = plan_evaluation(config, held_out, Path(benchmarks))
    models = {"policy": (policy, "the train_policy stage"), "reference": (reference, "the prepare_model stage")}
    answers = generate_answers(config, plan, models, Path(generations))
    with open_judges(config.judge, config.dimensions.names) as judges:
        rows, results = judge_answers(config, plan, answers, judges, Path(out).parent)
    if eval_pairs is not None:
        results["heldout_preference"] = preference_accuracy(config, read_jsonl(eval_pairs, PreferenceRow), models)
    results["training_budget"] = training_budget_of(policy)
    results["training_reward"] = training_reward_of(policy, config.train)
    write_jsonl(out, rows)
    write_metrics(metrics, results)
    return results


#: metrics.json's first keys, so that `dvc exp show` and `dvc metrics show` lead with them
HEADLINE_METRICS = ("win_rate_vs_reference", "score_changes", "policy", "reference", "training_reward")


def write_metrics(path, results: Mapping[str, Any]) -> None:
    """``results`` as JSON, every level sorted by key except the first, which leads with the headline."""
    nested = json.loads(json.dumps(results, sort_keys=True))
    ordered = {key: nested.pop(key) for key in HEADLINE_METRICS if key in nested} | nested
    atomic_write_text(path, json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")


def held_out_prompts(config, tasks: Path, eval_pairs: Path | None) -> list:
    """The prompts to answer: the task pool's eval split, or for a file the validated eval pairs'
    prompts, once each."""
    from moalign.data.schema import PreferenceRow, TaskPrompt, read_jsonl

    if config.data.source != "file":
        return [t for t in read_jsonl(tasks, TaskPrompt) if t.split == "eval"]
    if eval_pairs is None:
        raise EvaluationInputError("data.source is 'file': pass --eval-pairs data/validated/eval.jsonl")
    prompts, seen = [], set()
    for row in read_jsonl(eval_pairs, PreferenceRow):
        if row.prompt_id not in seen:  # one evaluation per prompt, however many pairs it has
            seen.add(row.prompt_id)
            prompts.append(TaskPrompt(id=row.prompt_id, split="eval", category=row.source, prompt=row.prompt))
    return prompts
