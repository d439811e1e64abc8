"""Training the multi-head reward model on judged responses, and measuring its heads.

Every scored response carries a judge score per dimension; the reward model learns to classify
them, one head per dimension. So the unit of training is a (prompt, response) with K labels, not a
pair: :func:`reward_examples` takes every scored candidate, including those of prompts whose
candidates tied and made no pair (on the demo, 384 responses instead of the 110 paired ones). The training loop is ``transformers.Trainer`` (checkpoints, resume, accelerate) with
:class:`RewardTrainer` adding the summed per-head cross-entropy and per-head loss logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Trainer

from moalign.data.schema import SCORE_MAX, SCORE_MIN, ScoredCandidate, distinct_responses
from moalign.launch import is_main_process
from moalign.models import from_pretrained
from moalign.rewards.mapping import RewardStats, class_counts
from moalign.rewards.model import (
    IGNORE_INDEX,
    MultiHeadRewardModel,
    RewardModelError,
    encode_pairs,
    intensity_class,
    pad_left,
    pad_token_id,
    score_texts,
)
from moalign.training.preference import AveragedLogsMixin
from moalign.training.runs import AtomicCheckpointsMixin, claim_checkpoints, fingerprint, resumable_checkpoint

logger = logging.getLogger(__name__)

ECE_BINS = 10


# ------------------------------------------------------------------------------------------------
# examples


def reward_examples(
    candidates: Sequence[ScoredCandidate], dimensions: Sequence[str], n_classes: Sequence[int]
) -> list[dict]:
    """One example per distinct (prompt, response) of ``candidates``: every scored response, paired
    or not (annotate's ``candidates.jsonl``).

    ``{"id", "prompt", "response", "labels": [class per head]}``; a dimension the judge left unscored
    gets :data:`IGNORE_INDEX` (-100), so it trains the other heads only. A response sampled twice for
    the same prompt is kept once, with its first labels: twice the examples would weigh it twice.
    """
    if len(dimensions) != len(n_classes):
        raise RewardModelError(
            f"dimensions {list(dimensions)} and classes {list(n_classes)} differ in length"
        )
    examples = []
    for candidate in distinct_responses(candidates):
        labels = []
        for dimension, n in zip(dimensions, n_classes, strict=True):
            score = candidate.scores.get(dimension)
            if score is None:
                labels.append(IGNORE_INDEX)
                continue
            if not SCORE_MIN <= score <= SCORE_MAX:
                raise RewardModelError(
                    f"response {candidate.id}: {dimension} score {score} is outside {SCORE_MIN}-{SCORE_MAX}"
                )
            labels.append(intensity_class(score, n, (SCORE_MIN, SCORE_MAX)))
        examples.append({"id": candidate.id, "prompt": candidate.prompt, "response": candidate.text, "labels": labels})
    return examples


def split_candidates(candidates: Sequence[ScoredCandidate]) -> tuple[list[ScoredCandidate], list[ScoredCandidate]]:
    """(train, eval) responses by their prompt's split; a prompt in both splits is an error, because its
    eval responses would no longer be held out."""
    splits: dict[str, str] = {}
    for candidate in candidates:
        if splits.setdefault(candidate.prompt_id, candidate.split) != candidate.split:
            raise RewardModelError(
                f"prompt {candidate.prompt_id} has responses in both the train and the eval split "
                f"(response {candidate.id}): held-out accuracy would not be held out"
            )
    return ([c for c in candidates if c.split == "train"], [c for c in candidates if c.split == "eval"])


# ------------------------------------------------------------------------------------------------
# metrics


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE of top-class confidences: sum over equal-width bins of (share of rows) x |accuracy - confidence|.

    Bins are (i/bins, (i+1)/bins], the first one closed at 0 (Guo et al. 2017, Naeini et al. 2015).
    """
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    total, ece = len(confidence), 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            gap = correct[members].float().mean() - confidence[members].float().mean()
            ece += count / total * abs(float(gap))
    return ece


def majority_classes(labels: torch.Tensor, n_classes: Sequence[int]) -> list[int | None]:
    """Per head, the most frequent labelled class (the smallest on a tie; None for no labelled row)."""
    return [max(range(len(counts)), key=counts.__getitem__) if sum(counts) else None
            for counts in class_counts(labels, n_classes)]


def head_metrics(
    probs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    dimensions: Sequence[str],
    majority: Sequence[int | None] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per dimension: argmax ``accuracy``, ``ece`` (10 confidence bins) and ``n`` labelled rows, and
    with ``majority`` (each head's most frequent train class) ``majority_baseline``: the accuracy of
    always answering that class, the floor a head has to clear to have learned anything, and
    ``gain_ci95``: the 95 % bootstrap interval of accuracy minus that floor on the same rows.

    Rows labelled :data:`IGNORE_INDEX` on a head do not count for it; a head with no labelled row
    gets ``None`` (JSON null, not NaN, which metrics files and DVC cannot compare).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    from moalign.evaluation.winrate import bootstrap_mean_ci

    metrics: dict[str, dict[str, float | int | None]] = {}
    for k, dimension in enumerate(dimensions):
        keep = labels[:, k] != IGNORE_INDEX
        n = int(keep.sum())
        if n == 0:
            metrics[dimension] = {"accuracy": None, "ece": None, "n": 0}
            if majority is not None:
                metrics[dimension].update(majority_baseline=None, gain_ci95=None)
            continue
        confidence, predicted = probs[k][keep].float().max(-1)
        correct = predicted == labels[keep, k]
        metrics[dimension] = {
            "accuracy": float(correct.float().mean()),
            "ece": expected_calibration_error(confidence, correct),
            "n": n,
        }
        if majority is not None:
            baseline = None if majority[k] is None else (labels[keep, k] == majority[k])
            metrics[dimension]["majority_baseline"] = None if baseline is None else float(baseline.float().mean())
            # per response, (head right) - (majority class right): its mean is the head's gain over the
            # floor, resampled by response; an interval above 0 says the head learned something
            gain = None if baseline is None else bootstrap_mean_ci((correct.float() - baseline.float()).tolist())
            metrics[dimension]["gain_ci95"] = None if gain is None else [float(gain[0]), float(gain[1])]
    return metrics


# ------------------------------------------------------------------------------------------------
# trainer


class RewardCollator:
    """Pads a batch of encoded examples on the left and stacks their (B, K) labels."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_left([f["input_ids"] for f in features], self.pad_token_id)
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class RewardTrainer(AtomicCheckpointsMixin, AveragedLogsMixin, Trainer):
    """``transformers.Trainer`` whose loss is the reward model's summed per-head cross-entropy.

    Logs ``loss/<dimension>`` beside ``loss``: each head's mean cross-entropy since the last log,
    over the batches where that head had a label.
    """

    def __init__(self, *args, dimensions: Sequence[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.dimensions = tuple(dimensions)
        # the loss is a mean over rows, not a token count: the Trainer scales it for accumulation
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        output = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels)
        if not torch.isfinite(output.loss):
            raise FloatingPointError(
                f"reward loss is {output.loss.item()} at step {self.state.global_step + 1}; "
                "lower the learning rate"
            )
        labelled = (labels != IGNORE_INDEX).sum(0).tolist()
        for dimension, loss, count in zip(self.dimensions, output.head_losses.detach().tolist(), labelled, strict=True):
            if count:
                self._stored[f"loss/{dimension}"].append(loss)
        return (output.loss, output) if return_outputs else output.loss


def _labels(examples: Sequence[dict], k: int) -> torch.Tensor:
    return torch.tensor([e["labels"] for e in examples], dtype=torch.long).reshape(len(examples), k)


def _scored(model, tokenizer, examples: Sequence[dict], batch_size, max_length) -> list[torch.Tensor]:
    return score_texts(
        model,
        tokenizer,
        [e["prompt"] for e in examples],
        [e["response"] for e in examples],
        batch_size=batch_size,
        max_length=max_length,
    )


def freeze_lower_layers(model: MultiHeadRewardModel, top: int | None) -> None:
    """Leave only the backbone's top ``top`` transformer layers, its final norm and the heads
    trainable (None: everything). Backward then stops below them, which on a CPU (compute-bound)
    saves most of the backward pass."""
    if top is None:
        return
    backbone = model.backbone
    stacks = [m for m in backbone.modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) == backbone.config.num_hidden_layers]
    if not stacks:
        raise RewardModelError(f"{type(backbone).__name__}: no stack of {backbone.config.num_hidden_layers} layers "
                               "to freeze; set reward.top_layers to null")
    frozen = [*backbone.get_input_embeddings().parameters(),
              *(p for layer in list(stacks[0])[: max(0, len(stacks[0]) - top)] for p in layer.parameters())]
    for parameter in frozen:
        parameter.requires_grad_(False)


def train_reward_model(
    model: MultiHeadRewardModel,
    tokenizer,
    train_examples: Sequence[dict],
    eval_examples: Sequence[dict],
    *,
    output_dir,
    learning_rate: float,
    epochs: float,
    batch_size: int,
    max_length: int,
    seed: int,
    top_layers: int | None = None,
    logging_steps: int = 1,
    callbacks: Sequence | None = None,
    save_steps: int = 50,
    gradient_accumulation_steps: int = 1,
    lr_scheduler_type: str = "cosine",
    stats: RewardStats | None = None,
) -> dict:
    """Fine-tune ``model`` (the heads and the backbone's ``top_layers``, all of it by default) in place on
    ``train_examples`` (:func:`reward_examples`).

    Checkpoints go to ``output_dir`` every ``save_steps``; a rerun with the same examples, settings
    and heads resumes from the newest one (a fingerprint file guards against resuming another run).
    Returns ``{"train": head_metrics, "eval": head_metrics}``, both scored after training with
    :func:`score_texts`, the function that scores for the policy stage; the training responses'
    probabilities are also merged into ``stats`` when given (Eq. 11's statistics, one scoring for both).
    """
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    if not train_examples:
        raise RewardModelError("no training examples: every pair was filtered out or the file is empty")
    set_seed(seed)
    output_dir = Path(output_dir)
    run = {
        "examples": [(e["id"], e["labels"]) for e in train_examples],
        "heads": [list(model.dimensions), list(model.n_classes)],
        "backbone": model.backbone.config.to_json_string(use_diff=False),
        "settings": [
            learning_rate,
            epochs,
            batch_size,
            max_length,
            seed,
            gradient_accumulation_steps,
            lr_scheduler_type,
            top_layers,
        ],
    }
    freeze_lower_layers(model, top_layers)
    claim_checkpoints(output_dir, fingerprint(run))

    encoded = encode_pairs(
        tokenizer, [e["prompt"] for e in train_examples], [e["response"] for e in train_examples], max_length
    )
    features = [{"input_ids": ids, "labels": list(e["labels"])} for ids, e in zip(encoded, train_examples, strict=True)]
    cuda = torch.cuda.is_available()
    bf16 = cuda and next(model.parameters()).dtype == torch.bfloat16
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        lr_scheduler_type=lr_scheduler_type,
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        report_to=[],
        seed=seed,
        use_cpu=not cuda,
        # fp32 on the CPU: bf16 matmuls run ~20x slower there
        bf16=bf16,
        fp16=False,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features),
        data_collator=RewardCollator(pad_token_id(tokenizer)),
        dimensions=model.dimensions,
        callbacks=list(callbacks or []),
    )
    trainer.train(resume_from_checkpoint=resumable_checkpoint(output_dir))
    trained = trainer.model
    dims = trained.dimensions
    train_labels = _labels(train_examples, len(dims))
    majority = majority_classes(train_labels, trained.n_classes)
    train_probs = _scored(trained, tokenizer, train_examples, batch_size, max_length)
    if stats is not None:
        # Eq. 11's statistics from the same scoring of the training responses that measures the heads
        stats.update(train_probs)
    eval_probs = _scored(trained, tokenizer, eval_examples, batch_size, max_length)
    return {
        "train": head_metrics(train_probs, train_labels, dims, majority),
        "eval": head_metrics(eval_probs, _labels(eval_examples, len(dims)), dims, majority),
    }


def mean_accuracy(metrics: dict[str, dict]) -> float | None:
    """The heads' mean accuracy, over the heads that have one (for a single headline number)."""
    values = [m["accuracy"] for m in metrics.values() if m.get("accuracy") is not None]
    return sum(values) / len(values) if values else None


def train_reward_stage(config, candidates, model_dir, out_dir, metrics, checkpoints, *, register: bool = True) -> dict:
    """The train_reward stage: the multi-head reward model from ``model_dir`` trained on the scored
    responses in ``candidates`` (train split; eval split measures it), saved in ``out_dir`` with Eq. 11's
    statistics, per-head metrics in ``metrics``, and with ``register`` logged to MLflow and registered
    as ``reward.model_name``. Returns the metrics."""
    from transformers import AutoTokenizer

    from moalign.data.schema import read_jsonl, write_json
    from moalign.models import resolve_dtype

    dims, classes, section = list(config.dimensions.names), config.reward_classes, config.reward
    train, held_out = (reward_examples(part, dims, classes)
                       for part in split_candidates(read_jsonl(candidates, ScoredCandidate)))
    if not train:
        raise RewardModelError(f"{candidates} holds no train-split response: nothing to train the reward model on")
    logger.info("%d training responses, %d eval; heads %s", len(train), len(held_out),
                ", ".join(f"{d}({n})" for d, n in zip(dims, classes, strict=True)))
    reward_model = MultiHeadRewardModel.from_backbone(model_dir, dims, classes,
                                                      dtype=resolve_dtype(config.model.dtype), seed=config.seed)
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    # Eq. 11's statistics: how probable each head finds each intensity over the training responses
    stats = RewardStats(dims, classes)
    stats.count_labels([e["labels"] for e in train])
    results = train_reward_model(
        reward_model, tokenizer, train, held_out, output_dir=checkpoints, learning_rate=section.learning_rate,
        epochs=section.epochs, batch_size=section.batch_size, max_length=section.max_length, seed=config.seed,
        save_steps=section.save_steps, top_layers=section.top_layers, stats=stats,
    )
    if not is_main_process():  # of several training processes, the main one saves, writes and registers
        return results
    reward_model.save(out_dir, tokenizer=tokenizer)
    stats.save(out_dir)
    write_json(metrics, results)
    for split in ("train", "eval"):
        for d, entry in results[split].items():
            if entry["n"]:
                floor = entry["majority_baseline"]
                logger.info("%s %s: accuracy %.3f (always the majority class: %s), ECE %.3f (n=%d)", split, d,
                            entry["accuracy"], "—" if floor is None else f"{floor:.3f}", entry["ece"], entry["n"])
            else:
                logger.info("%s %s: no example has this dimension scored", split, d)
    if register:
        from moalign import registry, tracking

        tracking.configure(config.register_.tracking_uri, config.register_.experiment)
        version = registry.log_and_register(
            run_name=f"reward-{config.model.source}", params=config.model_dump(by_alias=True), step_metrics=[],
            final_metrics={"reward": results}, artifacts=[metrics], model_dir=out_dir,
            model_name=section.model_name,
            tags={"kind": "reward_model", "heads": ",".join(f"{d}:{n}" for d, n in zip(dims, classes, strict=True))},
            task=registry.REWARD_MODEL_TASK,
        )
        logger.info("registered %s version %s", version.name, version.version)
    return results
