"""Stage commands fail early and say why: bad params before any work, missing inputs by name."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from components import evaluate, train_policy, validate

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def write_params(tmp_path, **overrides):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_invalid_param_fails_before_work_naming_key_and_allowed_values(tmp_path):
    params = write_params(tmp_path, train={"weights": "uniform"})
    result = runner.invoke(train_policy.app, ["--pairs", "nowhere.jsonl", "--model", "nowhere", "--out", str(tmp_path / "o"),
                                              "--curves", str(tmp_path / "c.json"), "--params", str(params)])
    assert result.exit_code == 2
    assert "train.weights" in result.output and "'gaussian'" in result.output and "'fixed'" in result.output
    assert not (tmp_path / "o").exists()


def test_missing_model_dir_names_path_and_the_stage_that_makes_it(tmp_path):
    params = write_params(tmp_path)
    result = runner.invoke(train_policy.app, ["--pairs", "nowhere.jsonl", "--model", str(tmp_path / "models/base"),
                                              "--out", str(tmp_path / "o"), "--curves", str(tmp_path / "c.json"),
                                              "--params", str(params)])
    assert result.exit_code != 0
    message = str(result.exception)
    assert str(tmp_path / "models/base") in message and "prepare_model" in message


def test_evaluate_names_the_missing_policy(tmp_path, tiny_model_dir):
    params = write_params(tmp_path, evaluate={"n_prompts": 1})
    tasks = tmp_path / "prompts.jsonl"
    tasks.write_text('{"id": "e1", "split": "eval", "category": "arithmetic", "prompt": "What is 1 + 1?", "checks": {"answer": 2}}\n')
    result = runner.invoke(evaluate.app, ["--tasks", str(tasks), "--policy", str(tmp_path / "models/policy"),
                                          "--reference", str(tiny_model_dir), "--out", str(tmp_path / "r.jsonl"),
                                          "--metrics", str(tmp_path / "m.json"), "--params", str(params)])
    assert result.exit_code == 2  # a named error, not a traceback
    assert "models/policy" in result.output and "train_policy" in result.output


def test_validate_reports_a_broken_json_line(tmp_path, tiny_model_dir):
    params = write_params(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "ok"}\n{not json\n')
    result = runner.invoke(validate.app, ["--pairs", str(pairs), "--tokenizer", str(tiny_model_dir),
                                          "--out", str(tmp_path / "v"), "--metrics", str(tmp_path / "m.json"),
                                          "--params", str(params)])
    assert result.exit_code != 0
    assert "pairs.jsonl:2" in result.output


def test_every_stage_explains_itself():
    for module in (train_policy, evaluate, validate):
        result = runner.invoke(module.app, ["--help"])
        assert result.exit_code == 0 and "--params" in result.output


def test_moalign_cli_checks_params(tmp_path):
    from moalign.cli import app

    good = runner.invoke(app, ["check-params", "--params", str(ROOT / "params.yaml")])
    assert good.exit_code == 0 and '"beta": 0.8' in good.output
    bad = runner.invoke(app, ["check-params", "--params", str(write_params(tmp_path, annotate={"top_p": 2}))])
    assert bad.exit_code == 2 and "annotate.top_p" in bad.output


def test_evaluate_runs_ifbench_and_resumes_from_its_journal(tmp_path, tiny_model_dir):
    import json

    params = write_params(tmp_path, evaluate={"n_prompts": 1, "max_new_tokens": 4, "benchmarks": ["ifbench"],
                                              "benchmark_prompts": 2, "benchmark_max_new_tokens": 6})
    tasks = tmp_path / "prompts.jsonl"
    tasks.write_text('{"id": "e1", "split": "eval", "category": "arithmetic", "prompt": "What is 1 + 1?", "checks": {"answer": 2}}\n')
    args = ["--tasks", str(tasks), "--policy", str(tiny_model_dir), "--reference", str(tiny_model_dir),
            "--out", str(tmp_path / "eval/responses.jsonl"), "--metrics", str(tmp_path / "m.json"),
            "--benchmarks", str(ROOT / "data/benchmarks"), "--generations", str(tmp_path / "gen"),
            "--params", str(params)]
    result = runner.invoke(evaluate.app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["ifbench"]) == {"policy", "reference"}
    assert metrics["ifbench"]["policy"]["prompt_level_strict_acc"] is not None
    rows = (tmp_path / "eval/ifbench.jsonl").read_text().splitlines()
    assert len(rows) == 4 and json.loads(rows[0])["model"] == "policy"
    journal = (tmp_path / "gen/ifbench-policy.jsonl").read_text().splitlines()
    assert len(journal) == 2
    # a rerun finds every answer in the journal: nothing is generated again, the metrics are the same
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "gen").iterdir()}
    assert runner.invoke(evaluate.app, args).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "gen").iterdir()} == before
    assert json.loads((tmp_path / "m.json").read_text())["ifbench"] == metrics["ifbench"]


def test_a_killed_annotate_samples_only_what_it_lacks_and_the_same_candidates(tmp_path, tiny_model_dir, monkeypatch):
    import json

    from components import annotate
    from moalign import generation

    tasks = tmp_path / "prompts.jsonl"
    tasks.write_text("".join(
        json.dumps({"id": f"t{i}", "split": split, "category": "arithmetic", "prompt": f"What is {i} + {i}?",
                    "checks": {"answer": 2 * i}}) + "\n"
        for i, split in enumerate(["train", "train", "train", "eval"])
    ))
    params = write_params(tmp_path, annotate={"n_train_prompts": 3, "n_eval_prompts": 1, "candidates_per_prompt": 2,
                                              "max_new_tokens": 4, "batch_size": 2},
                          judge={"cache_path": str(tmp_path / "judge.sqlite")})
    journal = tmp_path / "gen" / "annotate.jsonl"

    def run(out):
        args = ["--tasks", str(tasks), "--model", str(tiny_model_dir), "--out", str(tmp_path / out),
                "--journal", str(journal), "--params", str(params)]
        result = runner.invoke(annotate.app, args)
        assert result.exit_code == 0, result.output
        return (tmp_path / out / "candidates.jsonl").read_text()

    straight = run("straight")
    texts = [json.loads(line)["text"] for line in straight.splitlines()]
    assert len(set(texts)) > 1, "the samples must differ, or equal reruns prove nothing"
    lines = journal.read_text().splitlines()
    assert len(lines) == 4  # one prompt per batch (2 candidates each), journaled as they finish
    journal.write_text("\n".join(lines[:2]) + "\n")  # killed after two batches
    sampled = []
    real = generation.generate

    def spy(*args, on_batch=None, **kwargs):
        def record(batch):
            sampled.extend(batch)
            on_batch(batch)

        return real(*args, on_batch=record, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    assert run("resumed") == straight
    assert len(sampled) == 2, "the two journaled prompts must not be sampled again"
