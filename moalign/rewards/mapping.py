"""MOSLIM's reward mapping (Eq. 11) and the running statistics it standardises with.

The multi-head reward model gives, for each dimension i, a distribution over intensity classes. A
prompt's control tags ask for one intensity per controlled dimension (``<helpfulness 4>``). The
reward of an answer is the probability its head gives the requested intensity, standardised by the
mean and standard deviation that head's probability for that intensity had over the training data,
then averaged over the dimensions:

    r = (1/k) * sum_i mask_i * (p_i^target - p_i^avg) / p_i^std

where k is the number of dimensions of the reward model, **not** the number the prompt controls
(a prompt controlling one dimension of four gets a quarter of that dimension's standardised score),
and mask_i is 1 for a dimension the prompt's tags name and 0 otherwise. Standardising makes the
heads' scores additive: a head whose probabilities are always near 0.9 and one whose are near 0.2
contribute on the same scale.

:func:`map_reward` is the pure formula on (batch, k) tensors; :class:`RewardStats` keeps the
per-(head, intensity) mean and standard deviation (Welford's running algorithm, merged batch by
batch), is saved beside the reward model as JSON, and turns a batch of head probabilities and
requested intensities into rewards (:meth:`RewardStats.rewards`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: below this the head's probability for an intensity barely varied over the training data; the
#: standardised score would explode, so the standard deviation is floored here (and reported)
MIN_STD = 1e-3
STATS_FILE = "reward_stats.json"
UNCONTROLLED = -1  # a target class meaning "the prompt does not control this dimension"


def class_counts(labels: torch.Tensor, n_classes: Sequence[int]) -> list[list[int]]:
    """Per head, how many rows of (rows, k) ``labels`` fall in each class; -100 (unscored) is not counted."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    return [torch.bincount(labels[:, head][labels[:, head] >= 0], minlength=n).tolist()
            for head, n in enumerate(n_classes)]


