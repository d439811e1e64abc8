"""Held-out preference diagnostics: what they measure, when the trainer logs them, where they show."""

import pytest
import torch

from moalign.config import Params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.evaluation.embedded import score_changes
from moalign.training.diagnostics import diagnostic_pairs, preference_diagnostics

DIMS = ["correctness", "verbosity"]
TEMPLATE = "Focus on {dimension} (target score {score}/5).\n{prompt}"


def rows(n: int, split: str = "eval", pairs_per_prompt: int = 1) -> list[PreferenceRow]:
    return [
        PreferenceRow(
            id=f"{split}{i}-{j}", source="t", prompt_id=f"{split}q{i}", split=split, prompt=f"What is {i} + 2?",
            chosen=ScoredResponse(text=str(i + 2), scores={"correctness": 5, "verbosity": 4}),
            rejected=ScoredResponse(text=f"It is {i + 3 + j}, I am sure.", scores={"correctness": 1, "verbosity": 2}),
        )
        for i in range(n)
        for j in range(pairs_per_prompt)
    ]


def swapped(pairs: list[PreferenceRow]) -> list[PreferenceRow]:
    return [r.model_copy(update={"chosen": r.rejected, "rejected": r.chosen}) for r in pairs]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from moalign.models import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model_dir, "float32")


def test_diagnostic_pairs_cover_prompts_first():
    pairs = rows(3, pairs_per_prompt=2)
    assert [r.id for r in diagnostic_pairs(pairs, 4)] == ["eval0-0", "eval1-0", "eval2-0", "eval0-1"]
    assert len(diagnostic_pairs(pairs, None)) == 6


def test_margins_are_length_normalised_loglik_differences(tiny):
    from moalign.training.batching import PairCollator, completion_token_logps, split_logps, tokenize_pair

    model, tokenizer = tiny
    pairs = rows(3)
    metrics = preference_diagnostics(model, tokenizer, pairs, DIMS, TEMPLATE, max_length=128, batch_size=2)
    assert set(metrics) == {"rewards/accuracies", "rewards/margins", "correctness/accuracy", "correctness/margin",
                            "verbosity/accuracy", "verbosity/margin"}
    # by hand, pair by pair, under the plain prompt
    by_hand = []
    with torch.no_grad():
        for row in pairs:
            batch = PairCollator(tokenizer.pad_token_id)([tokenize_pair(row, tokenizer, [row.prompt], 128)])
            logps, mask = completion_token_logps(model, batch["input_ids"], batch["attention_mask"],
                                                 batch["position_ids"], batch["completion_mask"])
            summed, lengths, _, _ = split_logps(logps, mask, 1)
            average = (summed / lengths)[0, 0]
            by_hand.append(float(average[0] - average[1]))
    assert metrics["rewards/margins"] == pytest.approx(sum(by_hand) / 3, abs=1e-5)
    assert metrics["rewards/accuracies"] == pytest.approx(sum(m > 0 for m in by_hand) / 3)
    # the same pairs the other way round: the plain prompt's margins negated (the dimension prompts
    # change too, as they carry the chosen answer's scores)
    flipped = preference_diagnostics(model, tokenizer, swapped(pairs), DIMS, TEMPLATE, max_length=128)
    assert flipped["rewards/margins"] == pytest.approx(-metrics["rewards/margins"], abs=1e-5)
    assert flipped["rewards/accuracies"] == pytest.approx(1 - metrics["rewards/accuracies"])
    assert preference_diagnostics(model, tokenizer, [], DIMS, TEMPLATE, max_length=128) == {}
    model.train()  # the pass runs in eval mode and gives the caller's mode back
    preference_diagnostics(model, tokenizer, pairs[:1], DIMS, TEMPLATE, max_length=128)
    assert model.training
    model.eval()


