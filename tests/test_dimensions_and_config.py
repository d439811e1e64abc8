from pathlib import Path

import pytest
import yaml

from moalign.config import Params, ParamsError, load_params, parse_params
from moalign.dimensions import dimension_prompts

ROOT = Path(__file__).resolve().parents[1]

TEMPLATE = "Focus on {dimension} (target score {score}/5).\n{prompt}"


def test_dimension_prompts_differ_only_in_their_dimension_part():
    dims = ["correctness", "instruction_following", "verbosity"]
    prompts = dimension_prompts(TEMPLATE, "What is 2 + 2?", dims, {d: 4 for d in dims})
    assert len(set(prompts)) == 3
    for dim, prompt in zip(dims, prompts, strict=True):
        # each is exactly the template on the ORIGINAL prompt: no prefix of another dimension leaks in
        assert prompt == f"Focus on {dim.replace('_', ' ')} (target score 4/5).\nWhat is 2 + 2?"
        assert prompt.count("Focus on") == 1


def test_dimension_prompts_need_every_score():
    with pytest.raises(KeyError, match="verbosity"):
        dimension_prompts(TEMPLATE, "x", ["correctness", "verbosity"], {"correctness": 3})


def test_repository_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.train.beta == 0.8 and params.train.gamma == 2.0


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ParamsError) as error:
        parse_params({"train": {"method": "ppo"}})
    message = str(error.value)
    assert "train.method" in message and "amopo" in message


def test_unknown_key_and_bad_range_are_named():
    with pytest.raises(ParamsError) as error:
        parse_params({"train": {"betta": 0.1, "beta": -1}})
    assert "train.betta" in str(error.value) and "train.beta" in str(error.value)


def test_fixed_weights_must_match_dimensions():
    with pytest.raises(ParamsError, match="fixed_weights"):
        parse_params({"train": {"weights": "fixed", "fixed_weights": [1, 2]}})


def test_template_needs_placeholders_and_local_model_needs_path(tmp_path):
    with pytest.raises(ParamsError, match="dimensions.template"):
        parse_params({"dimensions": {"template": "no placeholders"}})
    with pytest.raises(ParamsError, match="model.path"):
        parse_params({"model": {"source": "local"}})
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(["not", "a", "mapping"]))
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)
    with pytest.raises(ParamsError, match="no such file"):
        load_params(tmp_path / "missing.yaml")


def test_documented_row_schema_is_current():
    import json

    from moalign.data.schema import preference_row_json_schema

    documented = json.loads((ROOT / "docs/preference_row.schema.json").read_text())
    assert documented == preference_row_json_schema(), "regenerate docs/preference_row.schema.json"


def test_data_and_judge_settings_are_checked_at_load_time():
    with pytest.raises(ParamsError, match="data.path is required"):
        parse_params({"data": {"source": "file"}})
    with pytest.raises(ParamsError, match="needs an LLM judge"):
        parse_params({"data": {"source": "file", "path": "data/raw/x.jsonl"}})
    with pytest.raises(ParamsError, match=r"reverse_scores names \['length'\]"):
        parse_params({"data": {"reverse_scores": ["length"]}})
    with pytest.raises(ParamsError, match="pair_by must be 'mean' or one of"):
        parse_params({"data": {"pair_by": "vibes"}})
    with pytest.raises(ParamsError, match="judge.base_url and judge.model are required"):
        parse_params({"judge": {"backend": "openai_compatible"}})
    ok = parse_params({"data": {"source": "file", "path": "x.jsonl", "format": "helpsteer2"},
                       "judge": {"backend": "local_server"}})
    assert ok.judge.server.port == 8012 and ok.data.format == "helpsteer2"


def test_a_pasted_api_key_is_refused_without_being_echoed():
    with pytest.raises(ParamsError) as error:
        parse_params({"judge": {"api_key_env": "sk-proj-abc123XYZ"}})
    assert "NAME of an environment variable" in str(error.value)
    assert "abc123XYZ" not in str(error.value)
    assert parse_params({"judge": {"api_key_env": "OPENAI_API_KEY"}}).judge.api_key_env == "OPENAI_API_KEY"


def test_train_seed_defaults_to_the_top_level_seed():
    assert Params.model_validate({"seed": 3}).train_seed == 3
    assert Params.model_validate({"seed": 3, "train": {"seed": 7}}).train_seed == 7


