"""HetLoRA's rank self-pruning: a device drops trailing LoRA components that carry little.

With zero-padded aggregation the leading components are trained by every device and the
trailing ones only by high-rank devices, so the tail is where a device can shed rank (and
upload bytes) at little cost. Component j's weight is ||B[:, j]|| * ||A[j, :]|| summed over
modules; the tail is dropped while it holds at most `tail_share` of the total.
"""

from __future__ import annotations

import torch

from fedspine.lora.factors import LoraFactors


def component_weights(factors: dict[str, LoraFactors]) -> torch.Tensor:
    """(r,) summed over modules: the size of each rank-one component of s * B @ A."""
    return sum(f.B.norm(dim=0) * f.A.norm(dim=1) for f in factors.values())


def self_pruned_rank(factors: dict[str, LoraFactors], tail_share: float, min_rank: int = 1) -> int:
    """Smallest rank r' whose dropped tail (components r'..r-1) holds <= tail_share of the total."""
    weights = component_weights(factors)
    total = float(weights.sum())
    rank = weights.numel()
    if total <= 0:
        return rank
    tail = 0.0
    while rank > min_rank and tail + float(weights[rank - 1]) <= tail_share * total:
        tail += float(weights[rank - 1])
        rank -= 1
    return rank


def truncate_rank(factors: dict[str, LoraFactors], rank: int) -> dict[str, LoraFactors]:
    return {
        n: LoraFactors(A=f.A[:rank].clone(), B=f.B[:, :rank].clone()) for n, f in factors.items()
    }
