"""The server's global LoRA: full width, maximum rank, one aggregation rule.

Factors are kept in peft's own representation (delta = s * B @ A) with one scaling s for every
rank (lora_alpha = alpha_per_rank * rank), so factors move between ranks without rescaling.
The rule (`fedspine.lora.aggregators`) owns the down-link and the aggregation; the head is
averaged the same way under every rule. No Flower here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedspine.lora.aggregation import (
    LoraUpload,
    average_tensors,
    delta_norm,
    restricted_deltas,
    step_toward,
)
from fedspine.lora.aggregators import Aggregator, make_aggregator
from fedspine.lora.factors import LoraFactors


@dataclass
class GlobalLora:
    factors: dict[str, LoraFactors]  # full width, rank = max_rank, peft representation
    head: dict[str, torch.Tensor]
    scaling: float
    max_rank: int
    aggregation: str  # a key of fedspine.lora.aggregators.AGGREGATORS
    server_step: float = 1.0  # train.server_learning_rate: share of the way to the aggregate
    # FLoRA: per aggregation so far, the rank of its stack (sum of the uploads' ranks): what a
    # device that missed those rounds must download to bring its merged base up to date
    stack_ranks: list[int] = field(default_factory=list)
    rule: Aggregator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rule = make_aggregator(self.aggregation)

    @property
    def alpha_per_rank(self) -> float:
        """lora_alpha = alpha_per_rank * r makes peft's scaling alpha / r equal to it."""
        return self.scaling

    def downlink(self, rows: dict, cols: dict, rank: int) -> dict[str, LoraFactors]:
        """The global LoRA restricted to a device's kept coordinates, at the device's rank."""
        return self.rule.downlink(self.factors, self.scaling, rows, cols, rank)

    def aggregate(self, uploads: list[LoraUpload]) -> None:
        """Move the global state toward the aggregation of this round's uploads (all the way
        with the default server step of 1); no uploads leave it unchanged."""
        if not uploads:
            return
        weights = [float(u.num_examples) for u in uploads]
        self.head = {
            key: step_toward(
                self.head[key],
                average_tensors([u.head[key] for u in uploads], weights),
                self.server_step,
            )
            for key in self.head
        }
        self.factors = self.rule.aggregate(
            self.factors, self.scaling, self.max_rank, uploads, self.server_step
        )
        if self.rule.merges_into_base:
            self.stack_ranks.append(sum(max(f.rank for f in u.factors.values()) for u in uploads))

    def merged_delta(self, rows: dict, cols: dict) -> dict[str, torch.Tensor]:
        """FLoRA: the dense merged global delta at a device's kept coordinates."""
        return restricted_deltas(self.factors, rows, cols, self.scaling)

    def stack_bytes(self, since: int, rows: dict, cols: dict) -> int:
        """FLoRA's down-link on the wire: the stacks of aggregations `since`.. at a device's
        kept coordinates, or the dense merged delta when that is smaller (what the server would
        send instead)."""
        missed = sum(self.stack_ranks[since:])
        if missed == 0:
            return 0
        per_rank = dense = 0
        for name, f in self.factors.items():
            out = f.B.shape[0] if rows.get(name) is None else len(rows[name])
            width = f.A.shape[1] if cols.get(name) is None else len(cols[name])
            per_rank += out + width
            dense += out * width
        return min(missed * per_rank, dense) * self.factors_element_size

    @property
    def factors_element_size(self) -> int:
        return next(iter(self.factors.values())).A.element_size()


def update_norm(global_lora: GlobalLora, upload: LoraUpload) -> float:
    """Frobenius norm of what the device changed this round, in its own kept coordinates.

    The device's delta minus the global delta restricted to the same coordinates: the
    "importance of the LoRA update" term of FedSpine's reward. Computed on the factors:
    with B = [B_i, -B_g] and A = [A_i; A_g], ||s B A||^2 = s^2 sum((B^T B) * (A A^T)), which
    costs O((out + in) k^2) instead of forming the out x in matrices.
    """
    if global_lora.rule.merges_into_base:  # FLoRA: a fresh LoRA, its whole delta is new
        squares = sum(delta_norm(f, global_lora.scaling) ** 2 for f in upload.factors.values())
        return math.sqrt(squares)
    total = 0.0
    for name, factors in upload.factors.items():
        g = global_lora.factors[name]
        if factors.B is None:  # FedSA-LoRA: only A was uploaded; its change, unscaled
            g_A = g.A if upload.cols.get(name) is None else g.A[:, upload.cols[name]]
            total += float(((factors.A - g_A) ** 2).sum()) / global_lora.scaling**2
            continue
        rows, cols = upload.rows.get(name), upload.cols.get(name)
        g_B = g.B if rows is None else g.B[rows]
        g_A = g.A if cols is None else g.A[:, cols]
        B = torch.cat([factors.B, -g_B], dim=1)
        A = torch.cat([factors.A, g_A], dim=0)
        total += float(((B.T @ B) * (A @ A.T)).sum().clamp_min(0.0))
    return global_lora.scaling * math.sqrt(total)
