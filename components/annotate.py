"""Stage annotate: preference pairs with a score per dimension, from the embedded task or your file.

``data.source: embedded`` samples on-policy candidates from the starting policy for the embedded
task's prompts, scores them with the judge and pairs best against worst. ``data.source: file``
loads your pairs (``data.format``) and has the judge score only the dimensions the file lacks.

Writes ``pairs.jsonl`` (preference rows, train and eval prompts), ``candidates.jsonl`` (every scored
response, paired or not: the reward model's data), ``stats.json`` (counts, including prompts that
yielded no pair and why) and, for a file, ``judged.jsonl`` (each judge call's dimensions and scores).
Judge calls are cached (``judge.cache_path``) and sampled candidates journaled (``--journal``): a
killed or over-budget run resumes without repeating either, and samples what an uninterrupted run
would have.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)

SOURCE = "embedded-task"


@app.command()
def main(
    tasks: Path = typer.Option(..., help="Prompt pool of the embedded task (data/task/prompts.jsonl)."),
    model: Path = typer.Option(..., help="Policy that samples the embedded task's candidates (models/base)."),
    out: Path = typer.Option(..., help="Output folder (data/annotated)."),
    journal: Path = typer.Option(
        Path("cache/generations/annotate.jsonl"), help="Sampled candidates, appended batch by batch: a rerun "
        "samples only the batches it lacks."
    ),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("annotate")
    from moalign.data.schema import write_json, write_jsonl
    from moalign.judges import open_judge
    from moalign.judges.llm import BudgetExhausted, JudgeConfigError
    from moalign.judges.server import JudgeServerError

    out.mkdir(parents=True, exist_ok=True)
    try:
        with open_judge(config.judge, config.dimensions.names) as judge:
            if config.data.source == "file":
                from moalign.annotation import responses_of

                rows, audit, stats = annotate_file(config, judge, log)
                write_jsonl(out / "judged.jsonl", audit)
                candidates = responses_of(rows)
            else:
                rows, candidates, stats = annotate_embedded(config, tasks, model, judge, log, journal)
    except BudgetExhausted as error:
        typer.secho(f"{error}. Every answer so far is cached in {config.judge.cache_path}: rerun to go on.",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from None
    except (JudgeConfigError, JudgeServerError) as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    write_jsonl(out / "pairs.jsonl", rows)
    write_jsonl(out / "candidates.jsonl", candidates)
    write_json(out / "stats.json", stats)
    log.info("%d pairs; skipped: %s", len(rows), stats.get("skipped") or "none")


def annotate_embedded(config, tasks: Path, model: Path, judge, log, journal: Path):
    from moalign.annotation import annotate
    from moalign.data.schema import TaskPrompt, read_jsonl
    from moalign.generation import DecodingConfig, generate_resumable, model_fingerprint
    from moalign.models import load_model_and_tokenizer

    section = config.annotate
    pool = read_jsonl(tasks, TaskPrompt)
    chosen = select_prompts(pool, section.n_train_prompts, section.n_eval_prompts)
    policy, tokenizer = load_model_and_tokenizer(model, config.model.dtype)
    decoding = DecodingConfig(
        max_new_tokens=section.max_new_tokens,
        do_sample=True,
        temperature=section.temperature,
        top_p=section.top_p,
        num_return_sequences=section.candidates_per_prompt,
        batch_size=max(1, section.batch_size // section.candidates_per_prompt),
        seed=config.seed,
    )
    log.info("sampling %d candidates for %d prompts", section.candidates_per_prompt, len(chosen))
    model_id = model_fingerprint(model)

    def sample(prompts: list[str]) -> list[list[str]]:
        # annotate() asks for the chosen tasks' prompts in order: the task ids key the journal
        keyed = dict(zip((task.id for task in chosen), prompts, strict=True))
        done = generate_resumable(policy, tokenizer, keyed, decoding, journal, model_id=model_id,
                                  description="annotate")
        return [done[key] for key in keyed]

    rows, candidates, stats = annotate(chosen, sample, judge, SOURCE, section.pairing, section.max_pairs_per_prompt)
    return rows, candidates, stats.as_dict()


def annotate_file(config, judge, log):
    from moalign.annotation import fill_missing_scores
    from moalign.data.loaders import LoaderError, load_pairs

    data = config.data
    try:
        rows, loaded = load_pairs(
            data.path, data.format, config.dimensions.names, eval_fraction=data.eval_fraction,
            pair_by=data.pair_by, reverse_scores=data.reverse_scores, max_pairs=data.max_pairs,
        )
        log.info("%d pairs from %d records of %s (%s)", len(rows), loaded.records, data.path, data.format)
        rows, audit, judged = fill_missing_scores(rows, judge, config.dimensions.names)
    except (LoaderError, FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    return rows, audit, {**loaded.as_dict(), **dict(judged), "source": str(data.path), "format": data.format}

def select_prompts(pool, n_train: int, n_eval: int):
    """The first n prompts of each split (the pool is shuffled within a split when generated)."""
    train = [t for t in pool if t.split == "train"]
    held_out = [t for t in pool if t.split == "eval"]
    for name, have, want in (("train", train, n_train), ("eval", held_out, n_eval)):
        if want > len(have):
            raise typer.BadParameter(f"annotate.n_{name}_prompts={want} but the pool has {len(have)} {name} prompts")
    chosen = train[:n_train] + held_out[:n_eval]
    seen: set[str] = set()
    for task in chosen:
        if task.id in seen:
            raise typer.BadParameter(f"prompt id {task.id!r} appears twice in the prompt pool")
        seen.add(task.id)
    return chosen


if __name__ == "__main__":
    app()
