"""The AMoPO batch layout and trainer on the tiny random Llama."""

import json

import pytest
import torch

from moalign.config import Params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.models import load_model_and_tokenizer
from moalign.dimensions import dimension_prompts
from moalign.training.batching import PairCollator, completion_token_logps, tokenize_pair
from moalign.training.preference import train_policy

DIMS = ["correctness", "verbosity"]
TEMPLATE = "Focus on {dimension} (target score {score}/5).\n{prompt}"


def row(i: int) -> PreferenceRow:
    return PreferenceRow(
        id=f"p{i}", source="test", prompt_id=f"q{i}", split="train", prompt=f"What is {i} + 2?",
        chosen=ScoredResponse(text=str(i + 2), scores={"correctness": 5, "verbosity": 4}),
        rejected=ScoredResponse(text=f"It is {i + 3}, I am quite sure of it.", scores={"correctness": 1, "verbosity": 2}),
    )


def prompts(pair: PreferenceRow) -> list[str]:
    return dimension_prompts(TEMPLATE, pair.prompt, DIMS, pair.chosen.scores)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


def test_batch_is_pairs_by_dimensions_by_side(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    features = [tokenize_pair(row(i), tokenizer, prompts(row(i)), max_length=256) for i in range(3)]
    batch = PairCollator(tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[0] == 3 * len(DIMS) * 2
    assert int(batch["num_prompts"]) == len(DIMS)
    assert batch["pair_ids"] == ["p0", "p1", "p2"]
    # sequence (pair 1, dimension 1, rejected) ends with pair 1's rejected answer and the end token
    index = (1 * len(DIMS) + 1) * 2 + 1
    ids = batch["input_ids"][index][batch["attention_mask"][index].bool()].tolist()
    response = features[1]["rejected_ids"]
    assert ids[-len(response):] == response
    assert batch["completion_mask"][index].sum().item() == len(response)
    decoded = tokenizer.decode(ids)
    assert "Focus on verbosity (target score 4/5)" in decoded and "What is 1 + 2?" in decoded


def test_only_a_response_the_model_ended_gets_the_end_token(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    pair = row(0)
    cut = pair.model_copy(update={"rejected": pair.rejected.model_copy(update={"truncated": True})})
    ended, cut_off = (tokenize_pair(r, tokenizer, prompts(r), max_length=256) for r in (pair, cut))
    assert ended["rejected_ids"][-1] == tokenizer.eos_token_id
    assert cut_off["rejected_ids"] == ended["rejected_ids"][:-1]  # the limit fell mid-answer: no stop learnt there
    assert cut_off["chosen_ids"] == ended["chosen_ids"]


def test_truncation_keeps_the_response_start_and_the_limit(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    long = row(0).model_copy(update={"rejected": ScoredResponse(text="word " * 400, scores={"correctness": 1, "verbosity": 1})})
    feature = tokenize_pair(long, tokenizer, prompts(long), max_length=64)
    batch = PairCollator(tokenizer.pad_token_id)([feature])
    assert batch["input_ids"].shape[1] == 64
    assert batch["completion_mask"].sum(-1).min() >= 1


def test_completion_logps_only_cover_response_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = PairCollator(tokenizer.pad_token_id)([tokenize_pair(row(0), tokenizer, prompts(row(0)), 256)])
    logps, mask = completion_token_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["completion_mask"]
    )
    assert torch.all(logps[mask == 0] == 0)
    assert torch.all(logps[mask == 1] < 0)
    # the rejected answer is the longest completion: its mask fills the kept span exactly
    assert mask[1].sum().item() == logps.shape[1] == len(tokenize_pair(row(0), tokenizer, prompts(row(0)), 256)["rejected_ids"])


def test_left_padding_does_not_change_log_probabilities(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    collate = PairCollator(tokenizer.pad_token_id)
    short, long = (tokenize_pair(row(i), tokenizer, prompts(row(i)), 256) for i in (1, 1234567))

    def chosen_logp(batch, index):
        logps, mask = completion_token_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["completion_mask"]
        )
        return (logps[index].sum() / mask[index].sum()).item()

    alone = chosen_logp(collate([short]), 0)
    padded = collate([long, short])
    assert padded["attention_mask"][len(DIMS) * 2].sum() < padded["attention_mask"].shape[1]  # really padded
    assert chosen_logp(padded, len(DIMS) * 2) == pytest.approx(alone, abs=1e-5)


def test_train_amopo_lowers_the_loss_and_saves_a_plain_model(tiny_model_dir, tmp_path):
    params = Params.model_validate({
        "dimensions": {"names": DIMS, "template": TEMPLATE},
        "train": {"batch_size": 2, "epochs": 3, "learning_rate": 5e-3, "save_steps": 2, "warmup_ratio": 0.0},
    })
    rows = [row(i) for i in range(4)]
    history = train_policy(rows, tiny_model_dir, tmp_path / "policy", tmp_path / "ckpt",
                          train=params.train, dimensions=params.dimensions)
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 6
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    for step in steps:
        assert sum(step[f"{d}/weight"] for d in DIMS) == pytest.approx(1.0, abs=1e-5)
    saved = tmp_path / "policy"
    assert (saved / "model.safetensors").exists() and not (saved / "adapter_config.json").exists()
    assert json.loads((saved / "train_log.json").read_text()) == history
    assert (tmp_path / "ckpt" / "fingerprint.txt").exists()
