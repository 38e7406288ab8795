"""The simulated device fleet: tiers grounded in Jetson specs, one seeded profile per device.

A profile holds a device's *static* capability (its own draw around its tier). What changes
from round to round (power mode, noise, bandwidth drift) lives in `clock.py`, computed
statelessly from the same seed so every process sees the same fleet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedspine.errors import ConfigError

BYTES_PER_GIB = 2**30  # Jetson "8 GB" boards carry 8 GiB of LPDDR4/4x
BYTES_PER_MB = 10**6  # network rates are quoted in decimal MB/s
FLOPS_PER_TFLOP = 1e12
SHARE_TOLERANCE = 1e-6
# Jetson memory is shared by CPU and GPU; the OS, the CUDA context, the data pipeline and
# allocator fragmentation take a large part, so a training job can count on about half.
DEFAULT_MEMORY_USABLE_FRACTION = 0.5

# Seed-stream tags: each random quantity has its own stream so adding one never shifts another.
STREAM_ASSIGN = 0
STREAM_DEVICE = 1
STREAM_POWER = 2
STREAM_ROUND = 3
STREAM_FAULT = 4
STREAM_CHURN = 5


@dataclass(frozen=True)
class TierSpec:
    """One hardware tier: public peak FP16 throughput, board memory, and fleet share."""

    name: str
    peak_tflops: float
    memory_gb: float
    share: float


# Public specs: TX2 ~1.3 TFLOP/s FP16 (8 GB), Xavier NX ~6 (8 GB), AGX Xavier ~11 (32 GB);
# shares are the paper's 30/40/10 testbed.
DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec("tx2", 1.3, 8, 30 / 80),
    TierSpec("xavier-nx", 6.0, 8, 40 / 80),
    TierSpec("agx-xavier", 11.0, 32, 10 / 80),
)


@dataclass(frozen=True, kw_only=True)
class FleetSpec:
    """Inputs of the simulation (method.md, "The device fleet"); recorded with every run.

    `memory_usable_fraction` = 0.5 (DEFAULT_MEMORY_USABLE_FRACTION): Jetson memory is shared by
    CPU and GPU; the OS, the CUDA context, the data pipeline and allocator fragmentation take
    a large part of it, so half of the board's memory is the budget training can count on.
    `bandwidth_mbps_range` is in MB/s (megabytes, decimal), drawn log-uniformly per device.
    """

    seed: int
    num_devices: int = 80
    tiers: tuple[TierSpec, ...] = field(default=DEFAULT_TIERS)
    efficiency: float = 0.25
    device_jitter: float = 0.2
    bandwidth_mbps_range: tuple[float, float] = (1.0, 20.0)
    bandwidth_drift: float = 0.3
    latency_s: float = 0.05
    power_switch_prob: float = 0.05
    low_power_factor: float = 0.6
    round_noise: float = 0.1
    memory_usable_fraction: float = DEFAULT_MEMORY_USABLE_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(self.tiers))
        object.__setattr__(self, "bandwidth_mbps_range", tuple(self.bandwidth_mbps_range))
        _validate_spec(self)


@dataclass(frozen=True)
class DeviceProfile:
    """One device's static capability; the server never reads this (only the clock does)."""

    device_id: int
    tier: str
    flops_per_s: float
    memory_bytes: int
    bandwidth_Bps: float
    latency_s: float


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"fleet: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    is_real = isinstance(value, (int, float, np.integer, np.floating))
    return is_real and not isinstance(value, bool) and math.isfinite(value)


# (field, low-end included, high-end included) for the fractions that live in [0, 1].
_UNIT_FIELDS: tuple[tuple[str, bool, bool], ...] = (
    ("efficiency", False, True),
    ("device_jitter", True, False),
    ("bandwidth_drift", True, False),
    ("round_noise", True, False),
    ("power_switch_prob", True, True),
    ("low_power_factor", False, True),
    ("memory_usable_fraction", False, True),
)


def _check_unit_field(spec: FleetSpec, name: str, closed_low: bool, closed_high: bool) -> None:
    value = getattr(spec, name)
    interval = f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}"
    message = f"{name} must be a number in {interval}, got {value!r}"
    _check(_is_number(value), message)
    low_ok = value >= 0 if closed_low else value > 0
    high_ok = value <= 1 if closed_high else value < 1
    _check(low_ok and high_ok, message)


def _validate_tiers(tiers: tuple[TierSpec, ...]) -> None:
    _check(len(tiers) >= 1, "tiers must list at least one tier")
    _check(all(isinstance(tier, TierSpec) for tier in tiers), "tiers must be TierSpec entries")
    names = [tier.name for tier in tiers]
    _check(len(set(names)) == len(names), f"tier names must be unique, got {names}")
    for tier in tiers:
        for attr, minimum in (("peak_tflops", 0.0), ("memory_gb", 0.0), ("share", None)):
            value = getattr(tier, attr)
            ok = _is_number(value) and (value >= 0 if minimum is None else value > minimum)
            bound = ">= 0" if minimum is None else "> 0"
            _check(ok, f"tier {tier.name!r}: {attr} must be a number {bound}, got {value!r}")
    total = sum(tier.share for tier in tiers)
    _check(abs(total - 1.0) <= SHARE_TOLERANCE, f"tier shares must sum to 1, got {total:.6g}")


