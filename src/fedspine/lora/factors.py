"""One LoRA module's factors, the unit every other LoRA module moves around. Pure torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """At least float32: products and sums of bf16 factors lose too much."""
    return torch.promote_types(tensor.dtype, torch.float32)


@dataclass
class LoraFactors:
    """One LoRA module's factors; delta = scaling * B @ A.

    B is None only in a FedSA-LoRA message, where B never leaves the device (A alone travels).
    """

    A: Tensor  # (r, in_kept)
    B: Tensor | None  # (out_kept, r)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self, scaling: float = 1.0) -> Tensor:
        """scaling * B @ A, computed in at least float32."""
        if self.B is None:
            raise ValueError("no B: an A-only (FedSA-LoRA) factor pair has no delta")
        dtype = compute_dtype(self.A)
        return scaling * (self.B.to(dtype) @ self.A.to(dtype))
