"""The straggler term of an arm, predicted before the round: speeds per device, work per arm.

[our choice, beyond the paper] The reward's time term (reward.py) is the one part of an arm's
value the server can predict: a device's round time is its compute (FLOPs over its speed)
plus its transfer (bytes over its bandwidth), and how FLOPs and bytes depend on the arm's
sparsity and rank is the same for every device. Left to the tree, this structure must be
learned from pulls, and with about 100 pulls per run (80 devices, 8 per round, 12 rounds) it
never is: a replay of the default fleet (bench/bandit_tiers.py, 10 seeds) gave the weak tier
the same ranks and sparsities as the strong one in every setting of the tree we tried. So the
planner predicts the time term of a candidate arm for the device at hand and the tree learns
only the rest (loss gain, pruning progress, update size), which is the same for every device
and so pools across the fleet.

What the server uses is what a real server sees: each device's registration probe (step time,
link throughput, latency) and, after each of its rounds, its reported compute seconds, FLOPs,
bytes and completion time. The work model is fitted on every report of the fleet:

* FLOPs = c0 + c1 * (mean sparsity over the round - 0.25) (the device prunes mid-round),
* bytes (up + down) = d0 + d1 * rank + d2 * rank * (sparsity - 0.25) (LoRA factors shrink
  with the pruned widths),

by ridge regression toward a prior taken from the probe's full-model workload, so the
prediction is sensible from the first round and follows the data after a few reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRIOR_WEIGHT = 2.0  # the prior counts as this many reports
PRUNABLE_FLOP_SHARE = 0.8  # prior: share of a step's FLOPs that pruning can remove
PRUNABLE_BYTE_SHARE = 0.5  # prior: share of the LoRA payload on prunable widths


@dataclass(frozen=True)
class DeviceSpeed:
    """The server's estimate of one device: compute throughput, link throughput, latency."""

    flops_per_s: float
    bandwidth_Bps: float
    latency_s: float

    def __post_init__(self) -> None:
        if not (self.flops_per_s > 0 and self.bandwidth_Bps > 0 and self.latency_s >= 0):
            raise ValueError(f"speeds must be positive and latency >= 0, got {self}")


def blend_speed(
    previous: DeviceSpeed | None, measured: DeviceSpeed, new_weight: float
) -> DeviceSpeed:
    """Geometric moving average of the two throughputs (noise is multiplicative)."""
    if previous is None:
        return measured

    def mix(old: float, new: float) -> float:
        return math.exp((1 - new_weight) * math.log(old) + new_weight * math.log(new))

    return DeviceSpeed(
        mix(previous.flops_per_s, measured.flops_per_s),
        mix(previous.bandwidth_Bps, measured.bandwidth_Bps),
        measured.latency_s,
    )


def speed_from_report(
    train_flops: float, compute_s: float, time_s: float, bytes_moved: float, latency_s: float
) -> DeviceSpeed | None:
    """A device's speeds as one finished round shows them; None if the report cannot tell."""
    transfer_s = time_s - compute_s - 2 * latency_s
    if not (train_flops > 0 and compute_s > 0 and bytes_moved > 0 and transfer_s > 0):
        return None
    return DeviceSpeed(train_flops / compute_s, bytes_moved / transfer_s, latency_s)


class RidgeFit:
    """Least squares y ~ features . coef, pulled toward `prior` as if `prior_weight` reports
    with `typical` features had agreed with it (so the prior holds a coefficient the data
    cannot yet identify, e.g. the sparsity slope while every device is still unpruned)."""

    def __init__(
        self, prior: list[float], typical: list[float], prior_weight: float = PRIOR_WEIGHT
    ) -> None:
        if len(prior) != len(typical):
            raise ValueError("prior and typical features must have the same length")
        self.prior = np.asarray(prior, dtype=float)
        self._penalty = prior_weight * np.diag(np.asarray(typical, dtype=float) ** 2)
        self._xtx = np.zeros((len(prior), len(prior)))
        self._xty = np.zeros(len(prior))
        self._coef: np.ndarray | None = None  # solved once per change, not per prediction

    def add(self, features: list[float], y: float) -> None:
        x = np.asarray(features, dtype=float)
        self._xtx += np.outer(x, x)
        self._xty += x * y
        self._coef = None

    def coef(self) -> np.ndarray:
        """(X'X + P) coef = X'y + P prior."""
        if self._coef is None:
            self._coef = np.linalg.solve(
                self._xtx + self._penalty, self._xty + self._penalty @ self.prior
            )
        return self._coef


TYPICAL_SPARSITY = 0.25  # features are centred here, so intercept and slope fit apart
SPARSITY_SPREAD = 0.15  # typical distance of a round's sparsity from that centre


def flop_features(sparsity_before: float, sparsity_after: float) -> list[float]:
    return [1.0, (sparsity_before + sparsity_after) / 2 - TYPICAL_SPARSITY]


def byte_features(rank: float, sparsity_after: float) -> list[float]:
    return [1.0, float(rank), rank * (sparsity_after - TYPICAL_SPARSITY)]


class WorkModel:
    """FLOPs and bytes of a round as functions of the arm, fitted on the fleet's reports."""

    def __init__(self, round_flops: float, round_bytes: float, max_rank: int) -> None:
        per_rank = round_bytes / max_rank
        mid_rank = math.sqrt(max_rank)  # a typical rank on the log scale the bandit samples
        flop_slope = -PRUNABLE_FLOP_SHARE * round_flops
        byte_slope = -PRUNABLE_BYTE_SHARE * per_rank
        self.flops = RidgeFit(
            [round_flops + flop_slope * TYPICAL_SPARSITY, flop_slope], [1.0, SPARSITY_SPREAD]
        )
        self.bytes = RidgeFit(
            [0.0, per_rank + byte_slope * TYPICAL_SPARSITY, byte_slope],
            [1.0, mid_rank, mid_rank * SPARSITY_SPREAD],
        )

    def add(self, before: float, after: float, rank: int, flops: float, bytes_moved: float) -> None:
        self.flops.add(flop_features(before, after), flops)
        self.bytes.add(byte_features(rank, after), bytes_moved)

    def predict(self, before: float, after: float, rank: int) -> tuple[float, float]:
        """(FLOPs, bytes) of a round from `before` to `after` sparsity at `rank`, both > 0."""
        flops = float(np.dot(self.flops.coef(), flop_features(before, after)))
        moved = float(np.dot(self.bytes.coef(), byte_features(rank, after)))
        return max(flops, 1.0), max(moved, 1.0)


def predicted_time_s(
    speed: DeviceSpeed, work: WorkModel, before: float, after: float, rank: int
) -> float:
    """Compute + transfer + one latency each way, as the clock charges a round."""
    flops, moved = work.predict(before, after, rank)
    return flops / speed.flops_per_s + moved / speed.bandwidth_Bps + 2 * speed.latency_s
