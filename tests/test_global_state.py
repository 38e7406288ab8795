"""Global LoRA state: the reward's update norm and the down-link at a device's rank."""

import pytest
import torch

from fedspine.global_state import DeviceUpload, GlobalLora, update_norm
from fedspine.lora.aggregation import LoraFactors


def _global(aggregation: str = "masked-svd") -> GlobalLora:
    torch.manual_seed(0)
    factors = {"m": LoraFactors(A=torch.randn(4, 12), B=torch.randn(10, 4))}
    return GlobalLora(factors, {}, scaling=2.0, max_rank=4, aggregation=aggregation)


def test_update_norm_equals_the_dense_difference_in_kept_coordinates():
    g = _global()
    rows, cols = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4, 7, 11])
    device = LoraFactors(A=torch.randn(2, 5), B=torch.randn(3, 2))
    upload = DeviceUpload({"m": device}, {"m": rows}, {"m": cols}, {}, 10)
    dense = 2.0 * (device.B @ device.A) - 2.0 * (g.factors["m"].B @ g.factors["m"].A)[rows][:, cols]
    assert update_norm(g, upload) == pytest.approx(float(dense.norm()), rel=1e-4)


def test_unchanged_upload_has_zero_update_norm():
    g = _global()
    upload = DeviceUpload(dict(g.factors), {}, {}, {}, 10)
    assert update_norm(g, upload) == pytest.approx(0.0, abs=1e-3)


def test_downlink_reconstructs_the_restricted_delta_at_full_rank():
    g = _global()
    rows, cols = {"m": torch.tensor([1, 4, 6])}, {"m": torch.tensor([0, 2, 9])}
    down = g.downlink(rows, cols, rank=4)["m"]
    full = 2.0 * g.factors["m"].B @ g.factors["m"].A
    assert torch.allclose(2.0 * down.B @ down.A, full[rows["m"]][:, cols["m"]], atol=1e-4)
    sliced = _global("zero-pad").downlink(rows, cols, rank=2)["m"]
    assert sliced.A.shape == (2, 3) and sliced.B.shape == (3, 2)
