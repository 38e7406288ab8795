"""Global LoRA state: the reward's update norm and the down-link at a device's rank."""

import pytest
import torch

from fedspine.global_state import GlobalLora, update_norm
from fedspine.lora import LoraUpload
from fedspine.lora.factors import LoraFactors


def _global(aggregation: str = "masked-svd") -> GlobalLora:
    torch.manual_seed(0)
    factors = {"m": LoraFactors(A=torch.randn(4, 12), B=torch.randn(10, 4))}
    return GlobalLora(factors, {}, scaling=2.0, max_rank=4, aggregation=aggregation)


def test_update_norm_equals_the_dense_difference_in_kept_coordinates():
    g = _global()
    rows, cols = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4, 7, 11])
    device = LoraFactors(A=torch.randn(2, 5), B=torch.randn(3, 2))
    upload = LoraUpload({"m": device}, {"m": rows}, {"m": cols}, 10)
    dense = 2.0 * (device.B @ device.A) - 2.0 * (g.factors["m"].B @ g.factors["m"].A)[rows][:, cols]
    assert update_norm(g, upload) == pytest.approx(float(dense.norm()), rel=1e-4)


def test_unchanged_upload_has_zero_update_norm():
    g = _global()
    upload = LoraUpload(dict(g.factors), {}, {}, 10)
    assert update_norm(g, upload) == pytest.approx(0.0, abs=1e-3)


def test_downlink_reconstructs_the_restricted_delta_at_full_rank():
    g = _global()
    rows, cols = {"m": torch.tensor([1, 4, 6])}, {"m": torch.tensor([0, 2, 9])}
    down = g.downlink(rows, cols, rank=4)["m"]
    full = 2.0 * g.factors["m"].B @ g.factors["m"].A
    assert torch.allclose(2.0 * down.B @ down.A, full[rows["m"]][:, cols["m"]], atol=1e-4)
    sliced = _global("zero-pad").downlink(rows, cols, rank=2)["m"]
    assert sliced.A.shape == (2, 3) and sliced.B.shape == (3, 2)


def _upload(factors: LoraFactors, head: torch.Tensor, examples: int = 10) -> LoraUpload:
    return LoraUpload({"m": factors}, {}, {}, examples, head={"bias": head})


@pytest.mark.parametrize("aggregation", ["fedavg", "zero-pad"])
def test_server_step_moves_factors_and_head_that_share_of_the_way(aggregation):
    old = _global(aggregation)
    old.head = {"bias": torch.zeros(3)}
    before = LoraFactors(A=old.factors["m"].A.clone(), B=old.factors["m"].B.clone())
    sent = [
        _upload(LoraFactors(A=torch.randn(4, 12), B=torch.randn(10, 4)), torch.full((3,), 2.0)),
        _upload(LoraFactors(A=torch.randn(4, 12), B=torch.randn(10, 4)), torch.full((3,), 4.0)),
    ]
    full = _global(aggregation)
    full.head = {"bias": torch.zeros(3)}
    full.aggregate(sent)
    old.server_step = 0.25
    old.aggregate(sent)
    for part in ("A", "B"):
        start, target = getattr(before, part), getattr(full.factors["m"], part)
        expected = start + 0.25 * (target - start)
        assert torch.allclose(getattr(old.factors["m"], part), expected, atol=1e-6)
    assert torch.allclose(full.head["bias"], torch.full((3,), 3.0))
    assert torch.allclose(old.head["bias"], torch.full((3,), 0.75))


@pytest.mark.parametrize("aggregation", ["masked-svd", "masked-svd-residual"])
def test_server_step_moves_the_global_delta_that_share_of_the_way(aggregation):
    """Rank 2 before + rank 2 uploads fit in max_rank 4, so the re-factorised delta is exact."""
    torch.manual_seed(1)
    start = LoraFactors(A=torch.randn(2, 12), B=torch.randn(10, 2))
    padded = LoraFactors(
        A=torch.cat([start.A, torch.zeros(2, 12)]), B=torch.cat([start.B, torch.zeros(10, 2)], 1)
    )
    device = LoraFactors(A=torch.randn(2, 12), B=torch.randn(10, 2))
    g_full = GlobalLora({"m": padded}, {}, scaling=2.0, max_rank=4, aggregation=aggregation)
    g_half = GlobalLora(
        {"m": padded}, {}, scaling=2.0, max_rank=4, aggregation=aggregation, server_step=0.5
    )
    for g in (g_full, g_half):
        g.aggregate([LoraUpload({"m": device}, {}, {}, 10)])
    old = start.B @ start.A
    new_full = g_full.factors["m"].B @ g_full.factors["m"].A
    new_half = g_half.factors["m"].B @ g_half.factors["m"].A
    assert not torch.allclose(new_full, old, atol=1e-3)
    assert torch.allclose(new_half, old + 0.5 * (new_full - old), atol=1e-4)
