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


def test_within_prompt_trend_sees_a_rise_that_prompt_difficulty_hides():
    import random

    from moalign.training.runs import reward_trend

    rng = random.Random(1)
    difficulty = {f"p{i}": rng.gauss(0, 1.0) for i in range(12)}  # prompts differ far more than the rise
    history = []
    for step in range(1, 31):
        drawn = rng.sample(sorted(difficulty), 3)
        rewards = {p: difficulty[p] + 0.01 * step + rng.gauss(0, 0.05) for p in drawn}
        history.append({"phase": "rloo", "step": step, "reward": sum(rewards.values()) / 3})
        history.append({"phase": "rloo", "step": step, "prompt_rewards": rewards})
    trend = reward_trend(history, "reward")["rloo"]
    assert trend["ci95"][0] < 0 < trend["ci95"][1]  # the step means cannot tell
    within = trend["within_prompt"]
    assert 0 < within["ci95"][0] < 0.01 < within["ci95"][1] and within["prompts"] == 12
    assert within["observations"] == 90


def test_within_prompt_trend_needs_repeated_prompts():
    from moalign.training.runs import within_prompt_trend

    once = [(f"p{i}", float(i), 1.0) for i in range(5)]
    assert within_prompt_trend(once) == {"slope": None, "ci95": None, "observations": 0, "prompts": 0}
    flat = [(p, float(s), {"a": 0.0, "b": 1.0}[p] + 0.1 * (-1) ** s) for p in "ab" for s in range(1, 9)]
    low, high = within_prompt_trend(flat)["ci95"]
    assert low < 0 < high


def test_prompt_reward_log_keeps_each_steps_newest_attempt(tmp_path):
    from types import SimpleNamespace

    from moalign.training.online import PromptRewardLog, prompt_key, prompt_reward_entries

    path = tmp_path / "prompt_rewards.jsonl"

    def reward(prompts, completions, **_):
        return [float(len(c)) for c in completions]

    first = PromptRewardLog(reward, path)
    assert first.__name__ == "reward"
    for step in (0, 1):  # TRL passes the state before the step it trains
        assert first(prompts=["a", "a", "b"], completions=["x", "xxx", "xx"],
                     trainer_state=SimpleNamespace(global_step=step)) == [1.0, 3.0, 2.0]
    # a crash after step 2, a resume from step 1's checkpoint: step 2 is scored again, differently
    with path.open("a") as handle:
        handle.write('{"attempt": 1, "st')  # torn by the crash
    resumed = PromptRewardLog(reward, path)
    resumed(prompts=[[{"role": "user", "content": "a"}]], completions=["xxxxx"], step=2)
    entries = prompt_reward_entries(path, "rloo", step_offset=10)
    assert entries == [
        {"phase": "rloo", "step": 11, "prompt_rewards": {prompt_key("a"): 2.0, prompt_key("b"): 2.0}},
        {"phase": "rloo", "step": 12, "prompt_rewards": {prompt_key("a"): 5.0}},
    ]
    assert prompt_reward_entries(tmp_path / "missing.jsonl", "rloo", 0) == []


def test_resume_skips_and_removes_checkpoints_cut_short(tmp_path, caplog):
    import logging

    from moalign.training.runs import resumable_checkpoint

    assert resumable_checkpoint(tmp_path / "missing") is None
    for step, state in ((8, '{"global_step": 8}'), (16, '{"global_step": 16}'), (24, '{"global_st'), (32, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    (tmp_path / "checkpoint-40.partial" / "checkpoint-40").mkdir(parents=True)  # a save cut short by a kill
    with caplog.at_level(logging.WARNING, logger="moalign.training.runs"):
        assert resumable_checkpoint(tmp_path) == str(tmp_path / "checkpoint-16")  # 16 < 24 < 32 by number
    assert "checkpoint-32 is incomplete" in caplog.text and "checkpoint-24 is incomplete" in caplog.text
    assert "checkpoint-40.partial is a checkpoint whose saving was cut short" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-16", "checkpoint-8", "checkpoint-x"]


class _Line(torch.nn.Module):
    """y = w x + b, whose loss the Trainer minimises."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x, labels):
        return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}


def test_atomic_checkpoints_keep_rotation_and_the_best_checkpoint(tmp_path):
    """Saved through a staging folder, checkpoints rotate as the Trainer's own do, and the best one
    (the first here: the loss only falls, and higher counts as better) is named where it ends up."""
    from transformers import Trainer, TrainingArguments

    from moalign.training.runs import numbered_checkpoints, with_atomic_checkpoints

    points = [{"x": [float(x)], "labels": 2.0 * x + 1.0} for x in range(8)]
    kept = {}
    for name, trainer_class in (("plain", Trainer), ("atomic", with_atomic_checkpoints(Trainer))):
        out = tmp_path / name
        args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, learning_rate=0.05,
                                 save_strategy="steps", save_steps=1, eval_strategy="steps", eval_steps=1,
                                 save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="loss",
                                 greater_is_better=True, report_to=[], use_cpu=True, disable_tqdm=True)
        torch.manual_seed(0)
        trainer = trainer_class(model=_Line(), args=args, train_dataset=points, eval_dataset=points)
        trainer.train()
        assert trainer.state.best_model_checkpoint == str(out / "checkpoint-1")
        assert not list(out.glob("*.partial"))
        kept[name] = [p.name for p in numbered_checkpoints(out)]
        for checkpoint in numbered_checkpoints(out):
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            assert state["best_model_checkpoint"] == str(out / "checkpoint-1"), checkpoint
    assert kept["atomic"] == kept["plain"] == ["checkpoint-1", "checkpoint-4"]