def test_a_tracking_server_in_the_environment_replaces_the_sqlite_store(monkeypatch):
    import moalign.config as config

    assert load_params(ROOT / "params.yaml").register_.tracking_uri == "sqlite:///mlflow.db"
    # what the variable held when moalign was imported (MLflow later sets it itself)
    monkeypatch.setattr(config, "SERVER_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_params(ROOT / "params.yaml").register_.tracking_uri == "http://127.0.0.1:5000"


def test_a_model_shipping_its_own_code_is_not_run_unless_trusted(tmp_path, monkeypatch):
    import json

    from transformers import AutoModelForCausalLM

    import moalign.models as models

    model_dir = tmp_path / "custom"
    model_dir.mkdir()
    marker = tmp_path / "code-ran"
    (model_dir / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n"
    )
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}))
    monkeypatch.setattr(models, "_trust_remote_code", False)
    with pytest.raises(models.ModelDirError, match="model.trust_remote_code"):
        models.from_pretrained(AutoModelForCausalLM, model_dir)
    assert not marker.exists()  # refused before any of its code ran, and no [y/N] prompt
    assert load_params(ROOT / "params.yaml").model.trust_remote_code is False
    models.allow_remote_code(True)  # opted in by name: its code runs (loading it further may fail)
    with pytest.raises(Exception):  # noqa: B017 - the fake model has no weights; what matters is the marker
        models.from_pretrained(AutoModelForCausalLM, model_dir)
    assert marker.read_text() == "ran"


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    twice = tmp_path / "params.yaml"
    twice.write_text(text + "train:\n  beta: 0.1\n")  # a second train: section at the end
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("train:"))
    last = len(text.splitlines()) + 1
    with pytest.raises(ParamsError, match=rf"key 'train' appears twice .*lines {first} and {last}"):
        load_params(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  beta: 0.5\n  epochs: 1\n  beta: 0.9\n")
    with pytest.raises(ParamsError, match=r"key 'beta' appears twice .*lines 2 and 4"):
        load_params(nested)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_by_key(tmp_path, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  beta: {value}\n")
    with pytest.raises(ParamsError, match=r"train\.beta.*finite"):
        load_params(path)


@pytest.mark.parametrize("value", [
    "meta-llama/Llama-3.1-8B-Instruct",
    "models--meta-llama--Llama-3.1-8B/snapshots/5206a32e0bd3067aef1ce90f5528ade7d866253f",
    "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4",
    "instruction_following_and_harmlessness_of_the_answer",  # words, however long
    "moalign-amopo-sweep-learning-rate-0001-beta-08",
    "sk-learn-compatible-model",
    "https://api.openai.com/v1",
    "https://alice@llm.example.com/v1",  # a user name alone is no credential
    "https://llm.example.com/openai/v1?api-version=2024-02-01",
    "postgresql://mlflow@db:5432/mlflow",
    "sqlite:///mlflow.db",
    TEMPLATE,
])
def test_legitimate_values_do_not_look_like_credentials(value):
    from moalign.credentials import credential_shape

    assert credential_shape(value) is None
    judge = {"backend": "openai_compatible", "base_url": "https://api.openai.com/v1", "model": value}
    assert parse_params({"judge": judge}).judge.model == value


@pytest.mark.parametrize("value", [
    "sk-proj-Xq3fT9vLm2Rk8WbN4pYc7HdJ0sGa5EuZ",
    "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    "5206a32e0bd3067aef1ce90f5528ade7",  # an opaque token: nothing in params.yaml is a bare hash
    "https://llm.example.com/v1?token=abc",
    "https://9fK2mQx7RtL4pZw8VbN3cYs6HdJ1gAe5UoT0iPq@llm.example.com/v1",
    "Focus on {dimension}; key sk-ant-api03-Kd83jfL2mQp9ZxR7tW1yB4nV6cH0gS5e\n{prompt}",  # anywhere in a text
])
def test_credentials_are_refused_in_any_string_and_never_echoed(value):
    from moalign.credentials import credential_shape

    assert credential_shape(value)
    for raw in ({"dimensions": {"names": ["correctness", value]}}, {"reward": {"classes": {value: 2}}},
                {"train": {"lora": {"target_modules": [value]}}}, {"register": {"experiment": value}}):
        with pytest.raises(ParamsError, match="looks like") as error:
            parse_params(raw)
        assert value not in str(error.value)


def test_a_tracking_server_password_from_the_environment_is_used_but_never_printed(monkeypatch):
    from typer.testing import CliRunner

    import moalign.config as config
    from moalign.cli import app

    # only a value from params.yaml ends in dvc.lock: the environment's may carry a password
    monkeypatch.setattr(config, "SERVER_TRACKING_URI", "postgresql://mlflow:Hunter2Secret@db:5432/mlflow")
    assert load_params(ROOT / "params.yaml").register_.tracking_uri.endswith(":Hunter2Secret@db:5432/mlflow")
    result = CliRunner().invoke(app, ["check-params", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0 and "postgresql://mlflow:***@db:5432/mlflow" in result.output
    assert "Hunter2Secret" not in result.output


@pytest.mark.parametrize(("names", "message"), [
    (["correctness", " verbosity"], "starts or ends with whitespace"),
    (["correctness", "<verbosity>"], "holds '<', '>' or a line break"),
])
def test_dimension_names_a_control_tag_can_carry(names, message):
    with pytest.raises(ParamsError, match=rf"dimensions\.names\.1: .*{message}"):
        parse_params({"dimensions": {"names": names}})


def test_a_template_may_hold_literal_braces_and_a_score_format():
    template = 'Focus on {dimension} ({score:>2}/5). Reply as {{"score": n}}.\n{prompt}'
    assert parse_params({"dimensions": {"template": template}}).dimensions.template == template


def test_a_folder_given_as_params_is_named_not_a_traceback(tmp_path):
    with pytest.raises(ParamsError, match="cannot be read"):
        load_params(tmp_path)
