"""Reference log-probabilities cached as data: read back by training, and never silently wrong."""

import json

import pytest
from typer.testing import CliRunner

from components import reference_logps as reference_stage
from moalign.data.schema import write_jsonl
from moalign.training import preference
from moalign.training.reference import load_reference, reference_key, save_reference, score_reference
from tests.test_methods_training import params, rows


def test_key_depends_on_pair_prompt_and_response():
    keys = {reference_key("p", "x", "y"), reference_key("q", "x", "y"), reference_key("p", "x2", "y"),
            reference_key("p", "x", "y2")}
    assert len(keys) == 4
    assert reference_key("p", "x", "y") == reference_key("p", "x", "y")


def test_reference_free_methods_need_no_scores(tiny_model_dir):
    config = params("simpo")
    cache, meta = score_reference(rows(), tiny_model_dir, train=config.train, dimensions=config.dimensions)
    assert cache == {} and meta["needed"] is False and "simpo" in meta["reason"]


def _spy_reference(monkeypatch) -> list[int]:
    """Counts the pairs train_policy scores itself (not taken from the cache)."""
    scored, real = [], preference.score_pairs

    def spy(model, features, collator, batch_size):
        scored.append(len(features))
        return real(model, features, collator, batch_size)

    monkeypatch.setattr(preference, "score_pairs", spy)
    return scored


def test_training_reads_the_cache_and_scores_only_what_it_lacks(tiny_model_dir, tmp_path, monkeypatch):
    config = params("dpo")
    data = rows(4)
    cache, meta = score_reference(data, tiny_model_dir, train=config.train, dimensions=config.dimensions)
    assert meta["needed"] and meta["sequences"] == 8 == len(cache)
    save_reference(tmp_path / "ref", cache, meta)
    loaded = load_reference(tmp_path / "ref", max_length=config.train.max_length)
    assert loaded == pytest.approx(cache)

    kwargs = dict(train=config.train, dimensions=config.dimensions)
    scored = _spy_reference(monkeypatch)
    cold = preference.train_policy(data, tiny_model_dir, tmp_path / "a", tmp_path / "ca", **kwargs)
    assert scored == [4]
    scored.clear()
    warm = preference.train_policy(data, tiny_model_dir, tmp_path / "b", tmp_path / "cb", reference_cache=loaded, **kwargs)
    assert scored == [0]  # every pair came from the cache ...
    losses = lambda history: [h["loss"] for h in history if "loss" in h]  # noqa: E731
    assert losses(warm) == pytest.approx(losses(cold), abs=1e-5)  # ... and trains identically
    scored.clear()
    partial = dict(list(loaded.items())[2:])  # the first pair's two scores are missing
    preference.train_policy(data, tiny_model_dir, tmp_path / "c", tmp_path / "cc", reference_cache=partial, **kwargs)
    assert scored == [1]


def test_cache_values_are_the_ones_used(tiny_model_dir, tmp_path):
    """A cache that says the reference preferred the rejected answers changes DPO's implicit rewards."""
    config = params("dpo")  # one step: its margin is measured before the update
    data = rows(2)
    cache, _ = score_reference(data, tiny_model_dir, train=config.train, dimensions=config.dimensions)
    skewed = dict(cache)
    for row in data:
        skewed[reference_key(row.id, row.prompt, row.chosen.text)] += 10.0
    kwargs = dict(train=config.train, dimensions=config.dimensions)
    honest = preference.train_policy(data, tiny_model_dir, tmp_path / "a", tmp_path / "ca", reference_cache=cache, **kwargs)
    lied = preference.train_policy(data, tiny_model_dir, tmp_path / "b", tmp_path / "cb", reference_cache=skewed, **kwargs)
    margin = lambda history: next(h["rewards/margins"] for h in history if "loss" in h)  # noqa: E731
    assert margin(lied) == pytest.approx(margin(honest) - config.train.beta * 10.0, abs=1e-3)


def test_stale_or_missing_cache(tmp_path, caplog):
    save_reference(tmp_path / "ref", {"k": -1.0}, {"max_length": 128, "needed": True})
    assert load_reference(tmp_path / "ref", max_length=128) == {"k": -1.0}
    assert load_reference(tmp_path / "ref", max_length=256) == {}
    assert "max_length 128" in caplog.text
    with pytest.raises(FileNotFoundError, match="reference_logps"):
        load_reference(tmp_path / "nowhere", max_length=128)


def test_stage_writes_scores_and_meta(tiny_model_dir, tmp_path):
    pairs = tmp_path / "train.jsonl"
    write_jsonl(pairs, rows(3))
    (tmp_path / "params.yaml").write_text(json.dumps(params("cal_dpo").model_dump(by_alias=True)))
    result = CliRunner().invoke(reference_stage.app, [
        "--pairs", str(pairs), "--model", str(tiny_model_dir), "--out", str(tmp_path / "ref"),
        "--params", str(tmp_path / "params.yaml"),
    ])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "ref/meta.json").read_text())
    assert meta["needed"] and meta["method"] == "cal_dpo" and meta["sequences"] == 6
    assert len((tmp_path / "ref/logps.jsonl").read_text().splitlines()) == 6


def test_steps_count_across_phases_and_reach_on_log(tiny_model_dir, tmp_path):
    config = params("spo")
    seen = []
    history = preference.train_policy(rows(4), tiny_model_dir, tmp_path / "o", tmp_path / "c",
                                      train=config.train, dimensions=config.dimensions, on_log=seen.append)
    steps = [(h["phase"], h["step"]) for h in history if "loss" in h]
    assert steps == [("spo-correctness", 1), ("spo-correctness", 2), ("spo-verbosity", 3), ("spo-verbosity", 4)]
    assert [(h["phase"], h["step"]) for h in seen if "loss" in h] == steps
