"""MOSLIM's reward route: one multi-head classification reward model and the reward mapping.

``map_reward`` (Eq. 11) and :class:`RewardStats` live in :mod:`moalign.rewards.mapping`; the model,
its loss and its scoring in :mod:`moalign.rewards.model`; its training in
:mod:`moalign.rewards.training`.
"""

from moalign.rewards.mapping import MIN_STD, UNCONTROLLED, RewardStats, map_reward

__all__ = ["MIN_STD", "UNCONTROLLED", "RewardStats", "map_reward"]