def map_reward(
    target_probs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """MOSLIM Eq. 11: ``(1/k) * sum_i mask_i (p_i - mean_i) / std_i`` per row.

    All inputs are (batch, k): each head's probability of the requested intensity, the recorded
    mean and standard deviation of that probability for that head and intensity, and the 0/1 mask.
    Masked-out entries are ignored whatever they hold (an uncontrolled dimension has no requested
    intensity, so no statistics to look up). A masked-in standard deviation that is not positive
    and finite, or a non-finite probability or mean, is an error: a reward is never NaN.
    """
    if not (target_probs.shape == mean.shape == std.shape == mask.shape) or target_probs.dim() != 2:
        raise ValueError(
            "map_reward takes (batch, k) tensors of one shape; got "
            f"{tuple(target_probs.shape)}, {tuple(mean.shape)}, {tuple(std.shape)}, {tuple(mask.shape)}"
        )
    active = mask != 0
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("the mask must hold only 0 and 1")
    if active.any():
        bad_std = active & ~(torch.isfinite(std) & (std > 0))
        if bad_std.any():
            row, head = (int(v) for v in bad_std.nonzero()[0])
            raise ValueError(f"std must be positive and finite where the mask is 1; row {row}, head {head}: "
                             f"{float(std[row, head])}")
        bad_value = active & ~(torch.isfinite(target_probs) & torch.isfinite(mean))
        if bad_value.any():
            row, head = (int(v) for v in bad_value.nonzero()[0])
            raise ValueError(f"non-finite probability or mean at row {row}, head {head}")
    k = target_probs.shape[1]
    safe_std = torch.where(active, std, torch.ones_like(std))
    standardised = torch.where(active, (target_probs - mean) / safe_std, torch.zeros_like(target_probs))
    return standardised.sum(dim=1) / k


class RewardStats:
    """Running mean and standard deviation of each head's probability for each intensity class.

    ``update`` takes the heads' probabilities for a batch of responses (one (batch, n_classes)
    tensor per head) and merges them in with Chan et al.'s parallel form of Welford's algorithm, so
    the result does not depend on how the data was batched. The standard deviation is the
    population one (divide by n), floored at :data:`MIN_STD`.
    """

    def __init__(self, dimensions: Sequence[str], n_classes: Sequence[int]):
        if len(dimensions) != len(n_classes) or not dimensions:
            raise ValueError(f"{len(dimensions)} dimensions but {len(n_classes)} class counts")
        self.dimensions = list(dimensions)
        self.n_classes = [int(n) for n in n_classes]
        self.count = 0
        self.mean = [torch.zeros(n, dtype=torch.float64) for n in self.n_classes]
        self.m2 = [torch.zeros(n, dtype=torch.float64) for n in self.n_classes]
        # per head, how many training responses the judge put in each class (None: not recorded)
        self.label_counts: list[list[int]] | None = None

    def count_labels(self, labels: torch.Tensor) -> None:
        """Record the training labels' class counts, (rows, k) classes with -100 for unscored."""
        self.label_counts = class_counts(labels, self.n_classes)

    def supported_intensities(self) -> list[list[int]]:
        """Per head, the intensities (1-based) some training response had. A class no response had
        was never taught: its probability is noise around ~0, and Eq. 11 divides it by a std at the
        floor, so a tag asking for it rewards noise. Every intensity when no counts were recorded."""
        if self.label_counts is None:
            return [list(range(1, n + 1)) for n in self.n_classes]
        return [[c + 1 for c, count in enumerate(counts) if count] for counts in self.label_counts]

    def update(self, probs: Sequence[torch.Tensor]) -> None:
        """Merge one batch: per head a (batch, n_classes) tensor of probabilities."""
        if len(probs) != len(self.dimensions):
            raise ValueError(f"{len(probs)} heads given, the statistics have {len(self.dimensions)}")
        batch = probs[0].shape[0]
        for head, (p, n) in enumerate(zip(probs, self.n_classes, strict=True)):
            if p.dim() != 2 or p.shape != (batch, n):
                raise ValueError(f"head {self.dimensions[head]}: expected ({batch}, {n}), got {tuple(p.shape)}")
            if not torch.isfinite(p).all():
                raise ValueError(f"head {self.dimensions[head]}: non-finite probabilities")
        if batch == 0:
            return
        total = self.count + batch
        for head, p in enumerate(probs):
            p = p.detach().to(torch.float64).cpu()
            batch_mean = p.mean(dim=0)
            batch_m2 = ((p - batch_mean) ** 2).sum(dim=0)
            delta = batch_mean - self.mean[head]
            self.mean[head] = self.mean[head] + delta * batch / total
            self.m2[head] = self.m2[head] + batch_m2 + delta**2 * self.count * batch / total
        self.count = total

    def std(self, head: int) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no statistics recorded yet (update() was never called)")
        return (self.m2[head] / self.count).sqrt().clamp_min(MIN_STD)

    def lookup(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, mask), each (batch, k), for target classes (batch, k): a 0-based intensity
        class per head, or :data:`UNCONTROLLED` (-1) where the prompt does not control it."""
        self._check_targets(targets)
        mask = (targets != UNCONTROLLED).to(torch.float32)
        mean = torch.zeros(targets.shape, dtype=torch.float32)
        std = torch.ones(targets.shape, dtype=torch.float32)
        for head in range(len(self.dimensions)):
            chosen = targets[:, head].clamp_min(0)
            mean[:, head] = self.mean[head][chosen].to(torch.float32)
            std[:, head] = self.std(head)[chosen].to(torch.float32)
        return mean, std, mask

    def rewards(self, probs: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Eq. 11 rewards (batch,) from the heads' probabilities (per head (batch, n_classes)) and
        the requested classes (batch, k), as :meth:`lookup`."""
        mean, std, mask = self.lookup(targets)  # checks the targets before they index anything
        target_probs = torch.stack(
            [p.detach().float().cpu()[torch.arange(len(p)), targets[:, i].clamp_min(0)]
             for i, p in enumerate(probs)],
            dim=1,
        )
        return map_reward(target_probs, mean, std, mask)

    def _check_targets(self, targets: torch.Tensor) -> None:
        if targets.dim() != 2 or targets.shape[1] != len(self.dimensions):
            raise ValueError(f"targets must be (batch, {len(self.dimensions)}), got {tuple(targets.shape)}")
        for head, n in enumerate(self.n_classes):
            column = targets[:, head]
            bad = (column != UNCONTROLLED) & ((column < 0) | (column >= n))
            if bad.any():
                row = int(bad.nonzero()[0])
                raise ValueError(
                    f"row {row}: target class {int(column[row])} for {self.dimensions[head]}, "
                    f"which has classes 0-{n - 1} (intensities 1-{n})"
                )

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        heads = {}
        for head, d in enumerate(self.dimensions):
            heads[d] = {
                "n_classes": self.n_classes[head],
                "mean": [float(v) for v in self.mean[head]],
                "m2": [float(v) for v in self.m2[head]],
                "std": [float(v) for v in self.std(head)] if self.count else None,
                "label_counts": None if self.label_counts is None else self.label_counts[head],
            }
        # the head order is a list of its own: JSON objects are written with sorted keys
        return {"format_version": 1, "count": self.count, "min_std": MIN_STD, "dimensions": self.dimensions,
                "heads": heads}

    @classmethod
    def from_dict(cls, payload: dict[str, Any], source: str = "reward statistics") -> RewardStats:
        try:
            heads, order = payload["heads"], payload["dimensions"]
            if sorted(order) != sorted(heads):
                raise ValueError(f"dimensions {order} do not match the heads {sorted(heads)}")
            stats = cls(order, [heads[d]["n_classes"] for d in order])
            stats.count = int(payload["count"])
            for head, d in enumerate(stats.dimensions):
                mean, m2 = heads[d]["mean"], heads[d]["m2"]
                if len(mean) != stats.n_classes[head] or len(m2) != stats.n_classes[head]:
                    raise ValueError(f"head {d}: {len(mean)} means for {stats.n_classes[head]} classes")
                if not all(math.isfinite(v) for v in [*mean, *m2]):
                    raise ValueError(f"head {d}: non-finite values")
                stats.mean[head] = torch.tensor(mean, dtype=torch.float64)
                stats.m2[head] = torch.tensor(m2, dtype=torch.float64)
            counts = [heads[d].get("label_counts") for d in stats.dimensions]
            if all(c is not None for c in counts):
                for d, c, n in zip(stats.dimensions, counts, stats.n_classes, strict=True):
                    if len(c) != n or any(not isinstance(v, int) or v < 0 for v in c):
                        raise ValueError(f"head {d}: label counts {c} for {n} classes")
                stats.label_counts = [list(c) for c in counts]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not valid reward statistics ({error})") from None
        return stats

    def save(self, directory: str | os.PathLike[str]) -> Path:
        from moalign.data.schema import write_json

        path = Path(directory) / STATS_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RewardStats:
        path = Path(directory) / STATS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no reward statistics (the train_reward stage writes them)")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
