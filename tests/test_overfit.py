"""Overfit a batch with every ``train.method``: a broken training path cannot stay green.

The losses match TRL to 1e-6 (tests/test_losses_baselines.py), but a loss is only as right as what
feeds it: a wrong completion mask, padding on the wrong side, chosen and rejected swapped, a
reference score keyed to the wrong sequence, an optimizer that never steps, a trained LoRA adapter
that is never merged into the saved policy all leave those tests green. Here every method trains on
a handful of examples until it must have learnt them, and the *saved* policy is judged from outside:

* Offline methods (``train_policy``): three pairs on which the starting model prefers the rejected
  response. Afterwards the saved policy must prefer the chosen one on every pair, under every prompt
  the method scores (AMoPO's K dimension prompts, controllable CPO's tagged prompt), by the method's
  own convention: length-averaged log-likelihood (SimPO, AMoPO, ORPO), summed (contrastive CPO), or
  summed minus the starting model's (DPO, Cal-DPO, MODPO, SPO, controllable CPO; for the multi-phase
  ones the final policy against the model training started from). The log-likelihoods come from one
  plain forward per sequence (no padding, no collator, no mask): the check shares nothing with the
  training path but the chat template. Reference methods also check the reference: the cached
  scores are that forward's, and at step 1 (policy = reference) the logged implicit rewards are 0.
  SFT has no preference term: the chosen responses' NLL must fall below half of the start (and
  chosen end up above rejected), token by token every response token must have been learnt and the
  prompt's last tokens not (where a misplaced completion mask shows; the collator is every offline
  method's).
* Online methods (``train_online``): the tiny random model's next-token distribution is near uniform
  over ~49k tokens, so no reward it could be given ever shows a trend. A short SFT first makes it
  answer with random mixes of "yes" and "no", about half each (``peaked_model_dir``); the reward
  model's rewards are then replaced by the share of "yes" among those words (:class:`WordReward`).
  The mean reward per training step must trend upwards (least-squares slope), the trainer must have
  logged exactly what the reward returned, and the saved policy's reward on 64 fresh samples must be
  clearly (0.2) above the starting model's. Rewarded Soups: each ingredient, on its own reward ("yes"
  for the first dimension, "no" for the second).

Which methods there are comes from the registry (``moalign.training.methods.METHODS``): a new method is collected here
and fails until it has an entry in :data:`SETTINGS`.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from statistics import fmean

import pytest
import torch

from moalign.config import Params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.generation import chat_prompt
from moalign.models import load_model_and_tokenizer
from moalign.rewards import control
from moalign.rewards.mapping import UNCONTROLLED
from moalign.training.methods import METHODS

#: every value train.method accepts, in the registry's order
TRAIN_METHODS: tuple[str, ...] = tuple(METHODS)
DIMS = ["correctness", "verbosity"]
CLASSES = [5, 5]

# ------------------------------------------------------------------------------------------------
# the settings of each case: train.* overrides on top of the offline or online defaults below

#: offline: the three pairs are one batch, so every step sees them all; warmup 0 (with warmup the
#: first steps would barely move); LoRA as params.yaml trains, so the merge into the saved policy is
#: part of what is checked
OFFLINE = {"batch_size": 3, "epochs": 20, "learning_rate": 1e-2, "warmup_ratio": 0.0, "save_steps": 1000,
           "lora": {"enabled": True}}
#: SFT and ORPO are all (or nearly all) NLL: attention-only adapters on the 2-layer model cannot pull a
#: token's probability far from 1/49k (NLL 11 -> 10.4 in 30 steps), so these fine-tune every weight
FULL = {"lora": {"enabled": False}}
#: online: full fine-tuning (LoRA on the tiny model drifts to junk tokens before the reward moves);
#: 4 prompts, 8-token completions, no KL penalty where the algorithm allows it (an overfit test asks
#: whether the reward is optimised, not how far from the start)
ONLINE = {"warmup_ratio": 0.0, "save_steps": 1000, "lora": {"enabled": False},
          "online": {"max_prompts": 4, "num_generations": 4, "max_completion_length": 8, "kl_beta": 0.0}}
#: per algorithm: RLOO 8 steps of 1 prompt x 4 samples; PPO 10 rounds of 4 prompts x 1 sample;
#: Online-DPO 8 steps of 4 prompts x 2 samples, whose kl_beta is DPO's beta (0 would make its loss
#: constant). Higher learning rates make full fine-tuning (Adam moves every one of the 49k embedding
#: rows by about the rate) put junk tokens into the samples before the reward can move.
RLOO = {"batch_size": 1, "epochs": 2, "learning_rate": 3e-3}
PPO = {"batch_size": 4, "epochs": 10, "learning_rate": 2e-3, "online": {"baseline_algorithm": "ppo"}}
ONLINE_DPO = {"batch_size": 4, "epochs": 8, "learning_rate": 3e-3,
              "online": {"kl_beta": 0.1, "baseline_algorithm": "online_dpo"}}

SETTINGS: dict[str, dict] = {
    "amopo": {},
    "amopo_fixed": {"method": "amopo", "weights": "fixed", "fixed_weights": [1.0, 3.0]},
    "simpo": {},
    "dpo": {},
    "cal_dpo": {},
    "orpo": FULL,
    "contrastive_cpo": {},
    "modpo": {},
    "spo": {},
    "controllable_cpo": {},
    "sft": FULL,
    "moslim_rloo": RLOO,
    "moslim_online_dpo": ONLINE_DPO,
    "moslim_ppo": PPO,
    "morlhf": {**RLOO, "online": {"morlhf_weights": [1.0, 0.0]}},  # the weights must reach the reward
    # one policy per dimension: PPO, as MOSLIM's baselines used (about half RLOO's time here)
    "rewarded_soups": PPO,
}
CASES = [*TRAIN_METHODS[:1], "amopo_fixed", *TRAIN_METHODS[1:]]


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def case_params(case: str) -> Params:
    if case not in SETTINGS:
        pytest.fail(f"train.method {case!r} has no overfit case: add its settings to SETTINGS in {__file__}")
    method = SETTINGS[case].get("method", case)
    defaults = ONLINE if METHODS[method].online else OFFLINE
    train = _merge(_merge(defaults, SETTINGS[case]), {"method": method})
    return Params.model_validate({"dimensions": {"names": DIMS}, "reward": {"classes": dict(zip(DIMS, CLASSES, strict=True))},
                                  "train": train})


def test_every_train_method_has_an_overfit_case():
    assert set(TRAIN_METHODS) == {SETTINGS[case].get("method", case) for case in SETTINGS}, (
        "every train.method needs an overfit case, and every case a method train.method accepts"
    )
    assert set(CASES) == set(SETTINGS)
    # the trainer's registry names no method the config would reject
    assert set(METHODS) <= set(TRAIN_METHODS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def start_dirs(case, request, tiny_model_dir) -> tuple[Path, Path | None]:
    """The model a case starts from, and the reward model directory of the online cases (set up here,
    so their cost is the setup's, not the test's)."""
    if case_params(case).method.online:
        return request.getfixturevalue("peaked_model_dir"), request.getfixturevalue("reward_dir")
    return tiny_model_dir, None


@pytest.mark.parametrize("case", CASES)
def test_overfit(case, start_dirs, tmp_path, monkeypatch):
    config = case_params(case)
    model_dir, reward_dir = start_dirs
    if config.method.online:
        _overfit_online(config, model_dir, reward_dir, tmp_path, monkeypatch)
    else:
        _overfit_offline(config, model_dir, tmp_path)


# ------------------------------------------------------------------------------------------------
# offline: the saved policy prefers every chosen response


#: equal-length responses (so summed and averaged log-likelihoods order them alike) that the
#: starting model ranks the wrong way round, by 0.3-0.7 nats (checked in the test); chosen is better
#: on every dimension, so MODPO's and SPO's orientation by one dimension changes nothing
PAIRS = [
    ("What is 2 + 2?", "It is four.", "It is six."),
    ("Name a colour.", "It is blue.", "It is seven."),
    ("Pick a colour.", "Blue.", "Seven."),
]


def preference_rows() -> list[PreferenceRow]:
    return [
        PreferenceRow(
            id=f"p{i}", source="test", prompt_id=f"q{i}", split="train", prompt=prompt,
            chosen=ScoredResponse(text=chosen, scores={"correctness": 5, "verbosity": 4}),
            rejected=ScoredResponse(text=rejected, scores={"correctness": 1, "verbosity": 2}),
        )
        for i, (prompt, chosen, rejected) in enumerate(PAIRS)
    ]


@torch.no_grad()
def token_logps(model_dir, sequences: list[tuple[str, str]]) -> list[tuple[list[float], list[float]]]:
    """Per-token log-likelihoods of each (prompt, response): the chat-templated prompt's tokens (all
    but the first) and the response's, which ends with the end-of-turn token as trained. One
    unpadded forward per sequence."""
    model, tokenizer = load_model_and_tokenizer(model_dir, "float32")
    model.eval()
    results = []
    for prompt, response in sequences:
        prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + response_ids])
        logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        results.append((logps[: len(prompt_ids) - 1].tolist(), logps[len(prompt_ids) - 1 :].tolist()))
    return results


def _overfit_offline(config: Params, model_dir: Path, tmp_path: Path) -> None:
    from moalign.training.phases import plan_phases
    from moalign.training.preference import train_policy
    from moalign.training.reference import reference_key, score_reference

    train, dimensions = config.train, config.dimensions
    rows = preference_rows()
    # reference methods read the starting model's scores from the reference_logps stage's cache, as
    # the pipeline does (empty for the others)
    cache, _ = score_reference(rows, model_dir, train=train, dimensions=dimensions, dtype="float32")
    history = train_policy(rows, model_dir, tmp_path / "policy", tmp_path / "checkpoints", train=train,
                           dimensions=dimensions, dtype="float32", reference_cache=cache)
    phases = plan_phases(rows, train, dimensions)
    final = phases[-1]  # multi-phase methods: the last phase's prompts
    assert [row.chosen.text for row in final.rows] == [row.chosen.text for row in rows]  # none re-oriented
    for phase in phases:
        steps = [entry for entry in history if entry["phase"] == phase.name and "loss" in entry]
        assert len(steps) == train.epochs, phase.name  # one batch, one step per epoch
        if phase.method.needs_reference:
            # before its first update the policy is its reference: a reference score read for the
            # other response of its pair shows as a non-zero implicit reward
            first = {key: steps[0][key] for key in ("rewards/chosen", "rewards/rejected")}
            assert first == pytest.approx(dict.fromkeys(first, 0.0), abs=1e-3), (
                f"{phase.name}: at step 1 the policy is its own reference, yet it logged {first}"
            )

    scored = [(row.id, prompt) for row in rows for prompt in final.prompts(row)]
    sequences = [(prompt, text) for row in rows for prompt in final.prompts(row)
                 for text in (row.chosen.text, row.rejected.text)]
    start_tokens = token_logps(model_dir, sequences)
    end_tokens = token_logps(tmp_path / "policy", sequences)
    # (summed log-likelihood, length) of each response
    before = [(sum(response), len(response)) for _, response in start_tokens]
    after = [(sum(response), len(response)) for _, response in end_tokens]
    method = final.method
    if cache:
        # the reference_logps stage's scores, under the keys training reads them by, are what an
        # unpadded forward of the starting model gives
        keys = [reference_key(row.id, prompt, text) for row in rows for prompt in final.prompts(row)
                for text in (row.chosen.text, row.rejected.text)]
        assert cache == pytest.approx({key: logp for key, (logp, _) in zip(keys, before, strict=True)}, abs=1e-3), (
            "the reference cache does not hold the starting model's scores under the keys training reads"
        )

    def margins(logps: list[tuple[float, int]]) -> list[float]:
        values = []
        for (chosen, n_chosen), (rejected, n_rejected), (ref_chosen, _), (ref_rejected, _) in zip(
            logps[0::2], logps[1::2], before[0::2], before[1::2], strict=True
        ):
            if method.needs_reference:  # the implicit reward: log-ratio to the starting model
                values.append((chosen - ref_chosen) - (rejected - ref_rejected))
            elif method.average_logps:
                values.append(chosen / n_chosen - rejected / n_rejected)
            else:
                values.append(chosen - rejected)
        return values

    if not method.needs_reference:  # (against the reference, every margin starts at exactly 0)
        start = margins(before)
        assert all(m < 0 for m in start), f"the starting model must prefer every rejected response: {start}"
    end = margins(after)
    assert all(m > 0 for m in end), (
        f"{train.method}: preference accuracy {sum(m > 0 for m in end)}/{len(end)} after training; "
        f"margins per (pair, prompt) {dict(zip(scored, end, strict=True))}"
    )
    if method.name == "sft":
        nll_before = [-logp / n for logp, n in before[0::2]]
        nll_after = [-logp / n for logp, n in after[0::2]]
        assert all(a < 0.5 * b for a, b in zip(nll_after, nll_before, strict=True)), (nll_before, nll_after)
        # token by token, where a misplaced completion mask shows: every chosen token was learnt (the
        # first one too: ~0.15 of its start, ~0.55 when the mask starts a token late), and the prompt's
        # last tokens, the chat template's assistant header, were not (~0.65 of their start, ~0.2
        # when the mask reaches back into the prompt)
        for (prompt_start, response_start), (prompt_end, response_end) in zip(start_tokens[0::2], end_tokens[0::2], strict=True):
            ratios = [a / b for a, b in zip(response_end, response_start, strict=True)]
            assert max(ratios) < 1 / 3, f"chosen tokens' NLL / start: {[round(r, 2) for r in ratios]}"
            ratios = [a / b for a, b in zip(prompt_end[-3:], prompt_start[-3:], strict=True)]
            assert min(ratios) > 0.5, f"the prompt's last tokens' NLL / start: {[round(r, 2) for r in ratios]}"


# ------------------------------------------------------------------------------------------------
# online: the reward of the sampled completions rises


WORDS = ("yes", "no")  # the reward of dimension i counts WORDS[i]
PROMPTS = [f"Question {i}?" for i in range(4)]


def word_share(completion, word: str) -> float:
    """The share of ``word`` among the yes/no words of a completion (0 without any)."""
    words = re.findall(r"yes|no", control.chat_text(completion))
    return words.count(word) / len(words) if words else 0.0


class WordReward:
    """Stands in for the reward model's rewards: sum_i w_i * share of WORDS[i], weights normalised.
    Called like TRL's reward functions (and moalign's PPO); records each call's prompts and mean score."""

    __name__ = "word_share"  # TRL logs a reward function under its __name__

    def __init__(self, weights):
        self.weights = [w / sum(weights) for w in weights]
        self.means: list[float] = []
        self.prompts: set[str] = set()

    def score(self, completion) -> float:
        return sum(w * word_share(completion, word) for w, word in zip(self.weights, WORDS, strict=True))

    def __call__(self, prompts, completions, **_):
        assert len(prompts) == len(completions)
        self.prompts.update(control.chat_text(p) for p in prompts)
        scores = [self.score(c) for c in completions]
        self.means.append(fmean(scores))
        return scores


