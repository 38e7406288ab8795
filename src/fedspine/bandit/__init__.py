"""S-UCB bandit over (pruning ratio, LoRA rank), its reward, and device grouping for sharing."""

from fedspine.bandit.reward import RewardParts, RewardWeights, compute_reward, failed_reward
from fedspine.bandit.sucb import Arm, BanditPool, SmoothUCB

__all__ = [
    "Arm",
    "BanditPool",
    "RewardParts",
    "RewardWeights",
    "SmoothUCB",
    "compute_reward",
    "failed_reward",
]
