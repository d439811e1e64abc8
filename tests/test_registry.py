"""moalign.registry against a throwaway SQLite MLflow store, with a tiny random Llama (offline)."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from moalign import registry, tracking  # noqa: E402
from moalign.registry import (  # noqa: E402
    dvc_lock_hash,
    dvc_tracked_hash,
    git_commit,
    log_and_register,
)

DATA_MD5 = "7681d8eb7f57ac072b1ae5ffd7f6858a.dir"


# --------------------------------------------------------------------------------------------------
# fixtures (isolated_mlflow lives in conftest.py)
# --------------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> tuple[Path, str]:
    """A git repo with one commit and a ``data.dvc``; returns (path, HEAD sha)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "data.dvc").write_text(
        f"outs:\n- md5: {DATA_MD5}\n  size: 300071\n  nfiles: 1\n  hash: md5\n  path: data/task\n"
    )
    _git(repo, "add", "data.dvc")
    _git(repo, "commit", "-q", "-m", "data")
    return repo, _git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama + WordLevel tokenizer, saved with save_pretrained (no download)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{f"w{i}": i + 3 for i in range(100)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny") / "policy"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------
# lineage
# --------------------------------------------------------------------------------------------------


def test_git_commit_inside_and_outside_a_repo(
    git_repo: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, sha = git_repo
    assert git_commit(repo) == sha
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") == sha
    # Stop git from finding a repository above tmp (e.g. when tmp lives inside a checkout).
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert git_commit(outside) is None
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert git_commit(empty) is None  # no commits yet
    assert git_commit(tmp_path / "does-not-exist") is None


def test_dvc_tracked_hash(tmp_path: Path) -> None:
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text(
        f"outs:\n- md5: {DATA_MD5}\n  size: 300071\n  nfiles: 1\n  hash: md5\n  path: data/task\n"
    )
    assert dvc_tracked_hash(dvc_file) == DATA_MD5
    assert dvc_tracked_hash(tmp_path / "missing.dvc") is None
    two = tmp_path / "two.dvc"
    two.write_text("outs:\n- md5: a\n  path: x\n- md5: b\n  path: y\n")
    with pytest.raises(ValueError, match="exactly one"):
        dvc_tracked_hash(two)


def test_dvc_lock_hash(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  validate:\n    cmd: x\n    outs:\n"
        "    - path: data/validated\n      hash: md5\n      md5: abc.dir\n"
    )
    assert dvc_lock_hash(lock, "data/validated") == "abc.dir"
    assert dvc_lock_hash(lock, "data/validated/") == "abc.dir"
    assert dvc_lock_hash(lock, "models/policy") is None
    assert dvc_lock_hash(tmp_path / "none.lock", "x") is None


# --------------------------------------------------------------------------------------------------
# logging and registering a model
# --------------------------------------------------------------------------------------------------


def _step_history() -> list[dict]:
    # The shape of transformers' Trainer.state.log_history.
    return [
        {"loss": 1.5, "grad_norm": 2.0, "learning_rate": 5e-5, "epoch": 0.33, "step": 1},
        {"loss": 1.25, "grad_norm": 1.0, "learning_rate": 4e-5, "epoch": 0.66, "step": 2},
        {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": 3e-5, "epoch": 1.0, "step": 3},
        {"train_runtime": 1.5, "train_loss": 1.3, "total_flos": 0.0, "epoch": 1.0, "step": 3, "note": "done"},
    ]


def test_log_and_register_two_versions(
    isolated_mlflow: Path, tiny_model_dir: Path, git_repo: tuple[Path, str]
) -> None:
    repo, sha = git_repo
    tracking.configure("sqlite:///mlflow.db", "moalign-test")
    report = isolated_mlflow / "report.json"
    report.write_text('{"win_rate": 0.6}')
    curves = isolated_mlflow / "plots"
    curves.mkdir()
    (curves / "train_curves.json").write_text("[]")
    params = {
        "seed": 0,
        "train": {"beta": 0.8, "lora": {"r": 16}},
        "annotate": {"max_new_tokens": 48},
        "hf_token": "hf_SUPERSECRET",
        "judge": {"api_key": "sk-SUPERSECRET", "password": "SUPERSECRET"},
    }
    final = {
        "win_rate": 0.6,
        "per_dimension": {"verbosity": 0.25, "correctness": 1},
        "judge": "programmatic",
        "broken": float("inf"),
    }

    first = log_and_register(
        run_name="train-1",
        params=params,
        step_metrics=_step_history(),
        final_metrics=final,
        artifacts=[report, curves],
        model_dir=tiny_model_dir,
        model_name="moalign-policy",
        tags={"stage": "train_policy"},
        repo_dir=repo,
    )
    client = MlflowClient()
    assert (first.name, first.version) == ("moalign-policy", "1")
    assert first.model_uri == "models:/moalign-policy/1"

    run = client.get_run(first.run_id)
    assert run.info.run_name == "train-1"
    assert run.info.status == "FINISHED"
    assert run.data.params["train.beta"] == "0.8"
    assert run.data.params["train.lora.r"] == "16"
    assert run.data.params["annotate.max_new_tokens"] == "48"
    for key in ("hf_token", "judge.api_key", "judge.password"):
        assert key not in run.data.params
    everything = repr(run.data.params) + repr(run.data.tags)
    assert "SUPERSECRET" not in everything

    history = client.get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.5), (2, 1.25)]
    assert [m.step for m in client.get_metric_history(first.run_id, "learning_rate")] == [1, 2, 3]
    assert client.get_metric_history(first.run_id, "train_loss")[0].step == 3
    assert "epoch" not in run.data.metrics and "step" not in run.data.metrics
    assert "note" not in run.data.metrics
    assert run.data.metrics["win_rate"] == pytest.approx(0.6)
    assert run.data.metrics["per_dimension/verbosity"] == pytest.approx(0.25)
    assert run.data.metrics["per_dimension/correctness"] == pytest.approx(1.0)
    assert "judge" not in run.data.metrics and "broken" not in run.data.metrics
    # nan loss + inf grad_norm at step 3, inf final metric
    assert run.data.tags[tracking.NONFINITE_TAG] == "3"
    assert run.data.tags["git_commit"] == sha

    artifact_paths = {item.path for item in client.list_artifacts(first.run_id)}
    assert {"report.json", "plots"} <= artifact_paths
    assert (isolated_mlflow / "mlartifacts").is_dir()  # artifacts next to mlflow.db, no ./mlruns
    assert not (isolated_mlflow / "mlruns").exists()

    version = client.get_model_version("moalign-policy", "1")
    assert version.run_id == first.run_id
    assert version.tags["git_commit"] == sha
    assert version.tags["data_hash"] == DATA_MD5
    assert version.tags["stage"] == "train_policy"
    assert str(client.get_model_version_by_alias("moalign-policy", "challenger").version) == "1"

    # The registered model is a transformers-flavor model stored as safetensors, not a pickle.
    info = mlflow.models.get_model_info(first.model_uri)
    assert "transformers" in info.flavors
    assert info.flavors["transformers"]["task"] == "text-generation"
    local = Path(mlflow.artifacts.download_artifacts(first.model_uri, dst_path=str(isolated_mlflow / "dl")))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".pkl", ".bin", ".pt")) for name in files)

    second = log_and_register(
        run_name="train-2",
        params={"train": {"beta": 0.5}},
        step_metrics=[{"loss": 0.9, "step": 1}],
        final_metrics={"win_rate": 0.7},
        artifacts=[],
        model_dir=tiny_model_dir,
        model_name="moalign-policy",
        tags={"stage": "train_policy"},
        repo_dir=repo,
        data_hash="override-hash",
    )
    assert second.version == "2" and second.run_id != first.run_id
    assert str(client.get_model_version_by_alias("moalign-policy", "challenger").version) == "2"
    assert client.get_model_version("moalign-policy", "2").tags["data_hash"] == "override-hash"
    assert "challenger" not in client.get_model_version("moalign-policy", "1").aliases
    assert math.isclose(client.get_run(second.run_id).data.metrics["win_rate"], 0.7)