@torch.no_grad()
def sampled_reward(model, tokenizer, prompts, reward: WordReward, per_prompt: int = 16) -> float:
    """The mean reward of ``per_prompt`` completions per prompt, sampled as the trainers do (chat
    template, temperature 1, 8 new tokens), with a fixed seed."""
    encoded = tokenizer([chat_prompt(tokenizer, p) for p in sorted(prompts) for _ in range(per_prompt)],
                        return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    torch.manual_seed(0)
    samples = model.generate(**encoded, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=8,
                             pad_token_id=tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(samples[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
    return fmean(reward.score(c) for c in completions)


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model after a short SFT on random mixes of "yes" and "no": its samples are mostly those
    two words, about half each, so a reward on their share can move."""
    from moalign.training.preference import train_policy

    rng = random.Random(0)
    rows = [
        PreferenceRow(id=f"s{i}", source="test", prompt_id=f"q{i}", split="train", prompt=prompt,
                      chosen=ScoredResponse(text=" ".join(rng.choice(WORDS) for _ in range(24)),
                                            scores=dict.fromkeys(DIMS, 5)),
                      rejected=ScoredResponse(text="maybe", scores=dict.fromkeys(DIMS, 1)))
        for i, prompt in enumerate(PROMPTS)
    ]
    config = Params.model_validate({"dimensions": {"names": DIMS}, "train": {
        "method": "sft", "batch_size": 4, "epochs": 20, "learning_rate": 1e-2, "warmup_ratio": 0.0,
        "save_steps": 1000, "lora": {"enabled": False}}})
    out = tmp_path_factory.mktemp("peaked") / "policy"
    train_policy(rows, tiny_model_dir, out, out.parent / "checkpoints", train=config.train,
                 dimensions=config.dimensions, dtype="float32")

    # a precondition of the online cases, not a test of them: yes/no dominate the samples, both alike
    model, tokenizer = load_model_and_tokenizer(out, "float32")
    encoded = tokenizer([chat_prompt(tokenizer, p) for p in PROMPTS] * 4, return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        samples = model.generate(**encoded, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=8,
                                 pad_token_id=tokenizer.pad_token_id)
    text = " ".join(tokenizer.batch_decode(samples[:, encoded.input_ids.shape[1]:], skip_special_tokens=True))
    words = re.findall(r"yes|no", text)
    assert sum(map(len, words)) > 0.7 * len(re.sub(r"\s", "", text)), f"samples are not mostly yes/no: {text!r}"
    assert 0.25 < words.count("yes") / len(words) < 0.75, f"samples are not a yes/no mix: {text!r}"
    return out


@pytest.fixture(scope="module")
def reward_dir(untrained_reward_dir) -> Path:
    """An untrained reward model for train_online to load; :class:`WordReward` replaces its rewards."""
    return untrained_reward_dir(DIMS, CLASSES)


def _overfit_online(config: Params, model_dir: Path, reward_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from moalign.training.methods import algorithm_of
    from moalign.training.online import REWARD_LOG_KEYS, train_online
    from moalign.training.runs import reward_trend

    rewards: list[WordReward] = []

    def made(weights) -> WordReward:
        rewards.append(WordReward(weights))
        return rewards[-1]

    # train_online builds its rewards from moalign.rewards.control when it runs
    monkeypatch.setattr(control, "MappedReward", lambda model, tokenizer, stats, **options: made([1.0, 0.0]))
    monkeypatch.setattr(control, "ScalarisedReward",
                        lambda model, tokenizer, dimensions, n_classes, weights, **options: made(weights))
    rows = [  # online, only the prompts of the pairs matter
        PreferenceRow(id=f"r{i}", source="test", prompt_id=f"q{i}", split="train", prompt=prompt,
                      chosen=ScoredResponse(text="yes", scores=dict.fromkeys(DIMS, 4)),
                      rejected=ScoredResponse(text="no", scores=dict.fromkeys(DIMS, 2)))
        for i, prompt in enumerate(PROMPTS)
    ]
    train = config.train
    history = train_online(rows, model_dir, reward_dir, tmp_path / "policy",
                           tmp_path / "checkpoints", train=train, dimensions=DIMS, n_classes=config.reward_classes,
                           dtype="float32", seed=0, fingerprint="overfit")
    # the reward each phase must have optimised: MOSLIM's on the first head (see MappedReward above),
    # MORLHF's weights as configured, one head per Rewarded Soups ingredient
    if train.method == "rewarded_soups":
        phases = {f"soup-{d}": [float(i == j) for j in range(len(DIMS))] for i, d in enumerate(DIMS)}
    else:
        weights = train.online.morlhf_weights if train.method == "morlhf" else [1.0, 0.0]
        phases = {train.method: [w / sum(weights) for w in weights]}
    assert [reward.weights for reward in rewards] == list(phases.values())
    key = REWARD_LOG_KEYS[algorithm_of(train.method, train.online)]
    start, tokenizer = load_model_and_tokenizer(model_dir, "float32")
    for phase, reward in zip(phases, rewards, strict=True):
        # MOSLIM's prompts carry control tags (at least one each), the baselines' none
        targets, _ = control.target_classes(sorted(reward.prompts), DIMS, CLASSES)
        tagged = (targets != UNCONTROLLED).any(dim=1).tolist()
        assert len(tagged) == len(PROMPTS) and set(tagged) == {train.method.startswith("moslim_")}, reward.prompts
        logged = [entry[key] for entry in history if entry["phase"] == phase and key in entry]
        # one scoring per step, and the trainer logged what the reward gave
        assert logged == pytest.approx(reward.means, abs=1e-5), (phase, logged, reward.means)
        # each scored step's per-prompt record (PromptRewardLog), whose mean is the step's
        recorded = [entry["prompt_rewards"] for entry in history if entry["phase"] == phase
                    and "prompt_rewards" in entry]
        assert [sum(r.values()) / len(r) for r in recorded] == pytest.approx(reward.means, abs=1e-5)
        trend = [round(m, 2) for m in reward.means]
        assert len(trend) >= 8, f"{phase}: {len(trend)} scored steps"
        assert reward_trend(history, key)[phase]["slope"] > 0, f"{phase}: the reward fell over training: {trend}"
        # the saved weights (a soup's ingredients: each one's own), on more samples than a step has
        saved = tmp_path / "checkpoints" / phase / "final" if len(phases) > 1 else tmp_path / "policy"
        policy = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
        before, after = (sampled_reward(m, tokenizer, reward.prompts, reward) for m in (start, policy))
        assert after > before + 0.2, (
            f"{phase}: the saved policy's reward {after:.2f} is not clearly above the start's {before:.2f} "
            f"(rewards per step in training: {trend})"
        )
