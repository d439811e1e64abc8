"""The multi-head reward model: intensity classes, the per-head loss, pooling, persistence,
examples and metrics, and a toy task the tiny model must learn."""

import json
import math
import random

import pytest
import torch
from transformers import TrainerCallback

from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.models import ModelDirError
from moalign.rewards.model import (
    MultiHeadRewardModel,
    RewardModelError,
    encode_pairs,
    head_losses,
    intensity_class,
    pad_left,
    score_texts,
)
from moalign.annotation import responses_of
from moalign.rewards.training import head_metrics, reward_examples, train_reward_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _model(tiny_model_dir, dimensions=("correctness", "verbosity"), n_classes=(5, 2), seed=0):
    torch.manual_seed(seed)
    return MultiHeadRewardModel.from_backbone(tiny_model_dir, dimensions, n_classes)


# ------------------------------------------------------------------------------------------------
# intensity classes


@pytest.mark.parametrize(
    "n, expected",
    [(2, [0, 0, 0, 1, 1]), (3, [0, 0, 1, 1, 2]), (4, [0, 0, 1, 2, 3]), (5, [0, 1, 2, 3, 4])],
)
def test_intensity_class_table(n, expected):
    assert [intensity_class(score, n) for score in range(1, 6)] == expected


def test_intensity_class_errors():
    with pytest.raises(ValueError, match=r"score 6 .*1-5"):
        intensity_class(6, 5)
    with pytest.raises(ValueError, match=r"score 0 .*1-5"):
        intensity_class(0, 2)
    with pytest.raises(RewardModelError, match="2 to 5 classes"):
        intensity_class(3, 6)
    with pytest.raises(RewardModelError, match="2 to 5 classes"):
        intensity_class(3, 1)


# ------------------------------------------------------------------------------------------------
# loss


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(z) for z in logits))


def test_head_losses_match_hand_computed_cross_entropy():
    a = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    b = [[2.0, -1.0], [0.0, 0.3]]
    labels = torch.tensor([[0, 1], [2, 1]])
    total, per_head = head_losses([torch.tensor(a), torch.tensor(b)], labels)
    expected_a = (_ce(a[0], 0) + _ce(a[1], 2)) / 2
    expected_b = (_ce(b[0], 1) + _ce(b[1], 1)) / 2
    assert per_head.tolist() == pytest.approx([expected_a, expected_b], abs=1e-6)
    assert float(total) == pytest.approx(expected_a + expected_b, abs=1e-6)


def test_head_losses_ignore_minus_100_and_all_ignored_head_is_zero():
    a = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    b = [[2.0, -1.0], [0.0, 0.3]]
    logits = [torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)]
    total, per_head = head_losses(logits, torch.tensor([[-100, -100], [2, -100]]))
    assert per_head.tolist() == pytest.approx([_ce(a[1], 2), 0.0], abs=1e-6)
    assert not torch.isnan(total)
    total.backward()  # an all-ignored head gives zero gradient, not NaN
    assert torch.equal(logits[1].grad, torch.zeros(2, 2))
    assert torch.equal(logits[0].grad[0], torch.zeros(3))


def test_head_losses_bad_label_names_the_head():
    logits = [torch.zeros(2, 5), torch.zeros(2, 2)]
    with pytest.raises(RewardModelError, match=r"head harmlessness \(2 classes\): label 2"):
        head_losses(logits, torch.tensor([[0, 1], [4, 2]]), names=["helpfulness", "harmlessness"])
    with pytest.raises(RewardModelError, match="label -1"):
        head_losses(logits, torch.tensor([[-1, 1], [4, 0]]))
    with pytest.raises(RewardModelError, match="2 heads"):
        head_losses(logits, torch.tensor([[0], [1]]))


# ------------------------------------------------------------------------------------------------
# the model


def test_pooling_reads_the_last_real_token_with_left_and_right_padding(tiny_model_dir, tokenizer):
    model = _model(tiny_model_dir).eval()
    sequences = encode_pairs(
        tokenizer, ["Hi", "Tell me a story"], ["Hello!", "Once upon a time there was"], 64
    )
    assert len(sequences[0]) != len(sequences[1])
    with torch.no_grad():
        alone = [
            model(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long)).logits
            for s in sequences
        ]
        # a pad id other than EOS: SmolLM2 pads with EOS, the token every row ends with, and with
        # EOS padding the state at the last right-pad position equals the last real token's anyway
        pad = 0 if tokenizer.eos_token_id != 0 else 1
        left_ids, left_mask = pad_left(sequences, pad)
        width = left_ids.shape[1]
        right_ids = torch.full_like(left_ids, pad)
        right_mask = torch.zeros_like(left_mask)
        for i, s in enumerate(sequences):
            right_ids[i, : len(s)] = torch.tensor(s)
            right_mask[i, : len(s)] = 1
        assert left_mask[0].sum() < width  # the shorter row is padded on both layouts
        for ids, mask in ((left_ids, left_mask), (right_ids, right_mask)):
            batched = model(input_ids=ids, attention_mask=mask).logits
            for head, n_k in enumerate(model.n_classes):
                assert batched[head].shape == (2, n_k)
                for row in range(2):
                    torch.testing.assert_close(batched[head][row], alone[row][head][0], atol=1e-5, rtol=0)