def test_trainer_logs_diagnostics_at_step_0_every_eval_steps_and_at_the_end(tiny_model_dir, tmp_path):
    from moalign.training.preference import train_policy

    config = Params.model_validate({
        "dimensions": {"names": DIMS},
        "train": {"method": "simpo", "batch_size": 2, "epochs": 3, "save_steps": 50, "warmup_ratio": 0.0,
                  "learning_rate": 1e-2, "eval_steps": 4, "eval_pairs": 3},
    })
    seen = []
    history = train_policy(rows(4, "train"), tiny_model_dir, tmp_path / "out", tmp_path / "ckpt", train=config.train,
                           dimensions=config.dimensions, eval_rows=rows(4), on_log=seen.append)
    evals = [e for e in history if "eval_rewards/accuracies" in e]
    assert [e["step"] for e in evals] == [0, 4, 6]  # before, every 4 steps, and the last step (6)
    assert [e["step"] for e in seen if "eval_rewards/accuracies" in e] == [0, 4, 6]  # forwarded live too
    # the held-out pairs follow the same pattern as the train pairs: a training path that learns
    # moves the held-out margin up
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"] + 0.1
    assert evals[-1]["eval_correctness/accuracy"] == 1.0
    from moalign.training.runs import training_budget

    budget = training_budget(history, 4)
    assert budget["steps"] == 6 and budget["tokens"] > 6 * 2 * 2 * 5 and budget["seconds"] > 0

    # evaluate reuses the logged endpoints: they must be what scoring the saved models gives
    from moalign.models import load_model_and_tokenizer
    from moalign.training.diagnostics import logged_record, reuse_logged

    held_out = diagnostic_pairs(rows(4), 3)
    record = logged_record(history, held_out, start_model="base-fingerprint")
    assert record["start"]["rewards/margins"] == evals[0]["eval_rewards/margins"]
    assert record["end"]["correctness/accuracy"] == evals[-1]["eval_correctness/accuracy"]
    for directory, logged in ((tmp_path / "out", record["end"]), (tiny_model_dir, record["start"])):
        model, tokenizer = load_model_and_tokenizer(directory, "float32")
        scored = preference_diagnostics(model, tokenizer, held_out, DIMS, TEMPLATE,
                                        max_length=config.train.max_length, batch_size=2)
        assert scored == pytest.approx(logged, abs=1e-4)
    assert set(reuse_logged(record, held_out, "base-fingerprint")) == {"policy", "reference"}
    assert set(reuse_logged(record, held_out, "another-reference")) == {"policy"}
    assert reuse_logged(record, held_out[:2], "base-fingerprint") == {}  # other pairs: score them afresh


def test_logged_endpoints_need_step_0_and_a_later_evaluation():
    from moalign.training.diagnostics import logged_endpoints

    def entry(step, acc):
        return {"step": step, "eval_rewards/accuracies": acc, "eval_runtime": 1.0, "loss": 0.3}

    assert logged_endpoints([entry(0, 0.5), {"step": 1, "loss": 0.2}, entry(2, 0.75)]) == (
        {"rewards/accuracies": 0.5}, {"rewards/accuracies": 0.75})
    assert logged_endpoints([entry(0, 0.5)]) is None  # no evaluation after training
    assert logged_endpoints([entry(3, 0.5), entry(6, 0.75)]) is None  # resumed: the start is not known


def test_score_changes_are_paired_differences_with_intervals():
    policy = [{"a": 5, "b": 2}, {"a": 4, "b": 2}, {"a": 5, "b": 3}, {"a": 3}]
    reference = [{"a": 3, "b": 3}, {"a": 4, "b": 3}, {"a": 3, "b": 3}, {"a": 3, "b": 1}]
    changes = score_changes(policy, reference, ["a", "b"])
    assert changes["a"]["delta"] == pytest.approx(1.0) and changes["a"]["n"] == 4
    assert changes["b"]["delta"] == pytest.approx(-2 / 3) and changes["b"]["n"] == 3
    assert changes["mean_score"]["n"] == 3  # the prompt without a 'b' score is left out
    assert changes["a"]["ci95_low"] <= 1.0 <= changes["a"]["ci95_high"]
    assert changes["b"]["ci95_high"] <= 0.0
    assert score_changes([{}], [{}], ["a"])["a"] == {"delta": None, "ci95_low": None, "ci95_high": None, "n": 0}


def test_report_shows_the_heldout_preference_card(tmp_path):
    from moalign.evaluation.report import build_report

    metrics = {
        "n_prompts": 2,
        "policy": {"scores": {"correctness": 4.0, "verbosity": 3.0}, "mean_score": 3.5},
        "reference": {"scores": {"correctness": 3.0, "verbosity": 3.0}, "mean_score": 3.0},
        "win_rate_vs_reference": {"win_rate": 0.75, "ci95_low": 0.5, "ci95_high": 1.0, "wins": 1, "ties": 1,
                                  "losses": 0, "n": 2},
        "training_budget": {"examples": 12, "steps": 9, "tokens": 4321, "seconds": 55.5},
        "heldout_preference": {
            "n_pairs": 7,
            "policy": {"rewards/accuracies": 0.857, "correctness/accuracy": 1.0},
            "reference": {"rewards/accuracies": 0.429, "correctness/accuracy": 0.5},
        },
    }
    history = [{"step": s, "phase": "simpo", "eval_rewards/accuracies": a, "eval_rewards/margins": m}
               for s, a, m in ((0, 0.4, -0.1), (4, 0.9, 0.3))]
    page = build_report(tmp_path, metrics=metrics, history=history, dimensions=DIMS).read_text()
    assert 'id="heldout_preference"' in page and "7 validated eval pairs" in page
    assert "training budget: 12 examples, 9 steps, 4321 tokens, 56 s" in page
    assert "85.7%" in page and "42.9%" in page and "+42.8 pp" in page
    assert (tmp_path / "heldout_preference.png").stat().st_size > 0
