"""Batched generation with a chat template, for annotation (sampling) and evaluation (greedy).

Prompts are sorted by token length before batching so a batch pads little, and results come back
in the caller's order. Left padding, because decoder-only models generate from the right end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moalign.generation_backends import BACKEND_FUNCTIONS, resolve_backend


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_return_sequences: int = 1
    batch_size: int = 16
    seed: int = 0
    #: the ``generation`` params (moalign.generation_backends): which decoder runs, its ctranslate2
    #: compute type and where converted models are kept
    backend: str = "transformers"
    compute_type: str = "int8_float32"
    cache_dir: str = "cache/ctranslate2"

    def backend_identity(self, model) -> list[str]:
        """What of the backend a journal's entries depend on: the backend that runs (auto resolved)
        and, for ctranslate2, its compute type. The cache folder is left out: it moves nothing."""
        backend = resolve_backend(self.backend, model)
        return [backend, self.compute_type] if backend == "ctranslate2" else [backend]


class NoChatTemplateError(ValueError):
    """The model directory's tokenizer has no chat template, and every prompt is a chat turn."""


class Completion(str):
    """A generated text that also says whether ``max_new_tokens`` cut it off (``truncated``) before
    the model ended it. A ``str``, so every consumer of plain answers takes it unchanged; annotation
    reads the flag so a cut-off candidate is not trained as if the model had chosen to stop there."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False):
        completion = super().__new__(cls, text)
        completion.truncated = bool(truncated)
        return completion


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the tokenizer's end token and the model's generation config's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


#: a user turn, or a whole conversation ({"role", "content"} messages ending with a user turn: an
#: MT-bench second turn carries the first question and the model's own first answer)
Prompt = str | Sequence[Mapping[str, str]]


def chat_prompt(tokenizer, prompt: Prompt) -> str:
    """The model's chat template applied to one user turn (or a conversation), ready for the
    assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(
            f"{tokenizer.name_or_path}: the tokenizer has no chat template; moalign sends every prompt as "
            "a chat turn, so use an instruct/chat model or add a chat_template to its tokenizer_config.json"
        )
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a conversation to answer must end with a user turn")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    config: DecodingConfig,
    description: str = "generating",
    on_batch: Callable[[dict[int, list[Completion]]], None] | None = None,
    done: Collection[int] = (),
) -> list[list[Completion]]:
    """Return, for each prompt, ``config.num_return_sequences`` completions (special tokens removed,
    :class:`Completion`: a sequence with no end-of-sequence token was cut off by ``max_new_tokens``),
    decoded by ``config.backend`` (:mod:`moalign.generation_backends`).

    ``on_batch`` receives each finished batch as {prompt position: completions}, so a caller can
    save progress as it goes (:func:`generate_resumable`). ``done``: positions the caller already
    has answers for; a batch made only of those is skipped (its prompts get ``[]``) but keeps its
    number, so the batches and their seeds, and with them the samples, are those of a run that was
    never interrupted.
    """
    backend = BACKEND_FUNCTIONS[resolve_backend(config.backend, model)]
    stop_ids = stop_token_ids(model, tokenizer)
    model.eval()
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    results: list[list[Completion]] = [[] for _ in texts]
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        done = set(done)
        todo = [(number, batch) for number, batch in enumerate(batches) if not done.issuperset(batch)]
        for batch_number, batch in tqdm(todo, desc=description, unit="batch"):
            encoded = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            # one seed per batch: the same prompts give the same samples whatever ran before
            torch.manual_seed(config.seed + batch_number)
            generated = backend(model, encoded.input_ids, encoded.attention_mask, config,
                                tokenizer.pad_token_id, stop_ids)
            texts_out = tokenizer.batch_decode(generated, skip_special_tokens=True)
            # finished sequences are padded after their end token: no end token means cut off
            stops = torch.tensor(stop_ids, device=generated.device)
            truncated = (~torch.isin(generated, stops).any(dim=1)).tolist()
            completions = [Completion(text.strip(), cut) for text, cut in zip(texts_out, truncated, strict=True)]
            n = config.num_return_sequences
            for position, index in enumerate(batch):
                results[index] = completions[position * n : (position + 1) * n]
            if on_batch is not None:
                on_batch({index: results[index] for index in batch})
    finally:
        tokenizer.padding_side = padding_side
    return results


def _read_journal(path: Path, fingerprint: str) -> dict[str, list[Completion]]:
    done: dict[str, list[Completion]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
        # entries without "truncated" predate the flag: generated again rather than guessed
        if entry.get("fingerprint") == fingerprint and "truncated" in entry:
            done[entry["id"]] = [Completion(t, c) for t, c in zip(entry["completions"], entry["truncated"], strict=True)]
    return done


def generate_resumable(
    model,
    tokenizer,
    prompts: Mapping[str, Prompt],
    config: DecodingConfig,
    journal: str | os.PathLike[str],
    *,
    model_id: str,
    description: str = "generating",
) -> dict[str, list[Completion]]:
    """:func:`generate` for {prompt id: prompt}, journaled: each batch is appended to ``journal``
    (and flushed) as it finishes, and a rerun generates only the batches the journal lacks for
    this ``model_id`` (e.g. :func:`moalign.models.model_fingerprint`) and decoding config. With sampling, the
    resumed run's samples are those an uninterrupted run would have drawn."""
    journal = Path(journal)
    keys = list(prompts)
    # another backend decodes other tokens (int8 weights) or draws other samples: a journal of its own
    decoding = {k: v for k, v in asdict(config).items() if k not in ("backend", "compute_type", "cache_dir")}
    identity: list[object] = [model_id, decoding, config.backend_identity(model)]
    if config.do_sample:
        # a sample depends on its batch (the batch's seed, its other prompts): only the same prompt
        # list draws it again, so another list starts a journal of its own
        identity.append([[key, prompts[key]] for key in keys])
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    done = _read_journal(journal, fingerprint)
    if any(key not in done for key in keys):
        journal.parent.mkdir(parents=True, exist_ok=True)
        cut_short = journal.exists() and journal.stat().st_size and not journal.read_bytes().endswith(b"\n")
        with journal.open("a", encoding="utf-8") as handle:
            if cut_short:  # end the killed run's partial line, so the next entry starts on its own line
                handle.write("\n")

            def save(batch: dict[int, list[Completion]]) -> None:
                for position, completions in batch.items():
                    key = keys[position]
                    done[key] = completions
                    entry = {"id": key, "fingerprint": fingerprint, "completions": completions,
                             "truncated": [getattr(c, "truncated", False) for c in completions]}
                    handle.write(json.dumps(entry) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

            # every prompt goes in, the journaled ones marked done: the batches are planned as in an
            # uninterrupted run, so a resumed sampling run draws the same samples
            generate(model, tokenizer, [prompts[key] for key in keys], config, description, on_batch=save,
                     done={position for position, key in enumerate(keys) if key in done})
    return {key: done[key] for key in prompts}
