"""The bandit's time model: speeds from reports, the fleet's work fit, and arms picked by cost."""

import statistics

import numpy as np
import pytest

from fedspine.bandit.reward import RewardWeights, compute_reward, time_penalty
from fedspine.bandit.sucb import DISCOUNT, SmoothUCB
from fedspine.bandit.time_model import (
    DeviceSpeed,
    RidgeFit,
    WorkModel,
    blend_speed,
    predicted_time_s,
    speed_from_report,
)
from fedspine.config import Config
from fedspine.fleet.clock import RoundConditions, compute_time_s, round_time_s
from fedspine.fleet.probe import ProbeResult
from fedspine.methods.base import DeviceView
from fedspine.methods.fedspine import BanditPlanner
from fedspine.protocol import DeviceReport, ParticipantOutcome


def outcome(node_id: int, update_norm: float = 0.0, **report) -> ParticipantOutcome:
    """A hand-made participant outcome: the typed report a planner reads."""
    return ParticipantOutcome(
        node_id, node_id, "x", DeviceReport(**report), update_norm=update_norm
    )


def test_ridge_fit_starts_at_the_prior_and_converges_to_the_data():
    fit = RidgeFit([10.0, -1.0], typical=[1.0, 0.15])
    assert fit.coef() == pytest.approx([10.0, -1.0])
    rng = np.random.default_rng(0)
    for x in rng.uniform(-0.25, 0.25, size=300):
        fit.add([1.0, x], 3.0 + 2.0 * x)
    assert fit.coef() == pytest.approx([3.0, 2.0], rel=0.05)


def test_ridge_fit_holds_a_coefficient_the_data_cannot_identify():
    """Every report at one sparsity (x = 0, the centre): the slope stays at its prior."""
    fit = RidgeFit([10.0, -8.0], typical=[1.0, 0.25])
    for _ in range(50):
        fit.add([1.0, 0.0], 12.0)
    intercept, slope = fit.coef()
    assert intercept == pytest.approx(12.0, rel=0.05)
    assert slope == pytest.approx(-8.0)


def test_a_report_gives_back_the_speeds_the_clock_used():
    cond = RoundConditions(flops_per_s=4e11, bandwidth_Bps=3e6, low_power=False)
    flops, up, down, latency = 5e11, 700_000, 900_000, 0.05
    time_s = round_time_s(flops, up, down, cond, latency)
    speed = speed_from_report(flops, compute_time_s(flops, cond), time_s, up + down, latency)
    assert speed.flops_per_s == pytest.approx(4e11) and speed.bandwidth_Bps == pytest.approx(3e6)
    assert speed_from_report(flops, 0.0, time_s, up + down, latency) is None  # no compute time


def test_blended_speed_is_the_geometric_mean_at_half_weight():
    old, new = DeviceSpeed(1e11, 1e6, 0.05), DeviceSpeed(4e11, 4e6, 0.05)
    mixed = blend_speed(old, new, 0.5)
    assert mixed.flops_per_s == pytest.approx(2e11) and mixed.bandwidth_Bps == pytest.approx(2e6)
    assert blend_speed(None, new, 0.5) == new


