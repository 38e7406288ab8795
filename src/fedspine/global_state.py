"""The server's global LoRA: full width, maximum rank; down-link per device and aggregation.

Global factors are kept in peft's own representation (delta = s * B @ A) with one scaling s
for every rank (lora_alpha = alpha_per_rank * rank), so factors move between ranks without
rescaling. No Flower here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedspine.lora.aggregation import (
    DeviceLoraUpdate,
    LoraFactors,
    aggregate_masked_svd,
    aggregate_zero_pad,
    average_tensors,
    fedavg_factors,
    restrict_and_truncate,
    step_toward,
)


def _scale(factors: dict[str, LoraFactors], by: float) -> dict[str, LoraFactors]:
    """Multiply both factors by sqrt(by): moves between delta = B@A and delta = s*B@A."""
    root = math.sqrt(by)
    return {n: LoraFactors(A=f.A * root, B=f.B * root) for n, f in factors.items()}


@dataclass
class DeviceUpload:
    factors: dict[str, LoraFactors]
    rows: dict[str, torch.Tensor | None]
    cols: dict[str, torch.Tensor | None]
    head: dict[str, torch.Tensor]
    num_examples: int
    received: dict[str, LoraFactors] | None = None  # the down-link's factors, at round start
    received_rows: dict[str, torch.Tensor | None] | None = None
    received_cols: dict[str, torch.Tensor | None] | None = None


@dataclass
class GlobalLora:
    factors: dict[str, LoraFactors]  # full width, rank = max_rank, peft representation
    head: dict[str, torch.Tensor]
    scaling: float
    max_rank: int
    aggregation: str  # "fedavg" | "zero-pad" | "masked-svd" | "masked-svd-residual"
    server_step: float = 1.0  # train.server_learning_rate: share of the way to the aggregate

    @property
    def alpha_per_rank(self) -> float:
        """lora_alpha = alpha_per_rank * r makes peft's scaling alpha / r equal to it."""
        return self.scaling

    def full_shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (f.B.shape[0], f.A.shape[1]) for n, f in self.factors.items()}

    def downlink(self, rows: dict, cols: dict, rank: int) -> dict[str, LoraFactors]:
        """The global LoRA restricted to a device's kept coordinates, at the device's rank."""
        if self.aggregation.startswith("masked-svd"):
            return restrict_and_truncate(
                _scale(self.factors, self.scaling), rows, cols, rank, self.scaling
            )
        return {n: _slice(f, rows.get(n), cols.get(n), rank) for n, f in self.factors.items()}

    def aggregate(self, uploads: list[DeviceUpload]) -> None:
        """Move the global state toward the aggregation of this round's uploads (all the way
        with the default server step of 1)."""
        if not uploads:
            return
        step = self.server_step
        self.head = {
            key: step_toward(
                self.head[key],
                average_tensors(
                    [u.head[key] for u in uploads], [float(u.num_examples) for u in uploads]
                ),
                step,
            )
            for key in self.head
        }
        if self.aggregation in ("fedavg", "zero-pad"):
            updates = [_as_update(u, 1.0) for u in uploads]
            merged = (
                fedavg_factors(updates)
                if self.aggregation == "fedavg"
                else aggregate_zero_pad(updates, self.full_shapes(), self.max_rank)
            )
            self.factors = {
                name: LoraFactors(
                    A=step_toward(self.factors[name].A, f.A, step),
                    B=step_toward(self.factors[name].B, f.B, step),
                )
                for name, f in merged.items()
            }
            return
        merged = aggregate_masked_svd(
            [_as_update(u, self.scaling) for u in uploads],
            self.full_shapes(),
            self.max_rank,
            previous=_scale(self.factors, self.scaling),
            keep_residual=self.aggregation == "masked-svd-residual",
            server_step=step,
        )
        self.factors = _scale(merged, 1.0 / self.scaling)


def update_norm(global_lora: GlobalLora, upload: DeviceUpload) -> float:
    """Frobenius norm of what the device changed this round, in its own kept coordinates.

    The device's delta minus the global delta restricted to the same coordinates: the
    "importance of the LoRA update" term of FedSpine's reward. Computed on the factors:
    with B = [B_i, -B_g] and A = [A_i; A_g], ||s B A||^2 = s^2 sum((B^T B) * (A A^T)), which
    costs O((out + in) k^2) instead of forming the out x in matrices.
    """
    total = 0.0
    for name, factors in upload.factors.items():
        g = global_lora.factors[name]
        rows, cols = upload.rows.get(name), upload.cols.get(name)
        g_B = g.B if rows is None else g.B[rows]
        g_A = g.A if cols is None else g.A[:, cols]
        B = torch.cat([factors.B, -g_B], dim=1)
        A = torch.cat([factors.A, g_A], dim=0)
        total += float(((B.T @ B) * (A @ A.T)).sum().clamp_min(0.0))
    return global_lora.scaling * math.sqrt(total)


def _as_update(upload: DeviceUpload, scaling: float) -> DeviceLoraUpdate:
    return DeviceLoraUpdate(
        factors=upload.factors,
        scaling=scaling,
        rows=upload.rows,
        cols=upload.cols,
        num_examples=upload.num_examples,
        received=upload.received,
        received_rows=upload.received_rows,
        received_cols=upload.received_cols,
    )


def _slice(f: LoraFactors, rows, cols, rank: int) -> LoraFactors:
    """HetLoRA-style down-link: keep the first `rank` components and the kept coordinates."""
    A, B = f.A[:rank], f.B[:, :rank]
    if cols is not None:
        A = A[:, cols]
    if rows is not None:
        B = B[rows]
    return LoraFactors(A=A.clone(), B=B.clone())
