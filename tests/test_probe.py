"""Registration probe: its measurement, its extrapolation to a round, and the bandit's groups."""

import math

import pytest

from fedspine.bandit.sucb import GROUP_AFTER, BanditPool
from fedspine.fleet.clock import RoundConditions, round_time_s
from fedspine.fleet.probe import (
    PROBE_BYTES,
    ProbeResult,
    estimated_round_speed,
    simulate_probe,
)


def test_probe_extrapolates_to_the_clock_of_a_full_round():
    """A device's estimated round speed equals the FLOPs / seconds the clock gives a real
    round of `steps` full-model steps and `round_bytes` of traffic."""
    cond = RoundConditions(flops_per_s=3e11, bandwidth_Bps=2e6, low_power=False)
    step_flops, steps, round_bytes, latency = 4e10, 12, 2_000_000, 0.05
    probe = simulate_probe(step_flops, cond, latency)
    assert probe.step_s == pytest.approx(step_flops / 3e11)
    assert probe.bandwidth_Bps == pytest.approx(2e6)
    real_time = round_time_s(step_flops * steps, round_bytes // 2, round_bytes // 2, cond, latency)
    speed = estimated_round_speed(probe, step_flops, steps, round_bytes)
    assert speed == pytest.approx(step_flops * steps / real_time)
    # the probe itself costs one step and a small transfer each way
    assert probe.duration_s() == pytest.approx(probe.step_s + 2 * PROBE_BYTES / 2e6 + 0.1)


def test_slow_compute_and_slow_links_both_lower_the_estimate():
    base = ProbeResult(step_s=0.1, bandwidth_Bps=5e6, latency_s=0.05)
    slow_chip = ProbeResult(step_s=0.4, bandwidth_Bps=5e6, latency_s=0.05)
    slow_link = ProbeResult(step_s=0.1, bandwidth_Bps=1e6, latency_s=0.05)
    speeds = [estimated_round_speed(p, 1e10, 12, 3_000_000) for p in (base, slow_chip, slow_link)]
    assert speeds[0] > speeds[1] and speeds[0] > speeds[2]
    with pytest.raises(ValueError):
        estimated_round_speed(ProbeResult(0.0, 5e6, 0.05), 1e10, 12, 1)


def test_probed_speed_places_a_device_in_a_group_before_its_first_pull():
    pool = BanditPool("shared", (0.0, 0.5), (2, 8))
    assert pool.group_of("a") is None and pool.source_of("a") == "fleet"
    pool.observe_speed("a", 1e12)
    pool.observe_speed("b", 1e12 * 1.05)  # same bucket
    pool.observe_speed("c", 1e12 / 8)  # three buckets of sqrt(2) slower
    assert pool.group_of("a") == pool.group_of("b") == 0
    assert pool.group_of("c") == round(math.log2(1 / 8) / 0.5)
    for _ in range(GROUP_AFTER):
        pool.update("a", pool.propose("a"), 1.0)  # no new speed: the probed one stands
    assert pool.group_of("a") == 0
    assert pool.source_of("b") == "group"  # b never trained, yet its group's tree proposes
    assert pool.source_of("c") == "fleet"  # c's group has no pulls yet
    per_device = BanditPool("per-device", (0.0, 0.5), (2, 8))
    per_device.observe_speed("a", 1e12)
    assert per_device.group_of("a") is None
