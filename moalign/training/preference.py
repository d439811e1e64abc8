"""Offline preference optimisation (AMoPO and the baselines) around ``transformers.Trainer``.

Why ``transformers.Trainer`` and not a TRL trainer: AMoPO scores each pair under K rewritten prompts
x_k* = f(x, d_k), which none of TRL's preference trainers model (their collators take one prompt per
pair), and one trainer for every method keeps the comparison fair (same batching, same log-prob
code, same logging). The base Trainer still gives checkpoint/resume, gradient accumulation,
accelerate, DeepSpeed/FSDP and logging; moalign adds the batch layout and the losses, in the TRL
style (chosen and rejected in one forward, TRL's metric names).

The batch layout and the log-probability code are :mod:`moalign.training.batching`; which phases a
method runs, on which prompts, is :mod:`moalign.training.phases`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from moalign.data.schema import PreferenceRow
from moalign.launch import is_main_process
from moalign.models import from_pretrained
from moalign.training.batching import (
    SEQUENCE_KEYS,
    PairCollator,
    completion_token_logps,
    pair_slice,
    score_pairs,
    split_logps,
)
from moalign.training.methods import Loss, PairLogps
from moalign.training.phases import Phase, features_for, objective_dimensions, plan_phases
from moalign.training.reference import phase_keys
from moalign.training.runs import (
    AtomicCheckpointsMixin,
    EpochSeededLengthGroupedSampler,
    attach_lora,
    claim_checkpoints,
    fingerprint,
    resumable_checkpoint,
    run_phase,
    save_policy,
)
from moalign.weights import authors_code_weights, fixed_weights, gaussian_noise, gaussian_weights


if TYPE_CHECKING:
    from moalign.config import TrainParams

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite: training stops, naming the step and the pairs of the batch."""


# ------------------------------------------------------------------------------------------------
# trainer


@dataclass(frozen=True)
class Objective:
    """What the trainer optimises: the phase's loss, its hyper-parameters and the dimension names."""

    method: Loss
    params: TrainParams  # beta, gamma, orpo_lambda, cpo_alpha, weights, amopo_memory...
    dimensions: tuple[str, ...]


