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
