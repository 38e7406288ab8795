"""The aggregation rules a method can name: one interface, one small class per rule.

An aggregator owns both halves of what a rule means for the global LoRA: the down-link (the
global restricted to a device's kept coordinates at its rank) and the aggregation (a round's
uploads -> new global factors). Global factors are stored in peft's representation
(delta = s * B @ A, one s for every rank); the math lives in `fedspine.lora.aggregation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar, Protocol

from torch import Tensor

from fedspine.errors import ConfigError
from fedspine.lora.aggregation import (
    LoraUpload,
    aggregate_masked_svd,
    aggregate_zero_pad,
    average_shared_a,
    factorise,
    fedavg_factors,
    restrict_and_truncate,
    slice_factors,
    stack_factors,
    step_toward,
)
from fedspine.lora.factors import LoraFactors

Factors = dict[str, LoraFactors]
Index = Mapping[str, Tensor | None]


class Aggregator(Protocol):
    name: ClassVar[str]
    # FLoRA: the global is a delta merged into every device's base, and a device trains a
    # fresh LoRA on top each round (the server core sends the merged delta, no factors)
    merges_into_base: ClassVar[bool]
    # FedSA-LoRA: only A is shared; B stays on each device and never travels
    shares_only_a: ClassVar[bool]

    def downlink(self, factors: Factors, scaling: float, rows: Index, cols: Index, rank: int):
        """The global LoRA restricted to a device's kept rows / cols, at the device's rank."""
        ...

    def aggregate(
        self,
        factors: Factors,
        scaling: float,
        max_rank: int,
        uploads: list[LoraUpload],
        server_step: float,
    ) -> Factors:
        """New global factors (full width, `max_rank`) from a round's uploads (>= 1)."""
        ...


def full_shapes(factors: Factors) -> dict[str, tuple[int, int]]:
    return {n: (f.B.shape[0], f.A.shape[1]) for n, f in factors.items()}


def _scaled(factors: Factors, by: float) -> Factors:
    """Both factors times sqrt(by): moves between delta = B@A and delta = s*B@A."""
    root = math.sqrt(by)
    return {n: LoraFactors(A=f.A * root, B=f.B * root) for n, f in factors.items()}


class _FactorAverage:
    """Rules that average A and B separately; the down-link takes the first r components."""

    merges_into_base: ClassVar[bool] = False
    shares_only_a: ClassVar[bool] = False

    def downlink(self, factors: Factors, scaling: float, rows: Index, cols: Index, rank: int):
        return slice_factors(factors, rows, cols, rank)

    def merge(self, factors: Factors, max_rank: int, uploads: list[LoraUpload]) -> Factors:
        raise NotImplementedError  # each subclass is one rule

    def aggregate(self, factors, scaling, max_rank, uploads, server_step) -> Factors:
        merged = self.merge(factors, max_rank, uploads)
        return {
            name: LoraFactors(
                A=step_toward(factors[name].A, f.A, server_step),
                B=step_toward(factors[name].B, f.B, server_step),
            )
            for name, f in merged.items()
        }


class FedAvg(_FactorAverage):
    """FedIT: equal ranks, unpruned devices; A and B averaged by example count."""

    name: ClassVar[str] = "fedavg"

    def merge(self, factors, max_rank, uploads):
        return fedavg_factors(uploads)


class ZeroPad(_FactorAverage):
    """HetLoRA simplified (``hetlora-examples``): zero-pad to the global rank and width, then
    average A and B with example-count weights."""

    name: ClassVar[str] = "zero-pad"

    def merge(self, factors, max_rank, uploads):
        return aggregate_zero_pad(uploads, full_shapes(factors), max_rank)


class ZeroPadSparsityWeighted(_FactorAverage):
    """HetLoRA as its paper defines it: zero-pad, then average A and B with each device's
    weight the Frobenius norm of its delta B_k A_k (per module), normalised over the round;
    the down-link truncates back to each device's rank (the first r_k components)."""

    name: ClassVar[str] = "sparsity-weighted"

    def merge(self, factors, max_rank, uploads):
        return aggregate_zero_pad(uploads, full_shapes(factors), max_rank, weighting="norm")


class MaskedSvd:
    """Full deltas averaged per coordinate over the devices that kept it, re-factorised by SVD;
    the down-link is the truncated SVD of the device's slice (FlexLoRA without pruning)."""

    name: ClassVar[str] = "masked-svd"
    keep_residual: ClassVar[bool] = False
    merges_into_base: ClassVar[bool] = False
    shares_only_a: ClassVar[bool] = False

    def downlink(self, factors: Factors, scaling: float, rows: Index, cols: Index, rank: int):
        return restrict_and_truncate(_scaled(factors, scaling), rows, cols, rank, scaling)

    def aggregate(self, factors, scaling, max_rank, uploads, server_step) -> Factors:
        merged = aggregate_masked_svd(
            uploads,
            full_shapes(factors),
            max_rank,
            scaling,
            previous=_scaled(factors, scaling),
            keep_residual=self.keep_residual,
            server_step=server_step,
        )
        return _scaled(merged, 1.0 / scaling)


class MaskedSvdResidual(MaskedSvd):
    """FedSpine's rule: masked SVD where a device's delta counts as the previous global plus
    its progress, so what a low-rank down-link left out is not lost (reads `received`)."""

    name: ClassVar[str] = "masked-svd-residual"
    keep_residual: ClassVar[bool] = True


class Stacking(MaskedSvd):
    """FLoRA: the round's uploads stacked (exact sum of the example-weighted deltas) and merged
    into the global delta, which is held exactly (`max_rank` = the modules' full rank).

    The down-link restricted at a rank (`downlink`) is the merged model as LoRA factors, used
    to evaluate and export it; a training device instead gets the dense merged delta to add to
    its base and starts a fresh LoRA (`fedspine.server.core`).
    """

    name: ClassVar[str] = "stacking"
    merges_into_base: ClassVar[bool] = True

    def aggregate(self, factors, scaling, max_rank, uploads, server_step) -> Factors:
        shapes = full_shapes(factors)
        stacked = stack_factors(uploads, shapes, scaling)
        merged = {}
        for name, old in _scaled(factors, scaling).items():
            previous = old.delta()
            update = stacked[name].delta().to(previous.dtype)
            merged[name] = factorise(previous + server_step * update, max_rank)
        return _scaled(merged, 1.0 / scaling)


class SharedA:
    """FedSA-LoRA: A averaged by example count, B never leaves a device (down-links and
    uploads carry A alone; the global B stays at its zero init and is never sent)."""

    name: ClassVar[str] = "shared-a"
    merges_into_base: ClassVar[bool] = False
    shares_only_a: ClassVar[bool] = True

    def downlink(self, factors: Factors, scaling: float, rows: Index, cols: Index, rank: int):
        return {
            name: LoraFactors(A=sliced.A, B=None)
            for name, sliced in slice_factors(factors, rows, cols, rank).items()
        }

    def aggregate(self, factors, scaling, max_rank, uploads, server_step) -> Factors:
        merged = average_shared_a(uploads, factors)
        return {
            name: LoraFactors(A=step_toward(factors[name].A, f.A, server_step), B=factors[name].B)
            for name, f in merged.items()
        }


AGGREGATORS: dict[str, type] = {
    rule.name: rule
    for rule in (
        FedAvg,
        ZeroPad,
        ZeroPadSparsityWeighted,
        MaskedSvd,
        MaskedSvdResidual,
        Stacking,
        SharedA,
    )
}


def make_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregation {name!r}; rules are: {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]()
