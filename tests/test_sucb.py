"""S-UCB and the bandit pool on synthetic rewards (no model): regret, drift, sharing, limits."""

import math

import numpy as np
import pytest
import torch

from fedspine.bandit import Arm, BanditPool, SmoothUCB
from fedspine.bandit.grouping import choose_tree_source, smoothed_log2_speed, speed_bucket
from fedspine.bandit.sucb import DISCOUNT, GROUP_AFTER, INHERIT_WEIGHT, OWN_AFTER
from fedspine.errors import ConfigError

torch.set_num_threads(1)

P_RANGE, RANK_RANGE = (0.0, 0.8), (2, 64)
RANKS = (2, 4, 8, 16, 32, 64)
P_GRID = np.linspace(*P_RANGE, 401)


def bump(arm: Arm, centre: tuple[float, float], width: float = 0.25) -> float:
    """Smooth reward in [0, 1] peaking at `centre` of the normalised (p, log2 r) box."""
    p = (arm.prune_ratio - P_RANGE[0]) / (P_RANGE[1] - P_RANGE[0])
    u = (math.log2(arm.lora_rank) - 1) / 5
    return math.exp(-((p - centre[0]) ** 2 + (u - centre[1]) ** 2) / (2 * width**2))


def best_reward(centre: tuple[float, float]) -> float:
    return max(bump(Arm(float(p), r), centre) for p in P_GRID for r in RANKS)


def play(bandit_seed: int, steps: int, centres, shift_at=None, random_arms=False):
    """Mean rewards per step; centres[1] takes over from step shift_at."""
    rng = np.random.default_rng(1000 + bandit_seed)
    bandit = SmoothUCB(P_RANGE, RANK_RANGE, seed=bandit_seed)
    means = []
    for step in range(steps):
        centre = centres[1] if shift_at is not None and step >= shift_at else centres[0]
        if random_arms:
            arm = Arm(float(rng.uniform(*P_RANGE)), int(rng.choice(RANKS)))
        else:
            arm = bandit.propose()
        mean = bump(arm, centre)
        bandit.update(arm, mean + rng.normal(0.0, 0.1))
        means.append(mean)
    return np.array(means)