def _validate_spec(spec: FleetSpec) -> None:
    _check(
        _is_int(spec.seed) and spec.seed >= 0, f"seed must be an integer >= 0, got {spec.seed!r}"
    )
    _check(
        _is_int(spec.num_devices) and spec.num_devices >= 1,
        f"num_devices must be an integer >= 1, got {spec.num_devices!r}",
    )
    _validate_tiers(spec.tiers)
    for name, closed_low, closed_high in _UNIT_FIELDS:
        _check_unit_field(spec, name, closed_low, closed_high)
    _check(
        _is_number(spec.latency_s) and spec.latency_s >= 0,
        f"latency_s must be >= 0, got {spec.latency_s!r}",
    )
    bandwidth = spec.bandwidth_mbps_range
    _check(
        len(bandwidth) == 2
        and all(_is_number(value) for value in bandwidth)
        and 0 < bandwidth[0] <= bandwidth[1],
        f"bandwidth_mbps_range must be (low, high) with 0 < low <= high, got {bandwidth!r}",
    )


def tier_counts(num_devices: int, tiers: tuple[TierSpec, ...]) -> dict[str, int]:
    """Exact device count per tier by largest-remainder rounding (ties go to the earlier tier)."""
    total_share = sum(tier.share for tier in tiers)
    quotas = [tier.share / total_share * num_devices for tier in tiers]
    counts = [math.floor(quota + 1e-9) for quota in quotas]
    leftover = num_devices - sum(counts)
    by_remainder = sorted(range(len(tiers)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for index in by_remainder[:leftover]:
        counts[index] += 1
    return {tier.name: count for tier, count in zip(tiers, counts, strict=True)}


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(value) for value in entropy]))


def _device_profile(spec: FleetSpec, device_id: int, tier: TierSpec) -> DeviceProfile:
    rng = _rng(spec.seed, STREAM_DEVICE, device_id)
    tier_flops = tier.peak_tflops * FLOPS_PER_TFLOP * spec.efficiency
    jitter = rng.uniform(1.0 - spec.device_jitter, 1.0 + spec.device_jitter)
    low_mbps, high_mbps = spec.bandwidth_mbps_range
    mbps = math.exp(rng.uniform(math.log(low_mbps), math.log(high_mbps)))
    return DeviceProfile(
        device_id=device_id,
        tier=tier.name,
        flops_per_s=float(tier_flops * jitter),
        memory_bytes=int(round(tier.memory_gb * BYTES_PER_GIB)),
        bandwidth_Bps=float(mbps * BYTES_PER_MB),
        latency_s=float(spec.latency_s),
    )


def make_fleet(spec: FleetSpec) -> list[DeviceProfile]:
    """Profiles for devices 0..n-1; which id gets which tier is a seeded shuffle."""
    counts = tier_counts(spec.num_devices, spec.tiers)
    by_name = {tier.name: tier for tier in spec.tiers}
    slots = [name for name, count in counts.items() for _ in range(count)]
    order = _rng(spec.seed, STREAM_ASSIGN).permutation(len(slots))
    tier_of_device = [slots[index] for index in order]
    return [
        _device_profile(spec, device_id, by_name[name])
        for device_id, name in enumerate(tier_of_device)
    ]


def fleet_to_dict(spec: FleetSpec, fleet: list[DeviceProfile]) -> dict[str, Any]:
    """JSON-ready record of the fleet a run used: the spec, tier counts and every profile."""
    spec_dict = asdict(spec)
    spec_dict["tiers"] = [asdict(tier) for tier in spec.tiers]
    spec_dict["bandwidth_mbps_range"] = list(spec.bandwidth_mbps_range)
    counts: dict[str, int] = {tier.name: 0 for tier in spec.tiers}
    for profile in fleet:
        counts[profile.tier] = counts.get(profile.tier, 0) + 1
    return {
        "spec": spec_dict,
        "tier_counts": counts,
        "devices": [asdict(profile) for profile in fleet],
    }


def parse_tiers(text: str) -> list[tuple[str, float, float, int]]:
    """Parse `name:TFLOPs:GB:count,...` into tuples, with a clear error on a malformed entry."""
    tiers = []
    for entry in text.split(","):
        parts = entry.strip().split(":")
        try:
            name, tflops, mem_gb, count = parts[0], float(parts[1]), float(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            raise ConfigError(
                f"fleet.tiers entry {entry!r} must be name:TFLOPs:GB:count, e.g. tx2:1.3:8:30"
            ) from None
        if not (tflops > 0 and mem_gb > 0 and count >= 0):
            raise ConfigError(f"fleet.tiers entry {entry!r} out of range")
        tiers.append((name, tflops, mem_gb, count))
    if sum(t[3] for t in tiers) <= 0:
        raise ConfigError("fleet.tiers needs at least one device")
    return tiers