class AveragedLogsMixin:
    """For a ``transformers.Trainer`` subclass: values appended to ``self._stored[name]`` at each step
    are averaged into the next log entry that has a loss (as TRL does with its stored metrics)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stored: dict[str, list[float]] = defaultdict(list)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for key, values in self._stored.items():
                logs[key] = sum(values) / len(values)
            self._stored.clear()
        super().log(logs, *args, **kwargs)


class PreferenceTrainer(AtomicCheckpointsMixin, AveragedLogsMixin, Trainer):
    """``transformers.Trainer`` with moalign's preference losses and per-dimension diagnostics."""

    objective: Objective

    def __init__(self, *args, objective: Objective, diagnose: Callable[[object], dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.diagnose = diagnose
        self._draw_at: tuple[bool, int] | None = None  # (training, step) of the last weight draw
        self._draws = 0  # weight draws so far at that step
        if diagnose is not None:
            self.add_callback(_DiagnoseAtStart(self))
        # our loss is a mean over pairs, not normalised by a token count: let the Trainer divide it
        # by the accumulation steps (so 8 x 1 and 1 x 8 give the same update)
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if not isinstance(sampler, LengthGroupedSampler):
            return sampler
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)

    def _weights(self, token_logps: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """AMoPO alpha, (B, K), from the (B, K, 2, T) per-token log-probabilities; ``noise``: the
        Gaussian draws of these pairs when the step took them for its whole batch."""
        b, k, _, t = token_logps.shape
        params = self.objective.params
        if params.weights == "fixed":
            return fixed_weights(k, params.fixed_weights).to(token_logps.device).expand(b, k)
        if noise is not None:
            return gaussian_weights(token_logps.reshape(b, k, 2 * t), mask.reshape(b, k, 2 * t), noise=noise)
        generator = self._draw_generator(training=self.model.training)
        if params.weights == "authors_code":
            return authors_code_weights(token_logps[:, :, 0], mask[:, :, 0], token_logps[:, :, 1], mask[:, :, 1],
                                        generator=generator)
        # Algorithm 1, line 8: the chosen and rejected tokens of a dimension pooled (p_d)
        return gaussian_weights(token_logps.reshape(b, k, 2 * t), mask.reshape(b, k, 2 * t), generator=generator)

    def _draw_generator(self, training: bool) -> torch.Generator:
        """The random stream of one weight draw, keyed by (seed, process, step, draw within the step):
        a resumed run draws at step n exactly what an uninterrupted run drew there, whatever else took
        random numbers before (the global stream is restored only part of the time, and only mid-epoch)."""
        step = self.state.global_step
        if self._draw_at != (training, step):
            self._draw_at, self._draws = (training, step), 0
        self._draws += 1
        key = fingerprint([self.args.seed, self.args.process_index, training, step, self._draws])
        return torch.Generator().manual_seed(int(key, 16))

    def _pair_losses(self, model, inputs, weights: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        """One forward over a batch (or some of its pairs): the (B,) per-pair losses, the log-probabilities
        and the reference scores (B, 1, 2) or None. AMoPO's ``weights`` or Gaussian ``noise``, where the
        step has them for its whole batch, else drawn here."""
        method = self.objective.method
        token_logps, mask = completion_token_logps(model, *(inputs[key] for key in SEQUENCE_KEYS))
        summed, lengths, token_view, mask_view = split_logps(token_logps, mask, int(inputs["num_prompts"]))
        used = summed / lengths if method.average_logps else summed  # (B, P, 2)
        reference = None
        if method.needs_reference:
            reference = torch.stack([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]], -1).unsqueeze(1)
        if method.dimension_prompts and weights is None:
            weights = self._weights(token_view, mask_view, noise)
        logps = PairLogps(
            chosen=used[..., 0],
            rejected=used[..., 1],
            chosen_nll=-(summed[..., 0] / lengths[..., 0]),
            ref_chosen=None if reference is None else reference[..., 0],
            ref_rejected=None if reference is None else reference[..., 1],
            weights=weights,
            chosen_scores=inputs.get("chosen_scores"),
            prev_margin=inputs.get("prev_margin"),
            rejected_scores=inputs.get("rejected_scores"),
        )
        return method.loss(logps, self.objective.params), logps, reference

    def _check_finite(self, loss: torch.Tensor, pair_ids) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"{self.objective.method.name} loss is {loss.item()} at step {self.state.global_step + 1} on pairs "
                f"{pair_ids}; lower the learning rate or inspect these rows"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        per_example, logps, reference = self._pair_losses(model, inputs)
        loss = per_example.mean()
        self._check_finite(loss, inputs["pair_ids"])
        self._store_metrics(logps, reference)
        return (loss, {}) if return_outputs else loss

    # --------------------------------------------------------------------------------------------
    # AMoPO's low-memory step (train.amopo_memory: low)

    def _pairs_per_forward(self, inputs) -> int | None:
        """Pairs per forward of AMoPO's low-memory step, or None where the step is one forward: other
        methods, ``amopo_memory: fast``, a batch that fits, and DeepSpeed (whose ``backward`` counts
        micro-batches and steps the optimizer itself: several per micro-batch would break that)."""
        pairs, prompts = len(inputs["pair_ids"]), int(inputs["num_prompts"])
        per_forward = max(1, pairs // prompts)  # at most 2 x batch_size sequences (SimPO's), or one pair
        if (not self.objective.method.dimension_prompts or self.objective.params.amopo_memory != "low"
                or per_forward >= pairs or self.is_deepspeed_enabled):
            return None
        return per_forward

    def training_step(self, model, inputs, num_items_in_batch=None):
        """AMoPO under ``amopo_memory: low``: forward and backward ``_pairs_per_forward`` pairs at a time.
        alpha is a constant of the loss, so the gradient of sum_b sum_k alpha_bk l_bk is the sum of the
        chunks' gradients: exact, with one chunk's activations alive at a time. Eq. 10's softmax runs
        over one pair's K dimensions, so a chunk of whole pairs computes its own weights from its own
        forward; the batch's Gaussian noise is drawn first, so the numbers are those of one forward."""
        per_forward = self._pairs_per_forward(inputs)
        if per_forward is None:
            return super().training_step(model, inputs, num_items_in_batch)
        cp_context, inputs = self._prepare_context_parallel_inputs(model, inputs)
        with cp_context():
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            return self._step_in_chunks(model, self._prepare_inputs(inputs), per_forward)

    def _step_in_chunks(self, model, inputs, per_forward: int) -> torch.Tensor:
        pairs, prompts = len(inputs["pair_ids"]), int(inputs["num_prompts"])
        bounds = [(start, min(start + per_forward, pairs)) for start in range(0, pairs, per_forward)]
        weights = noise = None
        if self.objective.params.weights == "authors_code":
            weights = self._weights_without_grad(model, inputs, bounds)
        elif self.objective.params.weights == "gaussian":
            noise = gaussian_noise((pairs, prompts), self._draw_generator(training=True))
        # the loss is a mean over the batch's pairs, divided by the Trainer's accumulation steps
        scale = pairs * self.current_gradient_accumulation_steps
        parts: list[tuple[torch.Tensor, PairLogps]] = []
        for start, stop in bounds:
            chunk = pair_slice(inputs, start, stop)
            # DDP/FSDP all-reduce the gradients once, after the last chunk (the Trainer's own no_sync
            # already covers every chunk of a micro-batch that is not the last of its accumulation)
            sync = stop == pairs or not self.accelerator.sync_gradients
            with self._gradient_sync(model, sync):
                with self.compute_loss_context_manager():
                    per_example, logps, _ = self._pair_losses(
                        model, chunk, weights=None if weights is None else weights[start:stop],
                        noise=None if noise is None else noise[start:stop])
                    loss = per_example.sum()
                self._check_finite(loss, chunk["pair_ids"])
                self.accelerator.backward(loss / scale)
            parts.append((per_example.detach(), _detached(logps)))
        per_example = torch.cat([part[0] for part in parts])
        self._store_metrics(_concatenated([part[1] for part in parts]), None)
        return per_example.mean() / self.current_gradient_accumulation_steps

    def _gradient_sync(self, model, sync: bool):
        """No all-reduce for this backward unless ``sync``: the Trainer's own choice of context."""
        if sync:
            return contextlib.nullcontext()
        if getattr(self, "is_distributed_loading_by_transformers", False):
            from transformers.integrations.fsdp import is_fsdp_managed_module

            if self.model is not None and is_fsdp_managed_module(self.model):
                return self._defer_fsdp_gradient_reduction()
        return self.accelerator.no_sync(model)

    @torch.no_grad()
    def _weights_without_grad(self, model, inputs, bounds: list[tuple[int, int]]) -> torch.Tensor:
        """weights=authors_code: one softmax over the batch x K draws couples every pair, so the low-
        memory step scores the batch once without gradients (chunk by chunk) and draws the weights from
        that, as one forward would; the chunks' backward then has them as constants."""
        tokens, masks = [], []
        for start, stop in bounds:
            chunk = pair_slice(inputs, start, stop)
            with self.compute_loss_context_manager():
                token_logps, mask = completion_token_logps(model, *(chunk[key] for key in SEQUENCE_KEYS))
            _, _, token_view, mask_view = split_logps(token_logps, mask, int(chunk["num_prompts"]))
            tokens.append(token_view)
            masks.append(mask_view)
        span = max(t.shape[-1] for t in tokens)  # responses end at the right edge: pad on the left
        token_view = torch.cat([torch.nn.functional.pad(t, (span - t.shape[-1], 0)) for t in tokens])
        mask_view = torch.cat([torch.nn.functional.pad(m, (span - m.shape[-1], 0)) for m in masks])
        return self._weights(token_view, mask_view)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The held-out preference diagnostics (:mod:`moalign.training.diagnostics`) instead of an eval
        loss: logged with TRL's ``eval_`` prefix at the steps ``train.eval_steps`` names."""
        if self.diagnose is None:
            return {}
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in self.diagnose(self.model).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def _store_metrics(self, logps: PairLogps, reference: torch.Tensor | None) -> None:
        beta = self.objective.params.beta
        chosen, rejected = logps.chosen.detach(), logps.rejected.detach()
        if reference is not None:  # implicit rewards of reference methods: beta * log-ratio
            chosen, rejected = chosen - reference[..., 0], rejected - reference[..., 1]
        margins = beta * (chosen - rejected)  # (B, P)
        self._stored["logps/chosen"].append(logps.chosen.mean().item())
        self._stored["logps/rejected"].append(logps.rejected.mean().item())
        self._stored["rewards/chosen"].append(beta * chosen.mean().item())
        self._stored["rewards/rejected"].append(beta * rejected.mean().item())
        self._stored["rewards/margins"].append(margins.mean().item())
        self._stored["rewards/accuracies"].append((margins > 0).float().mean().item())
        if logps.weights is not None:
            for i, name in enumerate(self.objective.dimensions):
                self._stored[f"{name}/weight"].append(logps.weights[:, i].mean().item())
                self._stored[f"{name}/margin"].append(margins[:, i].mean().item())
                self._stored[f"{name}/accuracy"].append((margins[:, i] > 0).float().mean().item())


class _DiagnoseAtStart(TrainerCallback):
    """Step 0 of a fresh run: the diagnostics of the policy as it starts, the baseline of every later
    value. Logged once the run's state exists, so a checkpoint keeps it and a resumed run does not redo it."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.trainer.evaluate()


def _detached(logps: PairLogps) -> PairLogps:
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(logps):
        value = getattr(logps, field.name)
        fields[field.name] = None if value is None else value.detach()
    return PairLogps(**fields)


def _concatenated(parts: Sequence[PairLogps]) -> PairLogps:
    """The chunks' log-probabilities as one batch's (pairs along the first dimension)."""
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(PairLogps):
        values = [getattr(part, field.name) for part in parts]
        fields[field.name] = None if values[0] is None else torch.cat(values)
    return PairLogps(**fields)


# ------------------------------------------------------------------------------------------------
# the training run


def offline_fingerprint(rows: Sequence[PreferenceRow], model_dir, *, train, dimensions, dtype: str, seed: int) -> str:
    """Identity of a training run: checkpoints (and the MLflow run) of another fingerprint are never resumed.
    ``train.amopo_memory`` is left out: it changes how a step is computed, not what it computes, so a
    run that ran out of memory resumes under ``low``."""
    return fingerprint(
        {"train": train.model_dump(exclude={"amopo_memory"}), "dimensions": dimensions.model_dump(), "seed": seed,
         "rows": [r.id for r in rows], "model": str(model_dir), "dtype": dtype}
    )


def _reference_scores(model, phase: Phase, features, collator, batch_size: int, cache) -> list[tuple[float, float]]:
    """s_ref of every pair: from the cache where it has them, else one forward now."""
    keys = phase_keys(phase.rows, phase.prompts) if cache else [(None, None)] * len(features)
    missing = [i for i, (c, r) in enumerate(keys) if c not in cache or r not in cache]
    if cache and missing:
        logger.warning("%d of %d pairs not in the reference cache: scoring them now", len(missing), len(features))
    computed = dict(zip(missing, score_pairs(model, [features[i] for i in missing], collator, batch_size), strict=True))
    return [computed[i] if i in computed else (cache[c], cache[r]) for i, (c, r) in enumerate(keys)]


def train_policy(
    rows: Sequence[PreferenceRow],
    model_dir,
    out_dir,
    checkpoint_dir,
    *,
    train,  # moalign.config.TrainParams
    dimensions,  # moalign.config.DimensionsParams
    dtype: str = "auto",
    seed: int = 0,
    callbacks: Sequence = (),
    reference_cache: Mapping[str, float] | None = None,
    on_log: Callable[[dict], None] | None = None,
    eval_rows: Sequence[PreferenceRow] = (),
    fingerprint: str | None = None,
) -> list[dict]:
    """Train a policy with ``train.method`` and save a plain (LoRA-merged) HF directory in ``out_dir``.

    Checkpoints go to ``checkpoint_dir`` every ``train.save_steps``; a rerun with the same data
    and settings resumes from the newest one (a fingerprint guards against resuming a different
    run), and a multi-phase method skips the phases it finished. ``reference_cache`` holds starting-
    model scores from :mod:`moalign.training.reference` (used for the first phase; missing ones are
    computed). ``on_log`` receives every log entry as it is made. ``eval_rows`` (held-out pairs) get
    the preference diagnostics before training, every ``train.eval_steps`` and at the end of each
    phase; the first and last are also saved beside the policy for the evaluate stage
    (:data:`~moalign.training.diagnostics.LOGGED_FILE`). Returns the log history (one dict per logging step, tagged with its phase, ``step``
    counted across phases).
    """
    from pathlib import Path

    from transformers import set_seed

    from moalign.models import load_model_and_tokenizer

    set_seed(seed)
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
    checkpoint_dir = Path(checkpoint_dir)
    claim_checkpoints(checkpoint_dir, fingerprint or offline_fingerprint(
        rows, model_dir, train=train, dimensions=dimensions, dtype=dtype, seed=seed))
    phases = plan_phases(rows, train, dimensions)
    collator = PairCollator(tokenizer.pad_token_id)
    diagnose = None
    if eval_rows:
        from moalign.training.diagnostics import diagnostic_pairs, preference_diagnostics

        held_out = diagnostic_pairs(eval_rows, train.eval_pairs)
        diagnose = partial(preference_diagnostics, tokenizer=tokenizer, rows=held_out, dimensions=dimensions.names,
                           template=dimensions.template, max_length=train.max_length, batch_size=train.batch_size)
    history: list[dict] = []
    previous: dict[tuple[str, str], float] = {}  # SPO: (pair id, response) -> s under the last reference
    for index, phase in enumerate(phases):
        phase_dir = checkpoint_dir if len(phases) == 1 else checkpoint_dir / f"phase-{index}-{phase.name}"
        features = features_for(phase, tokenizer, dimensions.names, train.max_length)
        if phase.method.needs_reference:
            # the policy as it enters the phase, before any adapter is attached, is the frozen
            # reference; only the first phase's reference is the starting model the cache scored
            cache = reference_cache if index == 0 else None
            scored = _reference_scores(model, phase, features, collator, train.batch_size, cache or {})
            current = {}
            for row, feature, (chosen, rejected) in zip(phase.rows, features, scored, strict=True):
                feature["ref_chosen_logps"], feature["ref_rejected_logps"] = chosen, rejected
                current[row.id, row.chosen.text], current[row.id, row.rejected.text] = chosen, rejected
                if phase.margin_from_previous:
                    feature["prev_margin"] = _previous_margin(row, current, previous, train.beta)
            previous = current
        # a phase's LoRA adapters are initialised from the global random stream, which after an
        # earlier phase's training holds whatever that training left: seeded here, a rerun that
        # loads the finished phases instead of training them initialises the same adapters
        set_seed(seed + index)
        run = partial(_run_phase, phase, model, features, collator, phase_dir, train=train, dimensions=dimensions,
                      dtype=dtype, seed=seed, callbacks=callbacks, diagnose=diagnose)
        # every phase but the last is kept: the next one starts from it, and a rerun skips it
        model = run_phase(phase.name, phase_dir, history, run, on_log=on_log,
                          keep=index < len(phases) - 1, dtype=model.dtype, device=model.device)

    save_policy(model, tokenizer, out_dir, history)
    if diagnose is not None and is_main_process():
        from moalign.data.schema import write_json
        from moalign.models import model_fingerprint
        from moalign.training.diagnostics import LOGGED_FILE, logged_record

        # the evaluate stage reuses these instead of scoring the same pairs with the same models again
        record = logged_record(history, held_out, model_fingerprint(model_dir))
        if record is not None:
            write_json(Path(out_dir) / LOGGED_FILE, record)
    return history


def _previous_margin(row: PreferenceRow, current: dict, previous: dict, beta: float) -> float:
    """SPO: r_{n-1}(y_w) - r_{n-1}(y_l) with r_{n-1}(y) = beta [s_{n-1}(y) - s_{n-2}(y)]; 0 in round 1."""
    keys = [(row.id, row.chosen.text), (row.id, row.rejected.text)]
    if not all(key in previous for key in keys):
        return 0.0
    chosen, rejected = (beta * (current[key] - previous[key]) for key in keys)
    return chosen - rejected


def _run_phase(phase: Phase, model, features, collator, phase_dir, forward, *, train, dimensions, dtype, seed, callbacks,
               diagnose=None):
    """One Trainer run; returns the (LoRA-merged) model and the phase's log history. ``forward`` (a
    :class:`~moalign.training.runs.ForwardLogs` or None) joins ``callbacks``. ``diagnose(model)``
    gives the held-out diagnostics, logged before a fresh (not resumed) run, every
    ``train.eval_steps`` and at the end."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from moalign.models import pick_device, resolve_dtype

    if train.lora.enabled:
        model = attach_lora(model, train.lora)
    phase_dir.mkdir(parents=True, exist_ok=True)
    torch_dtype = resolve_dtype(dtype, pick_device())
    args = TrainingArguments(
        output_dir=str(phase_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type="cosine",
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=seed,
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        disable_tqdm=False,
        include_num_input_tokens_seen="non_padding",  # the run's token budget, reported beside its result
        # without eval_steps the flow callback still evaluates once, at the last step
        eval_strategy="steps" if diagnose is not None else "no",
        eval_steps=(train.eval_steps or 10**9) if diagnose is not None else None,
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features),
        data_collator=collator,
        objective=Objective(
            method=phase.method, params=train, dimensions=objective_dimensions(train, dimensions.names)
        ),
        callbacks=[*callbacks, *([forward] if forward is not None else [])],
        # only its presence matters to the Trainer: evaluate() scores the held-out pairs itself
        eval_dataset=[] if diagnose is not None else None,
        diagnose=diagnose,
    )
    trainer.train(resume_from_checkpoint=resumable_checkpoint(phase_dir))
    return _trained_model(trainer, phase_dir, merge_lora=train.lora.enabled), trainer.state.log_history


def _trained_model(trainer: Trainer, phase_dir, *, merge_lora: bool):
    """The phase's weights as a plain model. Under FSDP or DeepSpeed each process holds a shard: the
    Trainer's own save gathers them (every process takes part, the main one writes) and the main
    process loads them back; the others get None and write nothing (one phase, no LoRA: the config
    allows no other run there)."""
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        from transformers import AutoModelForCausalLM

        gathered = phase_dir / "gathered"
        trainer.save_model(str(gathered))
        trainer.accelerator.wait_for_everyone()
        return from_pretrained(AutoModelForCausalLM, gathered) if is_main_process() else None
    return trainer.model.merge_and_unload() if merge_lora else trainer.model
