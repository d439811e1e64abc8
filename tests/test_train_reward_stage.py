"""The train_reward stage on the tiny model: the model folder, its statistics, the metrics, and the
registered MLflow pyfunc scoring rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moalign.annotation import responses_of
from moalign.data.schema import PreferenceRow, ScoredCandidate, ScoredResponse, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["correctness", "instruction_following", "verbosity", "harmlessness"]


def _rows(split: str, n: int) -> list[PreferenceRow]:
    rows = []
    for i in range(n):
        good = {d: 5 for d in DIMS}
        bad = {d: 1 for d in DIMS} | {"harmlessness": 2}
        rows.append(PreferenceRow(
            id=f"{split}{i}", source="test", prompt_id=f"q{split}{i}", split=split, prompt=f"What is {i} + {i}?",
            chosen=ScoredResponse(text=f"It is {2 * i}. Great answer.", scores=good),
            rejected=ScoredResponse(text=f"No idea, {i}. Awful answer.", scores=bad),
        ))
    return rows


@pytest.fixture
def stage_run(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["reward"].update(classes={"harmlessness": 2}, epochs=2, batch_size=4, max_length=48, learning_rate=1e-3)
    raw["register"].update(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="reward-test")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    # a prompt whose candidates all tied made no pair, but its responses still train the heads
    unpaired = ScoredCandidate(id="qtied:0", prompt_id="qtied", split="train", prompt="Say hi.", text="Hi.",
                               scores={d: 3 for d in DIMS})
    write_jsonl(tmp_path / "candidates.jsonl", [*responses_of(_rows("train", 8) + _rows("eval", 2)), unpaired])
    from components.train_reward import app

    args = ["--candidates", "candidates.jsonl", "--model", str(tiny_model_dir),
            "--out", "models/reward", "--metrics", "metrics/reward.json", "--checkpoints", "ckpt"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp_path


def test_train_reward_stage_writes_model_stats_metrics_and_registers(stage_run: Path) -> None:
    from moalign.rewards import RewardStats
    from moalign.rewards.model import MultiHeadRewardModel

    out = stage_run / "models" / "reward"
    model = MultiHeadRewardModel.load(out, DIMS, [5, 5, 5, 2])
    assert model.n_classes == (5, 5, 5, 2)
    stats = RewardStats.load(out)
    assert stats.dimensions == DIMS and stats.n_classes == [5, 5, 5, 2] and stats.count == 17
    # judge scores 1, 3 (the unpaired response) and 5 only: tags will not ask for correctness 2 or 4
    assert stats.label_counts[0] == [8, 0, 1, 0, 8] and stats.label_counts[3] == [9, 8]
    assert stats.supported_intensities()[0] == [1, 3, 5]
    metrics = json.loads((stage_run / "metrics" / "reward.json").read_text())
    assert set(metrics) == {"train", "eval"} and set(metrics["eval"]) == set(DIMS)
    assert metrics["eval"]["harmlessness"]["n"] == 4

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{stage_run / 'mlflow.db'}")
    scorer = mlflow.pyfunc.load_model("models:/moalign-reward@challenger")
    import pandas as pd

    scored = scorer.predict(pd.DataFrame({
        "prompt": ["<correctness 5>\nWhat is 1 + 1?", "What is 1 + 1?"],
        "response": ["It is 2. Great answer.", "No idea. Awful answer."],
    }))
    assert list(scored.columns) == [*DIMS, "moslim_mapped_reward"]
    assert scored["harmlessness"].between(1, 2).all() and scored["correctness"].between(1, 5).all()
    # the tagged prompt gets Eq. 11's reward, the untagged one none
    assert scored["moslim_mapped_reward"].notna().tolist() == [True, False]


def test_a_fresh_rerun_trains_the_same_reward_model(stage_run: Path, tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from components.train_reward import app

    torch.rand(7)  # whatever drew random numbers before must not matter
    args = ["--candidates", "candidates.jsonl", "--model", str(tiny_model_dir),
            "--out", "again/reward", "--metrics", "again/reward.json", "--checkpoints", "again/ckpt", "--no-register"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first, second = (load_file(stage_run / d / "heads.safetensors") for d in ("models/reward", "again/reward"))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert (stage_run / "again/reward.json").read_text() == (stage_run / "metrics/reward.json").read_text()