def test_lineage_unknown_outside_git(
    isolated_mlflow: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(isolated_mlflow.parent))
    tracking.configure("sqlite:///mlflow.db", "moalign-test")
    result = log_and_register(
        run_name="no-lineage",
        params={},
        step_metrics=[],
        final_metrics={},
        artifacts=[],
        model_dir=tiny_model_dir,
        model_name="lineage-free",
        tags={},
        repo_dir=isolated_mlflow,
    )
    tags = MlflowClient().get_model_version(result.name, result.version).tags
    assert tags["git_commit"] == registry.UNKNOWN
    assert tags["data_hash"] == registry.UNKNOWN


def test_rejects_missing_inputs_before_logging(isolated_mlflow: Path, tiny_model_dir: Path) -> None:
    tracking.configure("sqlite:///mlflow.db", "moalign-test")
    adapter = isolated_mlflow / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    common = dict(
        run_name="x", params={}, step_metrics=[], final_metrics={}, model_name="m", tags={}
    )
    with pytest.raises(FileNotFoundError, match="LoRA adapter"):
        log_and_register(artifacts=[], model_dir=adapter, **common)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        log_and_register(artifacts=[isolated_mlflow / "nope.json"], model_dir=tiny_model_dir, **common)
    assert MlflowClient().search_runs([mlflow.get_experiment_by_name("moalign-test").experiment_id]) == []


