"""Simulated clock: a device's per-round conditions and the seconds a round takes on it.

Everything is a pure function of (spec.seed, device_id, round), so the server, a simulated
client in another process, and a replay of the run all compute the same numbers without
sharing state. Rounds are numbered from 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedspine.fleet.profiles import STREAM_POWER, STREAM_ROUND, DeviceProfile, FleetSpec

MESSAGES_PER_ROUND = 2  # the plan down and the reply up, each paying the device's latency once


@dataclass(frozen=True)
class RoundConditions:
    """What a device can do in one round: effective throughput, bandwidth, power mode."""

    flops_per_s: float
    bandwidth_Bps: float
    low_power: bool


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(value) for value in entropy]))


def is_low_power(spec: FleetSpec, device_id: int, round_num: int) -> bool:
    """Power mode in `round_num`: a two-state Markov chain replayed from round 1.

    The device starts in normal mode; at each round 1..round_num it toggles with probability
    `power_switch_prob` and stays there until it toggles back. The switch draws are the prefix
    of one per-device stream, so the chain is consistent across rounds and processes.
    """
    if round_num < 1:
        raise ValueError(f"round_num starts at 1, got {round_num}")
    draws = _rng(spec.seed, STREAM_POWER, device_id).random(round_num)
    switches = int(np.count_nonzero(draws < spec.power_switch_prob))
    return switches % 2 == 1


def conditions_at(profile: DeviceProfile, spec: FleetSpec, round_num: int) -> RoundConditions:
    """The device's throughput and bandwidth in `round_num`.

    Throughput = profile value x low_power_factor (in low-power mode) x U(1 +- round_noise).
    Bandwidth = profile value x U(1 +- bandwidth_drift), drawn afresh each round around the
    device's own base (stationary, so it never wanders out of the Wi-Fi range).
    """
    low_power = is_low_power(spec, profile.device_id, round_num)
    rng = _rng(spec.seed, STREAM_ROUND, profile.device_id, round_num)
    noise = rng.uniform(1.0 - spec.round_noise, 1.0 + spec.round_noise)
    drift = rng.uniform(1.0 - spec.bandwidth_drift, 1.0 + spec.bandwidth_drift)
    mode_factor = spec.low_power_factor if low_power else 1.0
    return RoundConditions(
        flops_per_s=float(profile.flops_per_s * mode_factor * noise),
        bandwidth_Bps=float(profile.bandwidth_Bps * drift),
        low_power=low_power,
    )


def compute_time_s(train_flops: float, cond: RoundConditions) -> float:
    """Seconds of on-device compute for the FLOPs the device actually executed."""
    return float(train_flops) / cond.flops_per_s


def comm_time_s(bytes_up: int, bytes_down: int, cond: RoundConditions, latency_s: float) -> float:
    """Seconds on the network: payload over bandwidth plus a fixed latency per message."""
    return (bytes_up + bytes_down) / cond.bandwidth_Bps + MESSAGES_PER_ROUND * latency_s


def round_time_s(
    train_flops: float,
    bytes_up: int,
    bytes_down: int,
    cond: RoundConditions,
    latency_s: float,
) -> float:
    """A device's round time: compute + (up + down) / bandwidth + 2 messages x latency."""
    if train_flops < 0 or bytes_up < 0 or bytes_down < 0:
        raise ValueError("round_time_s: FLOPs and bytes must be >= 0")
    compute = compute_time_s(train_flops, cond)
    return compute + comm_time_s(bytes_up, bytes_down, cond, latency_s)
