"""The run bookkeeping every training shares: claimed checkpoint folders and resumable phases."""

import json

import torch

from moalign.training.runs import FINISHED_LOG, claim_checkpoints, fingerprint, run_phase


def test_fingerprint_is_stable_and_tells_runs_apart():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint({"a": 1})) == 16


def test_a_foreign_run_is_wiped_and_the_same_run_kept(tmp_path):
    folder = tmp_path / "ckpt"
    claim_checkpoints(folder, "run-a")
    (folder / "checkpoint-1").mkdir()
    claim_checkpoints(folder, "run-a")
    assert (folder / "checkpoint-1").exists(), "the same run must resume, not start over"
    claim_checkpoints(folder, "run-b")
    assert not (folder / "checkpoint-1").exists()
    assert (folder / "fingerprint.txt").read_text() == "run-b"


def test_a_folder_without_a_stamp_is_not_trusted(tmp_path):
    (tmp_path / "ckpt" / "checkpoint-3").mkdir(parents=True)
    claim_checkpoints(tmp_path / "ckpt", "run-a")
    assert not (tmp_path / "ckpt" / "checkpoint-3").exists()


def test_a_shared_folder_loses_only_the_owned_entries(tmp_path):
    folder = tmp_path / "ckpt"
    claim_checkpoints(folder, "outer")  # the caller's own stamp
    (folder / "checkpoint-2").mkdir()
    (folder / "notes.txt").write_text("caller's")
    claim_checkpoints(folder, "inner-1", stamp="ppo_fingerprint.txt", owned="checkpoint-*")
    claim_checkpoints(folder, "inner-2", stamp="ppo_fingerprint.txt", owned="checkpoint-*")
    assert not (folder / "checkpoint-2").exists()
    assert (folder / "notes.txt").read_text() == "caller's"
    assert (folder / "fingerprint.txt").read_text() == "outer"


class _Forwarded(list):
    def __call__(self, entry):
        self.append(entry)


def _trainer(model, entries, calls):
    def train(forward):
        calls.append(forward)
        for entry in entries:
            if forward is not None:
                forward.entry(entry)
        return model, entries

    return train


def test_phases_count_steps_across_phases_and_forward_them(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    history, calls, forwarded = [], [], _Forwarded()
    run_phase("one", tmp_path / "p1", history, _trainer(model, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}],
                                                         calls), on_log=forwarded, keep=False, dtype=torch.float32)
    run_phase("two", tmp_path / "p2", history, _trainer(model, [{"step": 1, "loss": 0.2}], calls),
              on_log=forwarded, keep=False, dtype=torch.float32)
    assert [(e["phase"], e["step"]) for e in history] == [("one", 1), ("one", 2), ("two", 3)]
    assert [(e["phase"], e["step"]) for e in forwarded] == [("one", 1), ("one", 2), ("two", 3)]
    assert not (tmp_path / "p1" / "final").exists(), "an unkept phase writes no weights"


def test_a_kept_phase_is_reloaded_instead_of_trained_again(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the "trained" weights differ from the start
    calls, first = [], []
    run_phase("one", tmp_path / "p1", first, _trainer(model, [{"step": 4, "loss": 1.0}], calls),
              on_log=None, keep=True, dtype=torch.float32)
    assert json.loads((tmp_path / "p1" / "final" / FINISHED_LOG).read_text()) == first

    again = []
    reloaded = run_phase("one", tmp_path / "p1", again, _trainer(None, [], calls), on_log=None, keep=True,
                         dtype=torch.float32)
    assert calls == [None], "the finished phase must not be trained again (and nothing listens)"
    assert again == first
    for (name, trained), loaded in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(loaded, trained, msg=name)


def test_half_saved_phase_is_trained_again(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path / "p1" / "final")  # killed before its log was written
    calls = []
    run_phase("one", tmp_path / "p1", [], _trainer(model, [], calls), on_log=None, keep=True, dtype=torch.float32)
    assert len(calls) == 1


def test_training_budget_sums_phases_and_keeps_unknowns_unknown():
    from moalign.training.runs import training_budget

    # transformers logs both counters cumulatively within a phase, in step entries too
    history = [
        {"phase": "a", "step": 1, "loss": 1.0, "num_input_tokens_seen": 100, "train_runtime": 4.0},
        {"phase": "a", "step": 2, "loss": 0.9, "num_input_tokens_seen": 220, "train_runtime": 9.0},
        {"phase": "a", "step": 2, "train_runtime": 10.04},
        {"phase": "b", "step": 3, "loss": 0.8, "num_input_tokens_seen": 90},
        {"phase": "b", "step": 3, "train_runtime": 5.0},
    ]
    assert training_budget(history, 7) == {"examples": 7, "steps": 3, "tokens": 310, "seconds": 15.0}
    assert training_budget([{"step": 4, "loss": 1.0}], 2) == {"examples": 2, "steps": 4, "tokens": None, "seconds": None}


def test_reward_trend_separates_a_rising_reward_from_noise():
    import random

    from moalign.training.runs import reward_trend

    rng = random.Random(0)
    rising = [{"phase": "rloo", "step": s, "reward": 0.02 * s + rng.gauss(0, 0.1)} for s in range(1, 41)]
    # no trend, only step-to-step swings (a random flat draw would exclude 0 one time in 20)
    flat = [{"phase": "flat", "step": s, "reward": 0.1 * (-1) ** s} for s in range(1, 41)]
    trends = reward_trend(rising + flat + [{"phase": "rloo", "step": 41, "loss": 1.0}], "reward")
    low, high = trends["rloo"]["ci95"]
    assert 0 < low < 0.02 < high and trends["rloo"]["steps"] == 40
    low, high = trends["flat"]["ci95"]
    assert low < 0 < high


def test_reward_trend_needs_three_finite_points_for_an_interval():
    from moalign.training.runs import reward_trend

    history = [{"phase": None, "step": 1, "reward": 1.0}, {"phase": None, "step": 2, "reward": float("nan")},
               {"phase": None, "step": 3, "reward": 2.0}]
    assert reward_trend(history, "reward") == {
        "None": {"steps": 2, "first": 1.0, "last": 2.0, "slope": None, "ci95": None}
    }
    assert reward_trend([{"step": 1, "loss": 0.5}], "reward") is None


def test_training_reward_reads_an_online_policys_log(tmp_path):
    from types import SimpleNamespace

    from moalign.evaluation.run import training_reward_of

    (tmp_path / FINISHED_LOG).write_text(json.dumps(
        [{"phase": "moslim_ppo", "step": s, "score_mean": 0.1 * s} for s in range(1, 6)]))
    online = SimpleNamespace(baseline_algorithm="rloo")
    trend = training_reward_of(tmp_path, SimpleNamespace(method="moslim_ppo", online=online))
    assert trend["key"] == "score_mean" and abs(trend["phases"]["moslim_ppo"]["slope"] - 0.1) < 1e-9
    assert training_reward_of(tmp_path, SimpleNamespace(method="amopo", online=online)) is None
