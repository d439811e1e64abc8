"""The bad-input corpus of params files, model directories, benchmark files and control tags
(tests/data/bad/{params,models,benchmarks,control_tags}): each fails with its named error before
anything is written, so the last good output stays as it was.

Every file or folder there is a case, picked up as it is added; the ``expected.json`` beside it
pairs each with its error, and a case without an entry fails.
"""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

BAD = Path(__file__).parent / "data" / "bad"
ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("params", "models", "benchmarks", "control_tags")
DIMS = ["correctness", "instruction_following", "verbosity", "harmlessness"]


def _table(folder: str) -> dict:
    return json.loads((BAD / folder / "expected.json").read_text(encoding="utf-8"))


def _cases(folder: str) -> list[str]:
    return sorted(path.name for path in (BAD / folder).iterdir() if path.name != "expected.json")


def _expected(folder: str, name: str):
    table = _table(folder)
    assert name in table, f"tests/data/bad/{folder}/{name} has no entry in its expected.json: add its error there"
    return table[name]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: an earlier output, to compare after a failure."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_expectation_has_its_case(folder):
    stale = sorted(set(_table(folder)) - {"_doc"} - set(_cases(folder)))
    assert not stale, f"tests/data/bad/{folder}/expected.json names cases that are not there: {stale}"


@pytest.mark.parametrize("name", _cases("params"))
def test_bad_params_are_refused_by_key_before_any_stage_works(name, tmp_path):
    from components import prepare_model
    from moalign.cli import app

    expected = _expected("params", name)
    path = BAD / "params" / name
    runner = CliRunner()
    checked = runner.invoke(app, ["check-params", "--params", str(path)])
    assert checked.exit_code == 2, checked.output
    assert expected["error"] in checked.output
    assert "Traceback" not in checked.output
    # a stage loads the same way: it stops with the same message, and its earlier output stays
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"made_by": "an earlier, good run"}\n')
    before = _snapshot(out)
    staged = runner.invoke(prepare_model.app, ["--out", str(out), "--params", str(path)])
    assert staged.exit_code == 2, staged.output
    assert expected["error"] in staged.output
    assert _snapshot(out) == before
    if "secret" in expected:  # a pasted key is named by its key path, never printed
        assert expected["secret"] not in checked.output + staged.output


@pytest.mark.parametrize("name", _cases("models"))
def test_bad_model_directories_are_named_before_anything_is_written(name, tmp_path):
    from components import prepare_model

    fragment = _expected("models", name)
    source = shutil.copytree(BAD / "models" / name, tmp_path / name)  # transformers may write beside it
    params = tmp_path / "params.yaml"  # model.trust_remote_code left at its default, false
    params.write_text(json.dumps({"model": {"source": "local", "path": str(source)}}))
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"made_by": "an earlier, good run"}\n')
    before = _snapshot(out)
    staged = CliRunner().invoke(prepare_model.app, ["--out", str(out), "--params", str(params)])
    assert staged.exit_code == 2, staged.output
    # the stage's own exit with the message, not an escaped exception (transformers' logger, bound to
    # a stream of an earlier in-process run, may print noise here that a real process does not)
    assert isinstance(staged.exception, SystemExit)
    assert fragment in staged.output.splitlines()[-1]
    assert _snapshot(out) == before


def _evaluation_config(case: dict, corpus_file: Path):
    from moalign.config import Params

    evaluate: dict = {"benchmarks": [case["benchmark"]], "benchmark_prompts": 2}
    if case["read_as"].startswith("evaluate."):
        evaluate[case["read_as"].removeprefix("evaluate.")] = str(corpus_file)
    judge = {"backend": "programmatic"} if case["benchmark"] == "ifbench" else {
        "backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "never-called"}
    return Params.model_validate({"judge": judge, "evaluate": evaluate})


@pytest.mark.parametrize("name", _cases("benchmarks"))
def test_bad_benchmark_files_stop_the_evaluation_before_it_writes(name, tmp_path):
    from moalign.data.schema import TaskPrompt, write_jsonl
    from moalign.evaluation.run import evaluate_stage

    case = _expected("benchmarks", name)
    corpus_file = BAD / "benchmarks" / name
    benchmarks = shutil.copytree(ROOT / "data" / "benchmarks", tmp_path / "benchmarks")
    if not case["read_as"].startswith("evaluate."):
        shutil.copyfile(corpus_file, benchmarks / case["read_as"])
    config = _evaluation_config(case, corpus_file)
    tasks = tmp_path / "prompts.jsonl"
    write_jsonl(tasks, [TaskPrompt(id="e1", split="eval", category="arithmetic", prompt="What is 2 + 2?")])
    out, metrics = tmp_path / "eval" / "responses.jsonl", tmp_path / "metrics.json"
    out.parent.mkdir()
    out.write_text('{"id": "from an earlier, good evaluation"}\n')
    metrics.write_text('{"win_rate_vs_reference": 0.6}\n')
    before = {path: path.read_bytes() for path in (out, metrics)}
    # the models are not there: a file that passed its check would fail later, on another error
    with pytest.raises(Exception) as error:  # noqa: B017 - the class is checked by name below
        evaluate_stage(config, tasks, None, tmp_path / "policy", tmp_path / "base", out, metrics, benchmarks,
                       tmp_path / "generations")
    assert case["raises"] in [cls.__name__ for cls in type(error.value).__mro__], repr(error.value)
    assert case["error"] in str(error.value)
    assert {path: path.read_bytes() for path in before} == before
    assert not (tmp_path / "generations").exists()


@pytest.mark.parametrize("name", _cases("control_tags"))
def test_malformed_control_tags_are_named(name):
    from moalign.control_tags import ControlTagError, parse_tags

    fragment = _expected("control_tags", name)
    with pytest.raises(ControlTagError) as error:
        parse_tags((BAD / "control_tags" / name).read_text(encoding="utf-8"), DIMS)
    assert fragment in str(error.value)


def test_a_judge_endpoint_is_named_without_its_credentials(serve, tmp_path, caplog, monkeypatch):
    """params.yaml refuses such a URL; one given in code still never reaches a message, a log line or
    the call cache."""
    import logging

    import openai._base_client

    from moalign.data.schema import TaskPrompt
    from moalign.judges.llm import EndpointConfig, LLMJudge
    from moalign.credentials import redact_url_password

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001)
    server = serve(faults={"http_500": 1.0}, fault_seed=0)
    host = server.url.removeprefix("http://")
    endpoint = EndpointConfig(base_url=f"http://alice:Hunter2Secret@{host}",
                              model="fake-judge", max_retries=0, concurrency=1)
    with caplog.at_level(logging.WARNING, logger="moalign.judges.llm"), \
            LLMJudge(["helpfulness"], endpoint, tmp_path / "cache.sqlite") as judge:
        judge.score_batch([(TaskPrompt(id="q", split="train", category="t", prompt="Hi?"), "Hello.")])
        summary = judge.failure_summary()
    failures = [record.getMessage() for record in caplog.records if "failed" in record.getMessage()]
    assert failures and all(f"http://alice:***@{host}: HTTP 500" in line for line in failures)
    assert summary["endpoint"] == f"http://alice:***@{host}"
    assert b"Hunter2Secret" not in (tmp_path / "cache.sqlite").read_bytes()
    assert "Hunter2Secret" not in caplog.text
    # the same helper masks a key in the query (an endpoint that takes ?api_key=)
    assert redact_url_password("https://h/v1?api-version=1&api_key=Hunter2Secret#x") == "https://h/v1?api-version=1&api_key=***#x"
