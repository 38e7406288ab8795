"""Per-round conditions (stateless, seeded) and the round-time arithmetic."""

import pytest
import torch

from fedspine.fleet.clock import (
    RoundConditions,
    comm_time_s,
    compute_time_s,
    conditions_at,
    is_low_power,
    round_time_s,
)
from fedspine.fleet.profiles import BYTES_PER_MB, FleetSpec, make_fleet

torch.set_num_threads(1)


def test_conditions_are_deterministic_and_order_free():
    spec = FleetSpec(seed=11)
    fleet = make_fleet(spec)
    forward = [conditions_at(fleet[5], spec, r) for r in range(1, 40)]
    backward = [conditions_at(make_fleet(spec)[5], spec, r) for r in range(39, 0, -1)]
    assert forward == backward[::-1]
    assert len({c.flops_per_s for c in forward}) == len(forward)  # noise differs per round
    other_seed = FleetSpec(seed=12)
    assert conditions_at(fleet[5], other_seed, 3) != conditions_at(fleet[5], spec, 3)


def test_power_switch_rate_matches_configured_probability():
    spec = FleetSpec(seed=0, power_switch_prob=0.05)
    rounds, devices = 200, 60
    changes = 0
    for device_id in range(devices):
        states = [False] + [is_low_power(spec, device_id, r) for r in range(1, rounds + 1)]
        changes += sum(a != b for a, b in zip(states, states[1:], strict=False))
    rate = changes / (rounds * devices)
    assert 0.04 < rate < 0.06  # 12000 transitions: sd of the rate ~0.002


def test_low_power_scales_throughput_and_noise_is_bounded():
    spec = FleetSpec(seed=3, power_switch_prob=0.2, round_noise=0.0)
    profile = make_fleet(spec)[0]
    conditions = [conditions_at(profile, spec, r) for r in range(1, 60)]
    assert any(c.low_power for c in conditions) and not all(c.low_power for c in conditions)
    for cond in conditions:
        factor = 0.6 if cond.low_power else 1.0
        assert cond.flops_per_s == pytest.approx(profile.flops_per_s * factor)
    noisy = FleetSpec(seed=3, power_switch_prob=0.0)
    ratios = [
        conditions_at(profile, noisy, r).flops_per_s / profile.flops_per_s for r in range(1, 200)
    ]
    assert all(0.9 <= ratio <= 1.1 for ratio in ratios)
    assert max(ratios) - min(ratios) > 0.1  # the +-10% noise is really applied


def test_switch_probability_extremes():
    never = FleetSpec(seed=1, power_switch_prob=0.0)
    always = FleetSpec(seed=1, power_switch_prob=1.0)
    assert not any(is_low_power(never, 4, r) for r in range(1, 50))
    assert [is_low_power(always, 4, r) for r in range(1, 7)] == [True, False] * 3


def test_bandwidth_drifts_within_range():
    spec = FleetSpec(seed=9)
    fleet = make_fleet(spec)
    for profile in fleet[:20]:
        values = [conditions_at(profile, spec, r).bandwidth_Bps for r in range(1, 30)]
        assert all(0.7 * profile.bandwidth_Bps <= v <= 1.3 * profile.bandwidth_Bps for v in values)
        assert all(0.7 * BYTES_PER_MB <= v <= 26.0 * BYTES_PER_MB for v in values)
        assert max(values) / min(values) > 1.2  # it really varies round to round


def test_round_zero_is_rejected():
    spec = FleetSpec(seed=0)
    with pytest.raises(ValueError, match="round_num"):
        conditions_at(make_fleet(spec)[0], spec, 0)


def test_round_time_is_sum_of_parts_and_monotone():
    cond = RoundConditions(flops_per_s=2e12, bandwidth_Bps=4e6, low_power=False)
    total = round_time_s(4e12, 2_000_000, 6_000_000, cond, latency_s=0.05)
    assert total == pytest.approx(2.0 + 2.0 + 0.1)  # two messages' latency
    assert total == pytest.approx(
        compute_time_s(4e12, cond) + comm_time_s(2_000_000, 6_000_000, cond, 0.05)
    )
    assert round_time_s(8e12, 2_000_000, 6_000_000, cond, 0.05) > total
    assert round_time_s(4e12, 3_000_000, 6_000_000, cond, 0.05) > total
    assert round_time_s(4e12, 2_000_000, 7_000_000, cond, 0.05) > total
    assert round_time_s(4e12, 2_000_000, 6_000_000, cond, 0.06) > total
    with pytest.raises(ValueError):
        round_time_s(-1.0, 0, 0, cond, 0.05)
