"""Pairs as model inputs, and their log-probabilities: shared by the trainer, the reference scoring
and the held-out diagnostics.

Batch layout: a batch of B pairs becomes N = B x P x 2 sequences, ordered (pair, prompt, side) with
side 0 = chosen and 1 = rejected; P = K dimension prompts for AMoPO, 1 plain prompt otherwise. One
forward serves every prompt (no loop of K forwards) and ``view(B, P, 2, T)`` recovers the structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moalign.data.schema import PreferenceRow
from moalign.generation import chat_prompt


def tokenize_pair(row: PreferenceRow, tokenizer, prompts: Sequence[str], max_length: int) -> dict:
    """Token ids of the pair's prompts and of both responses, truncated to ``max_length``."""
    prompt_ids = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids for p in prompts]
    # a response ends with the end-of-turn token, so the model also learns where to stop; one the
    # generation limit cut off does not: the model never chose to stop there
    chosen, rejected = (
        tokenizer(side.text, add_special_tokens=False).input_ids + ([] if side.truncated else [tokenizer.eos_token_id])
        for side in (row.chosen, row.rejected)
    )
    longest = max(len(p) for p in prompt_ids) + max(len(chosen), len(rejected))
    return {
        "id": row.id,
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "length": min(longest, max_length),
        "max_length": max_length,
    }


def _join(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], int]:
    """Prompt + response within ``max_length``: cut the response's tail first, then the prompt's head."""
    response = response[: max(1, max_length - len(prompt))]
    prompt = prompt[-(max_length - len(response)) :]
    return prompt + response, len(prompt)


class PairCollator:
    """Pads the B x K x 2 sequences of a batch to its longest one, on the left.

    Left padding puts every response at the right end, so the log-probabilities need logits for
    the last (longest response + 1) positions only (``logits_to_keep``): the (N, L, V) logits over
    the prompt tokens, the largest tensor of the step, are never built.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequences, starts = [], []
        for feature in features:
            for prompt in feature["prompt_ids"]:
                for response in (feature["chosen_ids"], feature["rejected_ids"]):
                    ids, start = _join(prompt, response, feature["max_length"])
                    sequences.append(ids)
                    starts.append(start)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        completion_mask = torch.zeros_like(input_ids)
        for i, (ids, start) in enumerate(zip(sequences, starts, strict=True)):
            offset = width - len(ids)
            input_ids[i, offset:] = torch.tensor(ids)
            attention_mask[i, offset:] = 1
            completion_mask[i, offset + start :] = 1
        # positions count real tokens only, so left padding does not shift them
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "completion_mask": completion_mask,
            "num_prompts": torch.tensor(len(features[0]["prompt_ids"])),
            "pair_ids": [feature["id"] for feature in features],
            **{
                key: torch.tensor([feature[key] for feature in features])
                for key in ("ref_chosen_logps", "ref_rejected_logps", "chosen_scores", "rejected_scores", "prev_margin")
                if key in features[0]
            },
        }


#: the per-sequence tensors of a collated batch, (N, width); the other tensors are per pair, (B, ...)
SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids", "completion_mask")


def pair_slice(batch: dict, start: int, stop: int) -> dict:
    """Pairs ``start:stop`` of a :class:`PairCollator` batch, as if collated alone: their B' x P x 2
    sequences, without the columns that are padding in all of them (left padding: a prefix)."""
    rows = 2 * int(batch["num_prompts"])
    width = batch["attention_mask"].shape[1]
    used = batch["attention_mask"][start * rows : stop * rows].any(0)
    first = int(used.int().argmax()) if bool(used.any()) else width
    part = {}
    for key, value in batch.items():
        if key in SEQUENCE_KEYS:
            part[key] = value[start * rows : stop * rows, first:]
        elif key == "num_prompts":
            part[key] = value
        else:  # pair_ids and the per-pair tensors (reference scores, annotated scores, SPO margins)
            part[key] = value[start:stop]
    return part


# ------------------------------------------------------------------------------------------------
# log-probabilities


def completion_token_logps(model, input_ids, attention_mask, position_ids, completion_mask):
    """Per-token log pi(y_t | x, y_<t) of the completion tokens of left-padded sequences.

    Returns (logps, mask), both (N, T) with T = the longest completion in the batch; positions
    outside a sequence's completion are 0 in both.
    """
    span = int(completion_mask.sum(-1).max())
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=span + 1
    ).logits[:, :-1].float()  # (N, T, V): logits at position t predict token t + 1
    labels = input_ids[:, -span:]
    # gather minus logsumexp: log_softmax then gather, without a second (N, T, V) tensor
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    mask = completion_mask[:, -span:].to(token_logps.dtype)
    return token_logps * mask, mask


def split_logps(token_logps: torch.Tensor, mask: torch.Tensor, num_prompts: int):
    """(N, T) per-token values -> summed (B, P, 2), lengths (B, P, 2), and the (B, P, 2, T) views."""
    n, t = token_logps.shape
    b = n // (2 * num_prompts)
    token_logps, mask = token_logps.view(b, num_prompts, 2, t), mask.view(b, num_prompts, 2, t)
    return token_logps.sum(-1), mask.sum(-1).clamp_min(1.0), token_logps, mask



@torch.no_grad()
def score_pairs(model, features: list[dict], collator, batch_size: int) -> list[tuple[float, float]]:
    """Summed log-probabilities s(y_w), s(y_l) of every single-prompt pair under ``model``, without
    gradients: the frozen reference's scores, computed once before training (not in every epoch, as
    a reference forward per step would)."""
    model.eval()
    results = []
    for start in range(0, len(features), batch_size):
        batch = collator(features[start : start + batch_size])
        token_logps, mask = completion_token_logps(
            model, *(batch[key].to(model.device) for key in ("input_ids", "attention_mask", "position_ids", "completion_mask"))
        )
        summed = split_logps(token_logps, mask, int(batch["num_prompts"]))[0]  # (B, 1, 2)
        results.extend((float(c), float(r)) for c, r in summed[:, 0].tolist())
    return results