def test_prediction_matches_the_clock_once_the_work_model_has_seen_the_fleet():
    """FLOPs and bytes that are exactly linear in the features are learned, and the predicted
    time of an unseen arm equals what the clock charges for it."""
    full_flops, full_bytes, max_rank = 4e11, 2_400_000, 8

    def true_work(before, after, rank):
        flops = full_flops * (1 - 0.9 * (before + after) / 2)
        moved = 40_000 + rank * (full_bytes / max_rank) * (1 - 0.6 * after)
        return flops, moved

    work = WorkModel(full_flops, full_bytes, max_rank)
    rng = np.random.default_rng(1)
    for _ in range(300):
        before = rng.uniform(0, 0.4)
        after = rng.uniform(before, 0.5)
        rank = int(rng.choice([2, 4, 8]))
        work.add(before, after, rank, *true_work(before, after, rank))
    cond = RoundConditions(flops_per_s=3e11, bandwidth_Bps=2e6, low_power=False)
    flops, moved = true_work(0.2, 0.35, 4)
    expected = round_time_s(flops, int(moved) // 2, int(moved) - int(moved) // 2, cond, 0.05)
    speed = DeviceSpeed(cond.flops_per_s, cond.bandwidth_Bps, 0.05)
    assert predicted_time_s(speed, work, 0.2, 0.35, 4) == pytest.approx(expected, rel=0.01)


def test_time_penalty_is_the_reward_time_term():
    weights = RewardWeights(time_slack=1.0, w_time=0.7)
    parts = compute_reward(1.0, 0.5, 0.0, 0.2, 0.5, 1.0, 1.0, 3.0, 1.5, weights)
    without_time = compute_reward(1.0, 0.5, 0.0, 0.2, 0.5, 1.0, 1.0, 1.0, 1.5, weights)
    assert parts.total == pytest.approx(without_time.total - time_penalty(2.0, weights))
    assert time_penalty(0.8, weights) == 0.0
    assert time_penalty(10.0, weights) == pytest.approx(0.7 * (3.0 - 1.0))  # capped ratio


def test_a_known_cost_steers_the_sampled_point_and_free_time_buys_rank():
    costly_rank = [SmoothUCB((0.0, 0.5), (2, 8), seed=s) for s in range(40)]
    ranks = [t.propose(cost=lambda p, r: float(r)).lora_rank for t in costly_rank]
    assert statistics.mean(ranks) < 2.6  # the cheapest of several draws: nearly always rank 2
    free = [SmoothUCB((0.0, 0.5), (2, 8), seed=s) for s in range(40)]
    free_ranks = [t.propose(cost=lambda p, r: 0.0).lora_rank for t in free]
    assert statistics.mean(free_ranks) > 7.0  # time costs nothing: the largest rank drawn


def _planner_with_probes(links: dict[int, float]) -> BanditPlanner:
    planner = BanditPlanner(Config(), "shared", num_devices=len(links))
    probes = {node: ProbeResult(0.05, bandwidth, 0.05) for node, bandwidth in links.items()}
    planner.observe_probe(probes, step_flops=3e10, round_bytes=2_700_000)
    return planner


def test_slow_link_devices_are_offered_lower_ranks_than_fast_ones():
    """Same compute, links 0.5 vs 50 MB/s: the slow link is the straggler, so its predicted
    time term makes the cheaper (lower-rank) arms win; the fast device pays nothing."""
    slow, fast = [], []
    for seed_round in range(30):
        planner = _planner_with_probes({0: 5e5, 1: 5e7, 2: 5e6, 3: 5e6})
        planner.pool.config["seed"] = seed_round
        slow.append(planner.assign(1, DeviceView(0, 0.0, 0, 0, "x"), False).lora_rank)
        fast.append(planner.assign(1, DeviceView(1, 0.0, 0, 0, "x"), False).lora_rank)
    assert statistics.mean(slow) < statistics.mean(fast) - 1.0


def test_the_tree_learns_the_reward_without_its_predicted_time_term():
    planner = _planner_with_probes({0: 5e5, 1: 5e7})
    arms = {n: planner.assign(1, DeviceView(n, 0.0, 0, 0, "x"), False) for n in (0, 1)}
    outcomes = [
        outcome(
            n,
            update_norm=1.0,
            ok=True,
            time_s=t,
            compute_s=0.5,
            train_flops=3.6e11,
            bytes_up=300_000,
            bytes_down=300_000,
            lora_rank=arms[n].lora_rank,
            loss_before=1.0,
            loss_after=0.5,
            sparsity=arms[n].target_sparsity,
        )
        for n, t in ((0, 3.0), (1, 0.7))
    ]
    logs = planner.observe(1, outcomes)
    slow_log = logs[0]
    assert slow_log["time_ratio"] > 1.0  # the slow device paid a time penalty in its reward
    learned = slow_log["total"] + time_penalty(slow_log["time_ratio"], planner.weights)
    fleet = planner.pool._fleet_tree()
    # node 0 updated first, then node 1 (paid nothing)
    expected_mean = (DISCOUNT * learned + logs[1]["total"]) / (DISCOUNT + 1.0)
    root = fleet._cells[0]
    assert root.reward_sum / root.weight == pytest.approx(expected_mean)
    assert planner.speeds[0].bandwidth_Bps < planner.speeds[1].bandwidth_Bps
    assert planner.median_time == pytest.approx(statistics.median([3.0, 0.7]))


def test_a_failed_round_keeps_its_whole_penalty_in_the_tree():
    """Out of memory is not a matter of speed: the tree must learn the full failure reward."""
    planner = _planner_with_probes({0: 5e6})
    planner.assign(1, DeviceView(0, 0.0, 0, 0, "x"), False)
    logs = planner.observe(1, [outcome(0, ok=False)])
    root = planner.pool._fleet_tree()._cells[0]
    assert logs[0]["failed"] and logs[0]["total"] < 0
    assert root.reward_sum / root.weight == pytest.approx(logs[0]["total"])


def test_without_a_probe_the_first_report_sizes_the_work_prior_per_rank():
    """A rank-2 first report must not be read as a full-rank payload."""
    planner = BanditPlanner(Config(), "per-device", num_devices=1)
    arm = planner.assign(1, DeviceView(0, 0.0, 0, 0, "x"), False)
    moved = 200_000 * 2  # the device used rank 2: 200 KB per rank unit, both ways
    report = outcome(
        0,
        update_norm=1.0,
        ok=True,
        time_s=2.0,
        compute_s=1.0,
        train_flops=3.6e11,
        bytes_up=moved // 2,
        bytes_down=moved // 2,
        lora_rank=2,
        loss_before=1.0,
        loss_after=0.5,
        sparsity=arm.target_sparsity,
    )
    planner.observe(1, [report])
    _, bytes_at_max = planner.work.predict(0.25, 0.25, planner.max_rank)
    assert bytes_at_max == pytest.approx(200_000 * planner.max_rank, rel=0.15)
