"""Device profiles: exact tier counts, seeded assignment, per-device draws, validation."""

import json
import math
import statistics

import pytest
import torch

from fedspine.errors import ConfigError
from fedspine.fleet.profiles import (
    BYTES_PER_GIB,
    BYTES_PER_MB,
    DEFAULT_TIERS,
    FleetSpec,
    TierSpec,
    fleet_to_dict,
    make_fleet,
    tier_counts,
)

torch.set_num_threads(1)


def _by_tier(fleet):
    groups: dict[str, list] = {}
    for profile in fleet:
        groups.setdefault(profile.tier, []).append(profile)
    return groups


def test_default_fleet_has_exact_tier_counts():
    fleet = make_fleet(FleetSpec(seed=0))
    counts = {name: len(group) for name, group in _by_tier(fleet).items()}
    assert counts == {"tx2": 30, "xavier-nx": 40, "agx-xavier": 10}
    assert [p.device_id for p in fleet] == list(range(80))


def test_largest_remainder_counts_for_other_sizes():
    # 7 devices: quotas 2.625 / 3.5 / 0.875 -> floors 2/3/0, two leftovers go to .875 and .625.
    assert tier_counts(7, DEFAULT_TIERS) == {"tx2": 3, "xavier-nx": 3, "agx-xavier": 1}
    assert tier_counts(8, DEFAULT_TIERS) == {"tx2": 3, "xavier-nx": 4, "agx-xavier": 1}
    for num_devices in range(1, 201):
        counts = tier_counts(num_devices, DEFAULT_TIERS)
        assert sum(counts.values()) == num_devices
        for tier in DEFAULT_TIERS:
            assert abs(counts[tier.name] - tier.share * num_devices) < 1.0


def test_fleet_is_seeded_and_tiers_are_shuffled():
    first, again = make_fleet(FleetSpec(seed=3)), make_fleet(FleetSpec(seed=3))
    assert first == again
    other = make_fleet(FleetSpec(seed=4))
    assert [p.tier for p in first] != [p.tier for p in other]
    tiers_in_id_order = [p.tier for p in first]
    assert tiers_in_id_order != sorted(tiers_in_id_order, key=tiers_in_id_order.index)
    assert len({p.tier for p in first[:20]}) > 1  # not one block of a single tier


def test_each_device_within_jitter_of_its_tier():
    spec = FleetSpec(seed=1)
    fleet = make_fleet(spec)
    tier_flops = {t.name: t.peak_tflops * 1e12 * spec.efficiency for t in spec.tiers}
    ratios = [p.flops_per_s / tier_flops[p.tier] for p in fleet]
    assert all(0.8 <= ratio <= 1.2 for ratio in ratios)
    assert statistics.pstdev(ratios) > 0.05  # devices really differ
    memory = {t.name: t.memory_gb * BYTES_PER_GIB for t in spec.tiers}
    assert all(p.memory_bytes == memory[p.tier] for p in fleet)
    assert all(p.latency_s == pytest.approx(0.05) for p in fleet)


def test_tier_compute_ratio_matches_public_specs():
    fleet = make_fleet(FleetSpec(seed=2))
    means = {
        name: statistics.mean(p.flops_per_s for p in group)
        for name, group in _by_tier(fleet).items()
    }
    ratio_nx = means["xavier-nx"] / means["tx2"]
    ratio_agx = means["agx-xavier"] / means["tx2"]
    assert ratio_nx == pytest.approx(6.0 / 1.3, rel=0.15)  # ~4.6
    assert ratio_agx == pytest.approx(11.0 / 1.3, rel=0.15)  # ~8.5
    assert means["tx2"] == pytest.approx(1.3e12 * 0.25, rel=0.1)


def test_bandwidth_is_log_uniform_in_range():
    fleet = make_fleet(FleetSpec(seed=5, num_devices=2000))
    mbps = [p.bandwidth_Bps / BYTES_PER_MB for p in fleet]
    assert all(1.0 <= value <= 20.0 for value in mbps)
    below_geometric_middle = sum(value < math.sqrt(20.0) for value in mbps) / len(mbps)
    assert 0.45 < below_geometric_middle < 0.55  # log-uniform: median at sqrt(1 * 20)
    below_arithmetic_middle = sum(value < 10.5 for value in mbps) / len(mbps)
    assert below_arithmetic_middle > 0.7  # not uniform on the linear scale


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"num_devices": 0}, "num_devices"),
        ({"num_devices": 2.5}, "num_devices"),
        ({"tiers": (TierSpec("a", 1.0, 8, 0.5), TierSpec("b", 2.0, 8, 0.4))}, "sum to 1"),
        ({"tiers": (TierSpec("a", -1.0, 8, 1.0),)}, "peak_tflops"),
        ({"tiers": (TierSpec("a", 1.0, 8, 0.5), TierSpec("a", 2.0, 8, 0.5))}, "unique"),
        ({"tiers": ()}, "at least one tier"),
        ({"efficiency": 0.0}, "efficiency"),
        ({"device_jitter": 1.0}, "device_jitter"),
        ({"power_switch_prob": 1.5}, "power_switch_prob"),
        ({"low_power_factor": "fast"}, "low_power_factor"),
        ({"bandwidth_mbps_range": (20.0, 1.0)}, "bandwidth_mbps_range"),
        ({"bandwidth_mbps_range": (0.0, 1.0)}, "bandwidth_mbps_range"),
        ({"latency_s": -0.1}, "latency_s"),
        ({"memory_usable_fraction": 0.0}, "memory_usable_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_spec_raises_config_error(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        FleetSpec(**{"seed": 0, **overrides})


def test_tiers_given_as_list_are_frozen_to_tuple():
    spec = FleetSpec(seed=0, num_devices=4, tiers=[TierSpec("only", 2.0, 4, 1.0)])
    assert isinstance(spec.tiers, tuple)
    assert {p.tier for p in make_fleet(spec)} == {"only"}


def test_fleet_record_is_json_and_complete():
    spec = FleetSpec(seed=7, num_devices=8)
    fleet = make_fleet(spec)
    record = json.loads(json.dumps(fleet_to_dict(spec, fleet)))
    assert record["tier_counts"] == {"tx2": 3, "xavier-nx": 4, "agx-xavier": 1}
    assert record["spec"]["seed"] == 7
    assert record["spec"]["memory_usable_fraction"] == spec.memory_usable_fraction
    assert [d["device_id"] for d in record["devices"]] == list(range(8))
    assert record["devices"][0]["flops_per_s"] == fleet[0].flops_per_s
