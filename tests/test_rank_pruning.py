"""HetLoRA rank self-pruning: trailing components that carry little are dropped."""

import torch

from fedspine.lora.factors import LoraFactors
from fedspine.lora.rank_pruning import self_pruned_rank, truncate_rank


def _factors(component_scale: list[float]) -> dict[str, LoraFactors]:
    rank = len(component_scale)
    torch.manual_seed(0)
    A = torch.randn(rank, 12)
    A = A / A.norm(dim=1, keepdim=True)
    B = torch.randn(10, rank)
    B = B / B.norm(dim=0, keepdim=True) * torch.tensor(component_scale)
    return {"m": LoraFactors(A=A, B=B)}


def test_small_tail_is_dropped_and_large_tail_kept():
    assert self_pruned_rank(_factors([1.0, 1.0, 0.01, 0.01]), tail_share=0.05) == 2
    assert self_pruned_rank(_factors([1.0, 1.0, 1.0, 1.0]), tail_share=0.05) == 4


def test_zero_factors_keep_their_rank_and_min_rank_holds():
    zeros = {"m": LoraFactors(A=torch.zeros(4, 3), B=torch.zeros(5, 4))}
    assert self_pruned_rank(zeros, 0.05) == 4
    assert self_pruned_rank(_factors([1.0, 0.0, 0.0, 0.0]), 0.5, min_rank=2) == 2


def test_truncation_keeps_leading_components_exactly():
    factors = _factors([1.0, 0.5, 0.2])
    cut = truncate_rank(factors, 2)["m"]
    assert cut.A.shape == (2, 12) and cut.B.shape == (10, 2)
    assert torch.equal(cut.A, factors["m"].A[:2])