def test_forward_returns_loss_with_labels(tiny_model_dir, tokenizer):
    model = _model(tiny_model_dir)
    ids, mask = pad_left(encode_pairs(tokenizer, ["a", "b"], ["x", "y z"], 64), tokenizer.pad_token_id)
    output = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([[4, 0], [-100, 1]]))
    assert output.loss is not None and output.head_losses.shape == (2,)
    assert output.loss.item() == pytest.approx(output.head_losses.sum().item())
    assert model(input_ids=ids, attention_mask=mask).loss is None


def test_encode_pairs_ends_with_eos_and_truncates_from_the_left(tokenizer):
    full = encode_pairs(tokenizer, ["a question"], ["an answer"], 512)[0]
    short = encode_pairs(tokenizer, ["a question"], ["an answer"], 8)[0]
    assert full[-1] == tokenizer.eos_token_id
    assert short == full[-8:]
    assert "an answer" in tokenizer.decode(short)


def test_save_load_round_trip_and_mismatch_errors(tiny_model_dir, tokenizer, tmp_path):
    model = _model(tiny_model_dir)
    prompts, responses = ["What is 2+2?", "Say hi"], ["4", "Hi there, friend."]
    before = score_texts(model, tokenizer, prompts, responses)
    directory = model.save(tmp_path / "reward", tokenizer=tokenizer)
    meta = json.loads((directory / "reward_heads.json").read_text())
    assert meta == {
        "dimensions": ["correctness", "verbosity"],
        "n_classes": [5, 2],
        "pooling": "last_token",
        "format_version": 1,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    loaded = MultiHeadRewardModel.load(directory, ["correctness", "verbosity"], [5, 2])
    after = score_texts(loaded, tokenizer, prompts, responses)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert sum(float(p.sum()) for p in after) == pytest.approx(2 * len(prompts))

    with pytest.raises(RewardModelError) as error:
        MultiHeadRewardModel.load(directory, ["correctness", "harmlessness"], [5, 2])
    message = str(error.value)
    assert "correctness(5), verbosity(2)" in message and "correctness(5), harmlessness(2)" in message
    with pytest.raises(RewardModelError, match=r"verbosity\(2\).*verbosity\(3\)"):
        MultiHeadRewardModel.load(directory, n_classes=[5, 3])

    (directory / "reward_heads.json").unlink()
    with pytest.raises(ModelDirError, match=r"reward.*train_reward"):
        MultiHeadRewardModel.load(directory)


def test_save_replaces_an_existing_model(tiny_model_dir, tmp_path):
    _model(tiny_model_dir).save(tmp_path / "reward")
    _model(tiny_model_dir, ("helpfulness",), (3,)).save(tmp_path / "reward")
    assert MultiHeadRewardModel.load(tmp_path / "reward").dimensions == ("helpfulness",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward"]


def test_score_texts_returns_input_order(tiny_model_dir, tokenizer):
    model = _model(tiny_model_dir)
    prompts = ["p"] * 5
    responses = ["a long answer " * 6, "x", "medium answer here", "y y", "another fairly long answer " * 3]
    batched = score_texts(model, tokenizer, prompts, responses, batch_size=2)
    for i in range(len(responses)):
        one = score_texts(model, tokenizer, [prompts[i]], [responses[i]])
        for head in range(2):
            torch.testing.assert_close(batched[head][i], one[head][0], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# examples and metrics


def _row(pair_id, prompt, chosen, chosen_scores, rejected, rejected_scores):
    return PreferenceRow(
        id=pair_id,
        source="test",
        prompt_id=pair_id,
        split="train",
        prompt=prompt,
        chosen=ScoredResponse(text=chosen, scores=chosen_scores),
        rejected=ScoredResponse(text=rejected, scores=rejected_scores),
    )


def test_reward_examples_dedup_labels_and_missing_scores():
    rows = [
        _row("p1", "Q1", "good", {"a": 5, "b": 4}, "bad", {"a": 1, "b": 3}),
        _row("p2", "Q1", "good", {"a": 5, "b": 4}, "meh", {"b": 2}),  # judge failed on a for "meh"
        _row("p3", "Q2", "good", {"a": 3, "b": 1}, "bad", {"a": 2, "b": 5}),  # same texts, other prompt
    ]
    examples = reward_examples(responses_of(rows), ["a", "b"], [5, 2])
    assert [e["id"] for e in examples] == [
        "p1:chosen",
        "p1:rejected",
        "p2:rejected",
        "p3:chosen",
        "p3:rejected",
    ]
    assert [e["labels"] for e in examples] == [[4, 1], [0, 0], [-100, 0], [2, 0], [1, 1]]
    assert examples[2] == {"id": "p2:rejected", "prompt": "Q1", "response": "meh", "labels": [-100, 0]}


def test_reward_examples_bad_score_names_the_row():
    rows = [_row("pair-7", "Q", "x", {"a": 5}, "y", {"a": 9})]
    with pytest.raises(RewardModelError, match=r"response pair-7:rejected: a score 9"):
        reward_examples(responses_of(rows), ["a"], [5])


def test_responses_split_by_prompt_and_a_prompt_in_both_splits_is_refused():
    from moalign.data.schema import ScoredCandidate
    from moalign.rewards.training import split_candidates

    def candidate(i, prompt_id, split):
        return ScoredCandidate(id=f"{prompt_id}:{i}", prompt_id=prompt_id, split=split, prompt="Q", text=str(i),
                               scores={"a": 3})

    train, held_out = split_candidates([candidate(0, "q1", "train"), candidate(0, "q2", "eval"),
                                        candidate(1, "q1", "train")])
    assert [c.id for c in train] == ["q1:0", "q1:1"] and [c.id for c in held_out] == ["q2:0"]
    with pytest.raises(RewardModelError, match="q1 has responses in both .* q1:1"):
        split_candidates([candidate(0, "q1", "train"), candidate(1, "q1", "eval")])


def test_head_metrics_hand_computed():
    # head a: confidences 0.85 (right), 0.85 (wrong), 0.65 (right); the fourth row is unlabelled
    a = torch.tensor([[0.85, 0.15], [0.85, 0.15], [0.35, 0.65], [0.45, 0.55]])
    b = torch.tensor([[0.2, 0.3, 0.5]] * 4)
    labels = torch.tensor([[0, -100], [1, -100], [1, -100], [-100, -100]])
    metrics = head_metrics([a, b], labels, ["a", "b"])
    assert metrics["a"]["n"] == 3
    assert metrics["a"]["accuracy"] == pytest.approx(2 / 3)
    # bin (0.8, 0.9]: 2 rows, accuracy 0.5 vs confidence 0.85; bin (0.6, 0.7]: 1 row, 1.0 vs 0.65
    assert metrics["a"]["ece"] == pytest.approx(2 / 3 * 0.35 + 1 / 3 * 0.35)
    assert metrics["b"] == {"accuracy": None, "ece": None, "n": 0}

    perfect = head_metrics([torch.tensor([[1.0, 0.0], [0.0, 1.0]])], torch.tensor([[0], [1]]), ["a"])
    assert perfect["a"] == {"accuracy": 1.0, "ece": pytest.approx(0.0), "n": 2}


def test_majority_baseline_is_the_share_of_the_train_majority_class():
    from moalign.rewards.training import majority_classes

    train_labels = torch.tensor([[2, 0], [2, 1], [1, 1], [-100, 1]])
    assert majority_classes(train_labels, [3, 2]) == [2, 1]
    assert majority_classes(torch.tensor([[-100]]), [2]) == [None]
    assert majority_classes(torch.tensor([[1], [0]]), [2]) == [0]  # a tie: the smaller class
    eval_labels = torch.tensor([[2, 0], [0, 0], [2, 1], [-100, 0]])
    probs = [torch.tensor([[0.0, 0.0, 1.0]] * 4), torch.tensor([[1.0, 0.0]] * 4)]
    metrics = head_metrics(probs, eval_labels, ["a", "b"], majority=[2, 1])
    assert metrics["a"]["majority_baseline"] == pytest.approx(2 / 3)  # 2 of the 3 labelled rows are class 2
    assert metrics["b"]["majority_baseline"] == pytest.approx(1 / 4)
    assert metrics["b"]["accuracy"] == pytest.approx(3 / 4)  # a head that beats its baseline
    # head a always answers the majority class: no gain on any resample; head b's gain is +1/2 on average
    assert metrics["a"]["gain_ci95"] == [0.0, 0.0]
    low, high = metrics["b"]["gain_ci95"]
    assert -1.0 <= low < 0.5 < high <= 1.0


# ------------------------------------------------------------------------------------------------
# a separable toy task


def _toy_examples(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    subjects = [
        "the film",
        "this meal",
        "our trip",
        "the book",
        "that song",
        "his talk",
        "the game",
        "my day",
    ]
    verbs = ["was", "felt", "seemed", "is", "looked"]
    tails = ["", " overall", " to me", " honestly", " today", " again", " in the end"]
    examples = []
    for i in range(count):
        word = "great" if i % 2 == 0 else "awful"
        text = f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {word}{rng.choice(tails)}."
        labels = [4, 0] if word == "great" else [0, 1]
        examples.append(
            {"id": f"toy-{seed}-{i}", "prompt": "How was it?", "response": text, "labels": labels}
        )
    return examples


class _Logs(TrainerCallback):
    def __init__(self):
        self.entries, self.steps = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.entries.append(dict(logs or {}))

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_tiny_reward_model_learns_a_separable_toy_task(tiny_model_dir, tokenizer, tmp_path):
    train = _toy_examples(128, seed=1)
    seen = {e["response"] for e in train}
    held_out = [e for e in _toy_examples(64, seed=2) if e["response"] not in seen]
    assert len(held_out) >= 24
    model = _model(tiny_model_dir, ("sentiment", "negativity"), (5, 2))
    labels = torch.tensor([e["labels"] for e in held_out])
    untrained = head_metrics(
        score_texts(model, tokenizer, [e["prompt"] for e in held_out], [e["response"] for e in held_out]),
        labels,
        model.dimensions,
    )
    assert min(m["accuracy"] for m in untrained.values()) < 0.9  # the task is not solved before training

    logs = _Logs()
    metrics = train_reward_model(
        model,
        tokenizer,
        train,
        held_out,
        output_dir=tmp_path / "checkpoints",
        learning_rate=2e-3,
        epochs=6,
        batch_size=16,
        max_length=32,
        seed=0,
        save_steps=1000,
        callbacks=[logs],
    )
    assert set(metrics) == {"train", "eval"}
    for head in ("sentiment", "negativity"):
        assert metrics["eval"][head]["n"] == len(held_out)
        assert metrics["eval"][head]["accuracy"] >= 0.9, metrics
    losses = [e for e in logs.entries if "loss" in e]
    assert losses and all({"loss/sentiment", "loss/negativity"} <= set(e) for e in losses)
    first, last = losses[0], losses[-1]
    assert (
        last["loss/sentiment"] < first["loss/sentiment"]
        and last["loss/negativity"] < first["loss/negativity"]
    )


def test_training_resumes_from_the_last_checkpoint(tiny_model_dir, tokenizer, tmp_path):
    examples = _toy_examples(8, seed=3)
    settings = {
        "output_dir": tmp_path / "checkpoints",
        "learning_rate": 1e-3,
        "epochs": 1,
        "batch_size": 4,
        "max_length": 32,
        "seed": 0,
        "save_steps": 1,
    }
    first = train_reward_model(_model(tiny_model_dir, seed=1), tokenizer, examples, examples, **settings)
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "model.safetensors").exists()
    logs = _Logs()
    # a differently initialised model: equal metrics mean the checkpoint's weights were loaded
    again = train_reward_model(
        _model(tiny_model_dir, seed=2), tokenizer, examples, examples, **settings, callbacks=[logs]
    )
    assert logs.steps == []  # nothing left to train
    assert again == first

    # other settings: the old checkpoints are not resumed but deleted
    other = {**settings, "learning_rate": 5e-4}
    train_reward_model(
        _model(tiny_model_dir, seed=2), tokenizer, examples, examples, **other, callbacks=[logs]
    )
    assert logs.steps == [1, 2]


def test_fresh_heads_depend_on_the_seed_alone(tiny_model_dir):
    first = MultiHeadRewardModel.from_backbone(tiny_model_dir, ["a", "b"], [3, 2], seed=1)
    torch.rand(5)  # the global generator's state must not matter
    again = MultiHeadRewardModel.from_backbone(tiny_model_dir, ["a", "b"], [3, 2], seed=1)
    other = MultiHeadRewardModel.from_backbone(tiny_model_dir, ["a", "b"], [3, 2], seed=2)
    for mine, same, different in zip(first.heads, again.heads, other.heads, strict=True):
        assert torch.equal(mine.weight, same.weight)
        assert not torch.equal(mine.weight, different.weight)


def test_top_layers_trains_only_the_top_of_the_backbone_and_the_heads(tiny_model_dir, tokenizer, tmp_path):
    model = _model(tiny_model_dir, ("sentiment", "negativity"), (5, 2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_reward_model(model, tokenizer, _toy_examples(16, seed=1), _toy_examples(8, seed=2), output_dir=tmp_path / "ckpt",
                       learning_rate=1e-2, epochs=1, batch_size=8, max_length=32, seed=0, top_layers=1)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert any(name.startswith("heads.") for name in changed)
    assert any(name.startswith("backbone.layers.1.") for name in changed)  # the top one of the tiny model's 2
    assert not any(name.startswith(("backbone.layers.0.", "backbone.embed_tokens")) for name in changed), changed