def test_register_continues_the_training_run(isolated_mlflow: Path, tiny_model_dir: Path) -> None:
    experiment_id = tracking.configure("sqlite:///mlflow.db", "moalign-test")
    client = MlflowClient()
    history = [{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}]
    trained = tracking.start_training_run(
        experiment_id, "dpo-tiny", {"train": {"beta": 0.8}, "register": {"model_name": "a"}}, fingerprint="fp"
    )
    tracking.finish_training_run(trained, history)
    common = dict(final_metrics={"win_rate": 0.7}, artifacts=[], model_dir=tiny_model_dir, model_name="moalign-policy",
                  tags={}, data_hash="h", step_metrics=history)
    version = log_and_register(
        run_name="ignored", params={"train": {"beta": 0.8}, "register": {"model_name": "b"}, "evaluate": {"n": 3}},
        run_id=trained, **common,
    )
    assert version.run_id == trained
    run = client.get_run(trained)
    assert run.info.run_name == "dpo-tiny"
    assert run.data.metrics["win_rate"] == pytest.approx(0.7)
    assert len(client.get_metric_history(trained, "loss")) == 2  # not replayed a second time
    assert run.data.params["evaluate.n"] == "3"  # new keys are added ...
    assert run.data.params["register.model_name"] == "a"  # ... logged ones are immutable: a tag says
    assert run.data.tags["param_at_register.register.model_name"] == "b"
    # a run id this store does not know (another machine's mlflow.db): a new run with the history
    other = log_and_register(run_name="fresh", params={}, run_id="0" * 32, **common)
    assert other.run_id != trained
    assert len(client.get_metric_history(other.run_id, "loss")) == 2


def test_registering_the_same_training_twice_keeps_one_version(
    isolated_mlflow: Path, tiny_model_dir: Path, git_repo: tuple[Path, str]
) -> None:
    repo, _ = git_repo
    tracking.configure("sqlite:///mlflow.db", "moalign-test")
    common = dict(run_name="train", params={"train": {"beta": 0.8}}, step_metrics=[{"loss": 0.9, "step": 1}],
                  artifacts=[], model_dir=tiny_model_dir, model_name="moalign-policy", tags={}, repo_dir=repo)
    first = log_and_register(final_metrics={"win_rate": 0.6}, **common)
    again = log_and_register(final_metrics={"win_rate": 0.6}, **common)  # the register stage rerun
    assert again == first
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name = 'moalign-policy'")] == ["1"]
    assert len(client.get_metric_history(first.run_id, "loss")) == 1
    assert len(client.search_runs([client.get_experiment_by_name("moalign-test").experiment_id])) == 1
    # another evaluation of the same weights is another version
    other = log_and_register(final_metrics={"win_rate": 0.7}, **common)
    assert other.version == "2"
