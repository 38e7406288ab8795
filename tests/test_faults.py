"""Seeded faults of the simulated fleet and the unreliable channel that applies them."""

from __future__ import annotations

import pytest

from fedspine.config import load_config
from fedspine.errors import ConfigError
from fedspine.fleet.faults import (
    AvailabilitySpec,
    Fault,
    FaultSpec,
    fault_at,
    fault_spec_from,
    is_away,
    parse_tier_factors,
)
from fedspine.fleet.unreliable import UnreliableChannel
from fedspine.protocol import (
    DevicePlan,
    DeviceReport,
    Downlink,
    NoReply,
    ProbeRequest,
    Registration,
    ReplyStatus,
    Uplink,
)


def test_faults_are_off_by_default_and_pure():
    spec = fault_spec_from(load_config("smoke").fleet, 0)
    assert not spec.active
    assert {fault_at(spec, d, "tx2", r).fault for d in range(20) for r in range(1, 20)} == {
        Fault.NONE
    }
    spec = FaultSpec(3, dropout_prob=0.3, crash_prob=0.2)
    assert [fault_at(spec, 5, "tx2", r) for r in range(1, 30)] == [
        fault_at(spec, 5, "tx2", r) for r in range(1, 30)
    ]


def test_fault_rates_follow_the_probabilities_and_tier_factors():
    spec = FaultSpec(1, dropout_prob=0.1, crash_prob=0.05, tier_factors={"tx2": 3.0})
    draws = {
        tier: [fault_at(spec, d, tier, r) for d in range(200) for r in range(1, 26)]
        for tier in ("tx2", "agx-xavier")
    }
    for tier, factor in (("tx2", 3.0), ("agx-xavier", 1.0)):
        n = len(draws[tier])
        dropped = sum(f.fault is Fault.DROPOUT for f in draws[tier]) / n
        crashed = sum(f.fault is Fault.CRASH for f in draws[tier]) / n
        assert dropped == pytest.approx(0.1 * factor, abs=0.02)
        assert crashed == pytest.approx(0.05 * factor, abs=0.015)
    crash_points = [f.crash_at for f in draws["tx2"] if f.fault is Fault.CRASH]
    assert all(0.0 <= c < 1.0 for c in crash_points)


@pytest.mark.parametrize("text", ["tx2", "tx2:fast", ":2", "tx2:-1"])
def test_bad_tier_factors_are_config_errors(text):
    with pytest.raises(ConfigError):
        FaultSpec(0, 0.1, 0.0, parse_tier_factors(text))


@pytest.mark.parametrize(
    "setting",
    [
        "fleet.dropout_prob=1.5",
        "fleet.crash_prob=-0.1",
        "fleet.fault_tier_factors=tx2",
        "run.round_deadline_s=-3",
        "run.min_replies=0",
        "run.min_replies=99",
    ],
)
def test_bad_fault_settings_name_the_key(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config("smoke", overrides=[setting])


class _Channel:
    """A perfect network: every addressed device answers with a 10 s round."""

    def __init__(self) -> None:
        self.sent: list[set[int]] = []

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        return {100 + d: Registration(d, "tx2" if d < 5 else "agx-xavier") for d in range(10)}

    def present(self, round_num: int):
        return None

    def train(self, downlinks):
        self.sent.append(set(downlinks))
        return {n: Uplink(DeviceReport(ok=True, time_s=10.0)) for n in downlinks}


def test_unreliable_channel_never_sends_to_dropped_devices_and_hides_crashed_replies():
    inner = _Channel()
    spec = FaultSpec(2, dropout_prob=0.3, crash_prob=0.3)
    channel = UnreliableChannel(inner, spec)
    registrations = channel.register(ProbeRequest())
    round_num = 4
    downlinks = {n: Downlink(DevicePlan(round_num, 4), None, {}, {}) for n in registrations}
    replies = channel.train(downlinks)
    assert set(replies) == set(downlinks)
    for node, reply in replies.items():
        reg = registrations[node]
        fate = fault_at(spec, reg.device_id, reg.tier, round_num)
        if fate.fault is Fault.DROPOUT:
            assert node not in inner.sent[0]
            assert isinstance(reply, NoReply) and reply.status is ReplyStatus.DROPPED
        elif fate.fault is Fault.CRASH:
            assert node in inner.sent[0]  # it worked part of the round, then died
            assert isinstance(reply, NoReply) and reply.status is ReplyStatus.CRASHED
            assert reply.waited_s == pytest.approx(10.0 * fate.crash_at)
        else:
            assert isinstance(reply, Uplink)
    statuses = {type(r).__name__ for r in replies.values()}
    assert statuses == {"NoReply", "Uplink"}  # this seed draws both kinds among 10 devices


def test_late_joiners_register_at_their_round_and_away_devices_are_not_present():
    availability = AvailabilitySpec(
        5, num_devices=10, away_share=0.3, arriving_devices=3, arrival_round=4
    )
    channel = UnreliableChannel(_Channel(), FaultSpec(5), availability)
    first = channel.register(ProbeRequest(None, 1))
    assert sorted(r.device_id for r in first.values()) == list(range(7))
    assert channel.register(ProbeRequest(None, 3)) == {}
    joined = channel.register(ProbeRequest(None, 4))
    assert sorted(r.device_id for r in joined.values()) == [7, 8, 9]
    assert channel.register(ProbeRequest(None, 5)) == {}
    shares = []
    for round_num in range(1, 41):
        present = channel.present(round_num)
        ids = {channel.identity[n][0] for n in present}
        assert ids == {d for d in range(10) if not is_away(availability, d, round_num)}
        if round_num >= 4:
            shares.append(1 - len(ids) / 10)
        else:
            assert not ids & {7, 8, 9}
    assert sum(shares) / len(shares) == pytest.approx(0.3, abs=0.08)
