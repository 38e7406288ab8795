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
    fedavg_factors,
    restrict_and_truncate,
    slice_factors,
    step_toward,
)
from fedspine.lora.factors import LoraFactors

Factors = dict[str, LoraFactors]
Index = Mapping[str, Tensor | None]


class Aggregator(Protocol):
    name: ClassVar[str]

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
    """HetLoRA as simplified here: zero-pad to the global rank and width, then average."""

    name: ClassVar[str] = "zero-pad"

    def merge(self, factors, max_rank, uploads):
        return aggregate_zero_pad(uploads, full_shapes(factors), max_rank)


class MaskedSvd:
    """Full deltas averaged per coordinate over the devices that kept it, re-factorised by SVD;
    the down-link is the truncated SVD of the device's slice (FlexLoRA without pruning)."""

    name: ClassVar[str] = "masked-svd"
    keep_residual: ClassVar[bool] = False

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


AGGREGATORS: dict[str, type] = {
    rule.name: rule for rule in (FedAvg, ZeroPad, MaskedSvd, MaskedSvdResidual)
}


def make_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregation {name!r}; rules are: {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]()
