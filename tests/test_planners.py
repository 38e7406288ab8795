"""Planners: sparsity floors and schedules are monotone and end at the target."""

import pytest

from fedspine.methods.planners import participation_floor, ramp_sparsity


def test_participation_floor_closes_the_gap_by_the_last_expected_participation():
    # last round: no participation left after this one -> the floor is the final target
    assert participation_floor(0.1, 0.5, round_num=16, rounds=16, participation_rate=0.1) == 0.5
    # early, with ~2.5 participations still expected, close 1/2.5 of the gap
    assert participation_floor(0.0, 0.5, 1, 16, 0.1) == pytest.approx(0.5 / 2.5)
    # never below the current sparsity, never above the target
    for round_num in range(1, 17):
        floor = participation_floor(0.3, 0.5, round_num, 16, 0.1)
        assert 0.3 <= floor <= 0.5


def test_ramp_reaches_target_by_mid_run_and_is_monotone():
    values = [ramp_sparsity(t, 16, 0.5) for t in range(1, 17)]
    assert values == sorted(values) and values[7] == 0.5 and values[0] > 0


def test_warmup_cap_rises_to_the_target_and_bounds_every_random_arm():
    from fedspine.methods.base import DeviceView
    from fedspine.methods.planners import RandomPlanner, capped_floor, warmup_cap

    assert warmup_cap(1, 12, 0.5, 0.0) == 0.5  # no warm-up: no cap
    caps = [warmup_cap(t, 12, 0.5, 0.5) for t in range(1, 13)]
    assert caps == sorted(caps) and caps[0] == pytest.approx(0.5 / 6) and caps[5:] == [0.5] * 7
    # the cap never asks a device to un-prune; the floor never exceeds the cap
    assert capped_floor(sparsity=0.3, floor=0.4, cap=0.1) == (0.3, 0.3)
    assert capped_floor(sparsity=0.0, floor=0.2, cap=0.1) == (0.1, 0.1)
    planner = RandomPlanner(2, 8, seed=0, rounds=12, participation_rate=0.1, warmup_share=0.5)
    for round_num in range(1, 13):
        for sparsity in (0.0, 0.1, 0.3):
            view = DeviceView(0, sparsity, 1, 4, "tx2")
            target = planner.assign(round_num, view, final_round=False).target_sparsity
            assert sparsity - 1e-9 <= target <= max(caps[round_num - 1], sparsity) + 1e-9
    assert (
        planner.assign(3, DeviceView(0, 0.0, 0, 0, "tx2"), final_round=True).target_sparsity == 0.5
    )


def test_bandit_logs_the_tree_that_proposed_the_arm_not_the_next_one():
    """A device's first pull comes from the fleet tree; its reward row must say so, even though
    the reward gives it a speed (so its next pull may come from its speed group's tree)."""
    from fedspine.bandit.sucb import GROUP_AFTER
    from fedspine.config import Config
    from fedspine.methods.base import DeviceView
    from fedspine.methods.fedspine import BanditPlanner
    from fedspine.protocol import DeviceReport, ParticipantOutcome

    planner = BanditPlanner(Config(), "shared", num_devices=8)
    report = DeviceReport(
        ok=True, time_s=2.0, train_flops=1e12, loss_before=1.0, loss_after=0.8, sparsity=0.1
    )
    sources = []
    # node 1 pulls until its speed group's tree may propose; node 2 (no speed yet) once
    schedule = [(r, 1) for r in range(1, GROUP_AFTER + 1)] + [(GROUP_AFTER + 1, 2)]
    for round_num, node in [*schedule, (GROUP_AFTER + 2, 1)]:
        planner.assign(round_num, DeviceView(node, 0.0, 0, 0, "tx2"), final_round=False)
        outcome = ParticipantOutcome(node, node, "tx2", report, update_norm=1.0)
        sources.append(planner.observe(round_num, [outcome])[0]["tree"])
    # node 1's first pulls: fleet; node 2 (never seen): fleet; node 1 again: its group's
    assert sources == ["fleet"] * (GROUP_AFTER + 1) + ["group"]
