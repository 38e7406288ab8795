"""Planners of the methods that need no bandit: fixed rank, rank by tier, schedules, random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedspine.fleet.probe import ProbeResult
from fedspine.methods.base import DeviceView
from fedspine.protocol import DevicePlan, ParticipantOutcome


def participation_floor(
    sparsity: float, final: float, round_num: int, rounds: int, participation_rate: float
) -> float:
    """Least sparsity to reach this round so a device ends at `final` in expectation [our choice].

    With partial participation a device may be picked only a couple of times in a run; if it
    closes just 1/k of its gap when k participations are still expected (this one included),
    it arrives near the target by its last one instead of leaving it all to the final round.
    """
    expected = 1.0 + max(0, rounds - round_num) * participation_rate
    return sparsity + (final - sparsity) / expected


def warmup_cap(round_num: int, rounds: int, final: float, warmup_share: float) -> float:
    """Most sparsity any device may reach by this round [our choice]: rises linearly to `final`
    over the first `warmup_share` of the run (0 = no cap).

    Pruning is irreversible, and a structure removed in round 1 was chosen from a few local
    steps and an immature fleet-wide importance estimate; capping early rounds defers most
    removals until the pooled scores have settled.
    """
    warmup_rounds = warmup_share * rounds
    if warmup_rounds <= 0:
        return final
    return final * min(1.0, round_num / warmup_rounds)


def capped_floor(sparsity: float, floor: float, cap: float) -> tuple[float, float]:
    """(floor, cap) with the cap never below what the device already reached."""
    cap = max(cap, sparsity)
    return min(floor, cap), cap


def sparsity_bounds(
    sparsity: float,
    final: float,
    round_num: int,
    rounds: int,
    participation_rate: float,
    warmup_share: float,
) -> tuple[float, float]:
    """(least, most) sparsity an arm may ask of a device this round: the participation floor
    under the warm-up cap, neither below what the device already reached."""
    floor = participation_floor(sparsity, final, round_num, rounds, participation_rate)
    return capped_floor(sparsity, floor, warmup_cap(round_num, rounds, final, warmup_share))


def ramp_sparsity(round_num: int, rounds: int, final: float) -> float:
    """Fixed iterative schedule: reach the final sparsity linearly by the middle of the run."""
    ramp_rounds = max(1, rounds // 2)
    return final * min(1.0, round_num / ramp_rounds)


class NoLearning:
    """Planners that learn nothing from reports or probes."""

    def observe(self, round_num: int, outcomes: list[ParticipantOutcome]) -> list[dict]:
        return [{} for _ in outcomes]

    def observe_probe(
        self, probes: dict[int, ProbeResult], step_flops: float, round_bytes: int
    ) -> None:
        return None


@dataclass
class FixedPlanner(NoLearning):
    """One rank for every device: FedLoRA (no pruning) and prune-then-tune (`prunes`: each
    device's final target, which it reaches by one-shot pruning)."""

    rank: int
    prunes: bool = False

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        return DevicePlan(round_num, self.rank, device.target_sparsity if self.prunes else 0.0)


@dataclass
class TierRankPlanner(NoLearning):
    """HetLoRA / FlexLoRA: each device takes the rank of the hardware tier it announced."""

    rank: int  # for a tier not in the table
    tier_ranks: dict[str, int]
    sticky_self_pruned_rank: bool = False  # HetLoRA: a device's self-pruned rank sticks

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        rank = self.tier_ranks.get(device.declared_tier, self.rank)
        if self.sticky_self_pruned_rank and device.last_rank:
            rank = min(rank, device.last_rank)
        return DevicePlan(round_num, rank)


@dataclass
class ScheduledPlanner(NoLearning):
    """FedSpine-fixed: iterative prune-and-tune, one fixed schedule and rank for all devices."""

    rank: int
    rounds: int = 20

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        if final_round:
            return DevicePlan(round_num, self.rank, device.target_sparsity)
        target = ramp_sparsity(round_num, self.rounds, device.target_sparsity)
        return DevicePlan(round_num, self.rank, max(target, device.sparsity))


@dataclass
class RandomPlanner(NoLearning):
    """FedSpine-random: (sparsity, rank) drawn uniformly from the bandit's box (ablation),
    under the same participation-aware sparsity floor as the bandit."""

    rank_min: int
    rank_max: int
    seed: int
    rounds: int = 16
    participation_rate: float = 0.1
    warmup_share: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        log_rank = self.rng.uniform(np.log2(self.rank_min), np.log2(self.rank_max))
        rank = int(np.clip(round(2**log_rank), self.rank_min, self.rank_max))
        if final_round:
            return DevicePlan(round_num, rank, device.target_sparsity)
        floor, cap = sparsity_bounds(
            device.sparsity,
            device.target_sparsity,
            round_num,
            self.rounds,
            self.participation_rate,
            self.warmup_share,
        )
        target = self.rng.uniform(floor, cap)
        return DevicePlan(round_num, rank, float(target))
