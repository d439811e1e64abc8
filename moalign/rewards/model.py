"""MOSLIM's multi-head reward model: one backbone, one intensity classifier per preference dimension.

MOSLIM (section 2.2) replaces the scalar reward head with K classification heads on a shared
backbone. Head k reads the hidden state of the answer's last token and classifies the *intensity*
of dimension k into n_k classes (Appendix B's data types 1-4 differ only in n_k, 2 to 5). One
backbone forward serves every head, which is the point of the design: K dimensions cost one model,
not K (``benchmarks/reward.py`` measures it).

moalign's judges score each dimension on a 1-5 scale; :func:`intensity_class` bins a score into a
head's classes. The control tag ``<dimension n>`` of a prompt names intensity n = class + 1.

Everything that turns text into model inputs lives in :func:`encode_pairs`, used by training and
scoring alike, so the pooled token is the same end-of-answer token in both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moalign.generation import chat_prompt
from moalign.models import from_pretrained

HEADS_FILE = "heads.safetensors"
META_FILE = "reward_heads.json"
FORMAT_VERSION = 1
IGNORE_INDEX = -100  # a label that takes no part in the loss: the judge gave no score for that dimension


class RewardModelError(ValueError):
    """Reward heads and configuration disagree (dimensions, classes, checkpoint), or a label is invalid."""


# ------------------------------------------------------------------------------------------------
# labels


def intensity_class(score: int, n_classes: int, scale: tuple[int, int] = (1, 5)) -> int:
    """The 0-based intensity class of a judge score: equal-width bins over the score scale.

    ``class = min(n - 1, floor((score - lo) * n / (hi - lo + 1)))``. On the 1-5 scale:

    ======  =========  =========  =========  =========  =========
    n       score 1    score 2    score 3    score 4    score 5
    ======  =========  =========  =========  =========  =========
    2       0          0          0          1          1
    3       0          0          1          1          2
    4       0          0          1          2          3
    5       0          1          2          3          4
    ======  =========  =========  =========  =========  =========

    With n = 5 the class is score - 1; with fewer classes the low bins take the extra score (an odd
    scale cannot split evenly; a 3 is "not good" for a binary head). The control-tag intensity is
    class + 1. ``n`` must be 2 .. (hi - lo + 1): one class says nothing, and more classes than scores
    would leave classes that no label can reach.
    """
    lo, hi = scale
    width = hi - lo + 1
    if not 2 <= n_classes <= width:
        raise RewardModelError(f"a head needs 2 to {width} classes on the {lo}-{hi} scale, got {n_classes}")
    if not lo <= score <= hi:
        raise ValueError(f"score {score} is outside the {lo}-{hi} scale")
    return min(n_classes - 1, (score - lo) * n_classes // width)


# ------------------------------------------------------------------------------------------------
# loss


def head_losses(
    logits: Sequence[torch.Tensor], labels: torch.Tensor, names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every head, and their sum: (total, per_head of shape (K,)).

    Each head's loss is MOSLIM's Eq. 6-9, the mean cross-entropy of its softmax over its own n_k
    classes. The total is the plain sum over heads. (The paper's Eq. 10 writes one cross-entropy
    over the concatenated heads; the heads have separate softmaxes and labels, so summing the
    per-head terms is what Eq. 6-9 define, and it keeps a 2-class head from being drowned by a
    5-class one through a shared normaliser.)

    ``labels`` is (B, K) long; :data:`IGNORE_INDEX` (-100) leaves that head out for that row (the
    judge failed on the dimension). A head whose every label is ignored contributes exactly 0.
    """
    if labels.dim() != 2 or labels.shape[1] != len(logits):
        raise RewardModelError(f"labels must be (batch, {len(logits)} heads), got {tuple(labels.shape)}")
    per_head = []
    for k, head_logits in enumerate(logits):
        target = labels[:, k]
        n = head_logits.shape[-1]
        bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= n))
        if bool(bad.any()):
            name = names[k] if names is not None else f"#{k}"
            raise RewardModelError(
                f"head {name} ({n} classes): label {int(target[bad][0])} is outside 0..{n - 1} "
                f"(and is not the ignore value {IGNORE_INDEX})"
            )
        summed = F.cross_entropy(head_logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
        counted = (target != IGNORE_INDEX).sum().clamp_min(1)  # all ignored: 0 / 1, not 0 / 0
        per_head.append(summed / counted)
    per_head_tensor = torch.stack(per_head)
    return per_head_tensor.sum(), per_head_tensor


# ------------------------------------------------------------------------------------------------
# the model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 of every row: the last real token, whether padding is left or right."""
    width = attention_mask.shape[-1]
    # argmax returns the first maximum, so on the flipped mask it finds the last 1
    return width - 1 - attention_mask.long().flip(-1).argmax(-1)


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states -> (B, H): the state of each row's last real token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask).to(hidden.device)]


@dataclass
class RewardOutput:
    """What :meth:`MultiHeadRewardModel.forward` returns: per-head logits, and the loss given labels."""

    logits: tuple[torch.Tensor, ...]
    loss: torch.Tensor | None = None
    head_losses: torch.Tensor | None = None  # (K,), with the loss


class MultiHeadRewardModel(nn.Module):
    """A transformers base model (``last_hidden_state``) with one linear intensity head per dimension."""

    def __init__(self, backbone: nn.Module, dimensions: Sequence[str], n_classes: Sequence[int]):
        super().__init__()
        dimensions, n_classes = tuple(dimensions), tuple(int(n) for n in n_classes)
        if not dimensions or len(dimensions) != len(n_classes):
            raise RewardModelError(
                f"one class count per dimension is needed: dimensions {list(dimensions)}, "
                f"classes {list(n_classes)}"
            )
        if len(set(dimensions)) != len(dimensions):
            raise RewardModelError(f"dimension names repeat: {list(dimensions)}")
        if min(n_classes) < 2:
            raise RewardModelError(f"every head needs at least 2 classes, got {list(n_classes)}")
        self.backbone = backbone
        self.dimensions = dimensions
        self.n_classes = n_classes
        config = backbone.config
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, n) for n in n_classes)
        # small normal weights and zero bias, as transformers initialises its score heads: every head
        # starts near the uniform distribution instead of at a random confident guess
        for head in self.heads:
            nn.init.normal_(head.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(head.bias)
        parameter = next(backbone.parameters())
        self.heads.to(device=parameter.device, dtype=parameter.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> RewardOutput:
        # positions count real tokens only, so a left-padded row sees the positions it has unpadded
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        pooled = pool_last_token(hidden, attention_mask)
        logits = tuple(head(pooled.to(head.weight.dtype)) for head in self.heads)
        if labels is None:
            return RewardOutput(logits=logits)
        loss, per_head = head_losses(logits, labels, self.dimensions)
        return RewardOutput(logits=logits, loss=loss, head_losses=per_head)

    # --------------------------------------------------------------------------------------------
    # persistence

    @classmethod
    def from_backbone(
        cls,
        model_dir: str | os.PathLike[str],
        dimensions: Sequence[str],
        n_classes: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        seed: int = 0,
    ) -> MultiHeadRewardModel:
        """Fresh heads on the base model of an HF directory (a causal LM directory works: its LM head
        is dropped). The heads' initial weights come from ``seed`` alone, so a rerun trains the same
        model whatever drew random numbers before (the global generator is left as it was)."""
        from transformers import AutoModel

        from moalign.models import require_model_dir

        require_model_dir(model_dir, made_by="the prepare_model stage")
        backbone = from_pretrained(AutoModel, model_dir, dtype=dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(backbone, dimensions, n_classes)
        return model.to(device) if device is not None else model

    def save(self, directory: str | os.PathLike[str], tokenizer=None) -> Path:
        """Write the backbone (``save_pretrained``), ``heads.safetensors``, ``reward_heads.json`` and,
        if given, the tokenizer.

        Everything is written into a temporary sibling folder that is renamed into place at the end,
        so ``directory`` is either the old model or the new one; ``reward_heads.json`` is also the
        last file written, so a folder without it is incomplete.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            self.backbone.save_pretrained(staging, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            heads = {key: value.detach().contiguous().cpu() for key, value in self.heads.state_dict().items()}
            save_file(heads, staging / HEADS_FILE, metadata={"format": "pt"})
            meta = {
                "dimensions": list(self.dimensions),
                "n_classes": list(self.n_classes),
                "pooling": "last_token",
                "format_version": FORMAT_VERSION,
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp makes 0700
            old = directory.with_name(f".{directory.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if directory.exists():
                directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        dimensions: Sequence[str] | None = None,
        n_classes: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> MultiHeadRewardModel:
        """A saved reward model; ``dimensions`` / ``n_classes``, when given, must match its heads.

        A mismatch raises :class:`RewardModelError` naming both sides: scoring with heads trained for
        other dimensions or class counts would silently give wrong rewards.
        """
        from safetensors.torch import load_file
        from transformers import AutoModel

        from moalign.models import ModelDirError

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise ModelDirError(
                f"{directory}: no {META_FILE}, so this is not a (complete) reward model; "
                "the train_reward stage makes it (dvc repro train_reward)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("pooling") != "last_token":
            raise RewardModelError(
                f"{directory}: {META_FILE} has format_version {meta.get('format_version')!r} and pooling "
                f"{meta.get('pooling')!r}; this moalign reads format_version {FORMAT_VERSION}, "
                "pooling last_token"
            )
        saved_dims, saved_classes = list(meta["dimensions"]), [int(n) for n in meta["n_classes"]]
        wanted_dims = saved_dims if dimensions is None else list(dimensions)
        wanted_classes = saved_classes if n_classes is None else [int(n) for n in n_classes]
        if (wanted_dims, wanted_classes) != (saved_dims, saved_classes):
            raise RewardModelError(
                f"{directory}: the checkpoint has heads {describe_heads(saved_dims, saved_classes)} but "
                f"dimensions.names / reward.classes ask for {describe_heads(wanted_dims, wanted_classes)}; "
                "retrain the reward model (dvc repro train_reward) or change params.yaml"
            )
        backbone = from_pretrained(AutoModel, directory, dtype=dtype)
        model = cls(backbone, saved_dims, saved_classes)
        model.heads.load_state_dict(load_file(directory / HEADS_FILE))
        model.heads.to(dtype)
        return model.to(device) if device is not None else model


def describe_heads(dimensions: Sequence[str], n_classes: Sequence[int]) -> str:
    """``correctness(5), harmlessness(2)``; lists of unequal length show the leftovers as ``?``."""
    pairs = [
        f"{dimensions[i] if i < len(dimensions) else '?'}({n_classes[i] if i < len(n_classes) else '?'})"
        for i in range(max(len(dimensions), len(n_classes)))
    ]
    return ", ".join(pairs) or "(none)"


# ------------------------------------------------------------------------------------------------
# text -> inputs, and scoring


def encode_pairs(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids of chat_prompt(prompt) + response + EOS, at most ``max_length``, cut from the left.

    The EOS token closes every answer so the pooled state is that of the same end-of-answer token at
    training and at scoring. Truncation keeps the end: the pooled token and the answer survive, and
    the head of the prompt (the system message first) is what is lost.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    texts = [chat_prompt(tokenizer, prompt) + response for prompt, response in zip(prompts, responses, strict=True)]
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    return [list(row + [tokenizer.eos_token_id])[-max_length:] for row in ids]


def pad_left(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of sequences padded on the left to the longest one.

    Pooling reads the mask, so either side works; left keeps every row's last token in the last
    column.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, ids in enumerate(sequences):
        if ids:
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def score_texts(
    model: MultiHeadRewardModel,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> list[torch.Tensor]:
    """Per head, an (N, n_k) float32 CPU tensor of class probabilities for each (prompt, response).

    Sequences are sorted by length so a batch pads little; results come back in input order.
    """
    encoded = encode_pairs(tokenizer, prompts, responses, max_length)
    probs = [torch.zeros(len(encoded), n, dtype=torch.float32) for n in model.n_classes]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                input_ids, attention_mask = pad_left([encoded[i] for i in batch], pad_token_id(tokenizer))
                output = model(
                    input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)
                )
                index = torch.tensor(batch, dtype=torch.long)
                for head_probs, logits in zip(probs, output.logits, strict=True):
                    head_probs[index] = logits.float().softmax(-1).cpu()
    finally:
        model.train(was_training)
    return probs