def test_regret_is_sublinear_and_beats_random_arms():
    centre, steps, seeds = (0.7, 0.6), 400, range(5)
    optimum = best_reward(centre)
    regrets = [optimum - play(s, steps, [centre]) for s in seeds]
    first = np.mean([r[: steps // 2].sum() for r in regrets])
    second = np.mean([r[steps // 2 :].sum() for r in regrets])
    random_total = np.mean(
        [(optimum - play(s, steps, [centre], random_arms=True)).sum() for s in seeds]
    )
    assert second < 0.5 * first
    assert first + second < 0.3 * random_total


def test_recovers_after_the_reward_shifts():
    old, new, steps, shift = (0.7, 0.6), (0.15, 0.1), 800, 400
    new_optimum = best_reward(new)
    runs = [play(s, steps, [old, new], shift_at=shift) for s in range(4)]
    just_after = np.mean([r[shift : shift + 50].mean() for r in runs])
    last_window = np.mean([r[-50:].mean() for r in runs])
    assert just_after < 0.8 * new_optimum  # the shift really hurt
    assert last_window > new_optimum - 0.1  # and the bandit came back near the new optimum


CLASS_CENTRES = [(0.8, 0.2), (0.4, 0.6), (0.1, 0.9)]
CLASS_SPEEDS = [1.0, 4.5, 8.0]


def fleet_regret(mode: str, seed: int, rounds: int = 150) -> float:
    """80 devices in 3 hidden speed classes with their own optima, 10 per round."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.repeat([0, 1, 2], [30, 40, 10]))
    speeds = np.array([CLASS_SPEEDS[c] for c in classes]) * rng.uniform(0.8, 1.2, 80)
    optima = [best_reward(c) for c in CLASS_CENTRES]
    pool = BanditPool(mode, P_RANGE, RANK_RANGE, seed=seed)
    regret = 0.0
    for _ in range(rounds):
        for device in rng.choice(80, 10, replace=False).tolist():
            arm = pool.propose(device)
            mean = bump(arm, CLASS_CENTRES[classes[device]])
            speed = speeds[device] * rng.uniform(0.9, 1.1)
            pool.update(device, arm, mean + rng.normal(0.0, 0.1), effective_speed=speed)
            regret += optima[classes[device]] - mean
    return regret


def test_shared_trees_beat_per_device_trees_under_partial_participation():
    shared = np.mean([fleet_regret("shared", s) for s in range(3)])
    per_device = np.mean([fleet_regret("per-device", s) for s in range(3)])
    assert shared < 0.7 * per_device


def test_proposals_respect_floor_cap_and_rank_range():
    rng = np.random.default_rng(0)
    bandit = SmoothUCB(P_RANGE, (4, 32), seed=3)
    for _ in range(300):
        floor = float(rng.uniform(0.0, 0.7))
        cap = float(rng.uniform(floor, 0.8))
        arm = bandit.propose(p_floor=floor, p_cap=cap)
        assert floor <= arm.prune_ratio <= cap
        assert arm.lora_rank in (4, 8, 16, 32)
        bandit.update(arm, bump(arm, (0.5, 0.5)))
    assert len(bandit._leaves) > 1  # the tree did refine under constraints


def test_interval_outside_the_box_stays_within_the_hard_limits():
    bandit = SmoothUCB((0.1, 0.5), (4, 16), seed=0)
    above = bandit.propose(p_floor=0.6, p_cap=0.7)  # device already past p_max
    assert above.prune_ratio == pytest.approx(0.6)
    below = bandit.propose(p_floor=0.0, p_cap=0.05)  # final target below p_min
    assert 0.0 <= below.prune_ratio <= 0.05
    bandit.update(above, 1.0)
    bandit.update(below, 0.0)
    with pytest.raises(ValueError):
        bandit.propose(p_floor=0.5, p_cap=0.4)


def test_degenerate_ranges_are_never_split():
    bandit = SmoothUCB((0.0, 0.0), (4, 32), seed=1)
    for _ in range(200):
        arm = bandit.propose()
        assert arm.prune_ratio == 0.0 and arm.lora_rank in (4, 8, 16, 32)
        bandit.update(arm, -abs(math.log2(arm.lora_rank) - 4))
    leaves = [bandit._cells[i] for i in bandit._leaves]
    assert len(leaves) > 1  # the rank side refined ...
    assert all(leaf.lo[0] == leaf.hi[0] == 0.0 for leaf in leaves)  # ... the zero-width p side not
    fixed = SmoothUCB((0.3, 0.3), (8, 8), seed=0)
    for _ in range(20):
        arm = fixed.propose()
        assert (arm.prune_ratio, arm.lora_rank) == (0.3, 8)
        fixed.update(arm, 1.0)
    assert len(fixed._leaves) == 1  # nothing to split


def test_seeded_determinism():
    def arms(bandit, n):
        out = []
        for i in range(n):
            arm = bandit.propose(p_floor=0.01 * i)
            bandit.update(arm, bump(arm, (0.3, 0.3)))
            out.append(arm)
        return out

    assert arms(SmoothUCB(P_RANGE, RANK_RANGE, seed=7), 60) == arms(
        SmoothUCB(P_RANGE, RANK_RANGE, seed=7), 60
    )
    assert arms(SmoothUCB(P_RANGE, RANK_RANGE, seed=7), 60) != arms(
        SmoothUCB(P_RANGE, RANK_RANGE, seed=8), 60
    )


def test_pool_seeded_determinism_and_per_device_isolation():
    def pool_after_updates():
        pool = BanditPool("shared", P_RANGE, RANK_RANGE, seed=2)
        for device in range(12):
            arm = pool.propose(device)
            pool.update(device, arm, bump(arm, (0.5, 0.5)), effective_speed=1.0 + device)
        return pool

    first, second = pool_after_updates(), pool_after_updates()
    for device in (0, 5, 99):
        assert first.propose(device) == second.propose(device)
    isolated = BanditPool("per-device", P_RANGE, RANK_RANGE, seed=2)
    arm = isolated.propose("a")
    isolated.update("a", arm, 1.0, effective_speed=3.0)
    assert isolated.group_of("a") is None and isolated.source_of("b") == "own"


def test_pool_sources_follow_pulls_and_speed_drift():
    pool = BanditPool("shared", P_RANGE, RANK_RANGE, seed=0)
    assert pool.source_of("new") == "fleet"  # never seen
    for _ in range(GROUP_AFTER):
        pool.update("a", pool.propose("a"), 0.5, effective_speed=10.0)
    assert pool.source_of("a") == "group"
    assert pool.source_of("b") == "fleet"  # speed unknown
    for _ in range(OWN_AFTER - GROUP_AFTER):
        pool.update("a", pool.propose("a"), 0.5, effective_speed=10.0)
    assert pool.source_of("a") == "own"
    fast_bucket = pool.group_of("a")
    for _ in range(4):  # a power-mode switch: 0.4x the speed
        pool.update("a", pool.propose("a"), 0.5, effective_speed=4.0)
    assert pool.group_of("a") < fast_bucket


def test_grouping_functions():
    assert speed_bucket(0.0, 0.0, 0.5) == 0
    assert speed_bucket(0.24, 0.0, 0.5) == 0 and speed_bucket(0.26, 0.0, 0.5) == 1
    assert speed_bucket(-0.26, 0.0, 0.5) == -1
    assert smoothed_log2_speed(None, 8.0, 0.5) == pytest.approx(3.0)
    assert smoothed_log2_speed(1.0, 8.0, 0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        smoothed_log2_speed(None, 0.0, 0.5)
    tiers = {"tx2": math.log2(1.0), "nx": math.log2(4.5), "agx": math.log2(8.0)}
    buckets = {speed_bucket(log2_speed, 0.0, 0.5) for log2_speed in tiers.values()}
    assert len(buckets) == 3  # the default fleet's tiers stay apart
    assert choose_tree_source(0, None, 20, 4) == "fleet"
    assert choose_tree_source(0, 3, 20, 4) == "fleet"
    assert choose_tree_source(5, 4, 20, 4) == "group"
    assert choose_tree_source(20, 0, 20, 4) == "own"


@pytest.mark.parametrize(
    "options",
    [
        {"p_range": (0.5, 0.2)},
        {"p_range": (0.0, 1.0)},
        {"rank_range": (0, 8)},
        {"rank_range": (3, 16)},
        {"c": -1.0},
    ],
)
def test_invalid_settings_raise_config_error(options):
    settings = {"p_range": P_RANGE, "rank_range": RANK_RANGE, **options}
    with pytest.raises(ConfigError):
        SmoothUCB(**settings)


def test_children_inherit_the_parent_mean_at_the_inherit_weight():
    bandit = SmoothUCB(P_RANGE, RANK_RANGE, seed=0)
    for reward in (0.2, 0.6):  # the root splits after its second pull
        bandit.update(bandit.propose(), reward)
    parent_mean = (DISCOUNT * 0.2 + 0.6) / (DISCOUNT + 1.0)
    leaves = [bandit._cells[i] for i in bandit._leaves]
    assert len(leaves) == 2
    for leaf in leaves:  # the parent's mean, not a forced visit (an unvisited leaf: weight 0)
        assert leaf.weight == pytest.approx(INHERIT_WEIGHT)
        assert leaf.reward_sum / leaf.weight == pytest.approx(parent_mean)


def test_inheriting_children_let_rewards_steer_a_young_tree():
    """With 30 pulls, proposals must depend on the rewards (not only on the seeded sampler)."""

    def arms(reward_of):
        bandit = SmoothUCB(P_RANGE, RANK_RANGE, seed=3)
        chosen = []
        for _ in range(30):
            arm = bandit.propose()
            bandit.update(arm, reward_of(arm))
            chosen.append((arm.prune_ratio, arm.lora_rank))
        return chosen

    def low_rank(arm):
        return 1.0 if arm.lora_rank <= 4 else 0.0

    def high_rank(arm):
        return 1.0 if arm.lora_rank >= 16 else 0.0

    assert arms(low_rank) != arms(high_rank)
    low = sum(r <= 4 for _, r in arms(low_rank)[10:])
    high = sum(r <= 4 for _, r in arms(high_rank)[10:])
    assert low > high
