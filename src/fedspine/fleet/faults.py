"""Seeded device faults and availability of the simulated fleet: who drops out or crashes in
which round, who is away, and who joins late.

Like the clock, every draw is a pure function of (seed, device id, round), so the simulated
network, a resumed run and a test all see the same faults without sharing state. Off by
default (both probabilities 0). Weak tiers may fail more often: `tier_factors` multiplies both
probabilities per tier (e.g. ``{"tx2": 2.0}``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedspine.errors import ConfigError
from fedspine.fleet.profiles import STREAM_CHURN, STREAM_FAULT

if TYPE_CHECKING:
    from fedspine.config import FleetSection


class Fault(str, enum.Enum):
    NONE = "none"
    DROPOUT = "dropout"  # unavailable for the round: the message is never answered
    CRASH = "crash"  # starts the round, dies part-way, never answers


@dataclass(frozen=True)
class FaultSpec:
    """Per device and round fault probabilities (before the tier factor)."""

    seed: int
    dropout_prob: float = 0.0
    crash_prob: float = 0.0
    tier_factors: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("dropout_prob", "crash_prob"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"fleet.{name} must be in [0, 1], got {value}")
        for tier, factor in self.tier_factors.items():
            if not (math.isfinite(factor) and factor >= 0.0):
                raise ConfigError(f"fleet.fault_tier_factors: {tier} factor must be >= 0")

    @property
    def active(self) -> bool:
        return self.dropout_prob > 0.0 or self.crash_prob > 0.0


@dataclass(frozen=True)
class FaultDraw:
    """One device's fate in one round; `crash_at` is the share of its round done before dying."""

    fault: Fault
    crash_at: float = 0.0


def fault_at(spec: FaultSpec, device_id: int, tier: str, round_num: int) -> FaultDraw:
    """Pure: the device's fault in `round_num` (the dropout is drawn first, then the crash)."""
    if round_num < 1:
        raise ValueError(f"round_num starts at 1, got {round_num}")
    if not spec.active:
        return FaultDraw(Fault.NONE)
    factor = spec.tier_factors.get(tier, 1.0)
    p_drop = min(1.0, spec.dropout_prob * factor)
    p_crash = min(1.0 - p_drop, spec.crash_prob * factor)
    entropy = [int(spec.seed), STREAM_FAULT, int(device_id), int(round_num)]
    draw, when = np.random.default_rng(np.random.SeedSequence(entropy)).random(2)
    if draw < p_drop:
        return FaultDraw(Fault.DROPOUT)
    if draw < p_drop + p_crash:
        return FaultDraw(Fault.CRASH, float(when))
    return FaultDraw(Fault.NONE)


def parse_tier_factors(text: str) -> dict[str, float]:
    """``"tx2:2.0,xavier-nx:1.5"`` -> {"tx2": 2.0, "xavier-nx": 1.5}; "" -> {}."""
    factors: dict[str, float] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, value = entry.partition(":")
        try:
            factors[name.strip()] = float(value) if sep else float("nan")
        except ValueError:
            factors[name.strip()] = float("nan")
        if not name.strip() or not math.isfinite(factors[name.strip()]):
            raise ConfigError(
                f"fleet.fault_tier_factors entry {entry!r} must look like tier:factor, e.g. tx2:2.0"
            )
    return factors


def fault_spec_from(section: FleetSection, seed: int) -> FaultSpec:
    """The config's fleet section -> the fault model (seeded like the fleet)."""
    return FaultSpec(
        seed,
        section.dropout_prob,
        section.crash_prob,
        parse_tier_factors(section.fault_tier_factors),
    )


@dataclass(frozen=True)
class AvailabilitySpec:
    """A changing population: a share away each round, and late joiners (the last ids)."""

    seed: int
    num_devices: int
    away_share: float = 0.0
    arriving_devices: int = 0
    arrival_round: int = 1

    @property
    def active(self) -> bool:
        return self.away_share > 0.0 or self.arriving_devices > 0

    def arrival_of(self, device_id: int) -> int:
        """The first round the device is part of the fleet (1 = from the start)."""
        return self.arrival_round if device_id >= self.num_devices - self.arriving_devices else 1


def is_away(spec: AvailabilitySpec, device_id: int, round_num: int) -> bool:
    """Pure: the device is not connected in `round_num` (not yet arrived, or away)."""
    if round_num < spec.arrival_of(device_id):
        return True
    if spec.away_share <= 0.0:
        return False
    entropy = [int(spec.seed), STREAM_CHURN, int(device_id), int(round_num)]
    return bool(np.random.default_rng(np.random.SeedSequence(entropy)).random() < spec.away_share)


def availability_spec_from(section: FleetSection, seed: int, rounds: int) -> AvailabilitySpec:
    """The config's fleet section -> the population model (`arrival_round` 0 = half-way)."""
    arrival = section.arrival_round or rounds // 2 + 1
    return AvailabilitySpec(
        seed, section.num_devices, section.away_share, section.arriving_devices, arrival
    )
