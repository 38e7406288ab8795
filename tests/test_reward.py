"""The S-UCB reward: each term's range, monotonicity, the failure penalty, validation."""

import itertools
import json

import numpy as np
import pytest
import torch

from fedspine.bandit import RewardWeights, compute_reward, failed_reward
from fedspine.errors import ConfigError

torch.set_num_threads(1)

BASE = {
    "loss_before": 1.0,
    "loss_after": 0.8,
    "sparsity_before": 0.1,
    "sparsity_after": 0.3,
    "target_sparsity": 0.5,
    "update_norm": 2.0,
    "max_update_norm": 4.0,
    "time_s": 10.0,
    "median_time_s": 10.0,
}


PLAIN = RewardWeights(time_slack=0.0)  # every device pays for all of its time


def reward(**changes):
    return compute_reward(**{**BASE, **changes}, weights=PLAIN)


def test_terms_and_total_on_a_typical_round():
    parts = reward()
    weights = PLAIN
    assert parts.loss_gain == pytest.approx(0.2)
    assert parts.prune_progress == pytest.approx(0.5)
    assert parts.update_importance == pytest.approx(0.5)
    assert parts.time_ratio == pytest.approx(1.0)
    expected = (
        weights.w_loss * 0.2
        + weights.w_prune * 0.5
        + weights.w_imp * 0.5
        - weights.w_time * max(0.0, 1.0 - weights.time_slack)
    )
    assert parts.total == pytest.approx(expected)
    assert not parts.failed
    assert json.loads(json.dumps(parts.to_dict()))["total"] == pytest.approx(expected)


def test_terms_stay_in_range_over_random_inputs():
    rng = np.random.default_rng(0)
    weights = RewardWeights()
    for _ in range(500):
        before = float(rng.uniform(0, 0.9))
        parts = compute_reward(
            loss_before=float(rng.uniform(0, 5)),
            loss_after=float(rng.uniform(0, 5)),
            sparsity_before=before,
            sparsity_after=float(rng.uniform(0, 1)),
            target_sparsity=float(rng.uniform(0, 1)),
            update_norm=float(rng.uniform(0, 10)),
            max_update_norm=float(rng.uniform(0, 10)),
            time_s=float(rng.uniform(0, 100)),
            median_time_s=float(rng.uniform(0.1, 30)),
            weights=weights,
        )
        for term in (parts.loss_gain, parts.prune_progress, parts.update_importance):
            assert 0.0 <= term <= 1.0
        assert 0.0 <= parts.time_ratio <= weights.max_time_ratio


def test_each_term_moves_the_total_the_right_way():
    by_loss = [reward(loss_after=x).total for x in (1.2, 0.9, 0.6, 0.3)]
    by_prune = [reward(sparsity_after=x).total for x in (0.1, 0.2, 0.4, 0.5)]
    by_norm = [reward(update_norm=x).total for x in (0.0, 1.0, 3.0, 4.0)]
    by_time = [reward(time_s=x).total for x in (5.0, 10.0, 20.0, 25.0)]
    for increasing in (by_loss, by_prune, by_norm):
        assert all(a < b for a, b in itertools.pairwise(increasing))
    assert all(a > b for a, b in itertools.pairwise(by_time))


def test_edge_cases_are_defined():
    assert reward(loss_after=1.5).loss_gain == 0.0  # loss rose: no gain, not negative
    assert reward(loss_after=float("nan")).loss_gain == 0.0
    assert reward(loss_after=-1.0).loss_gain == 1.0
    assert reward(sparsity_before=0.5, sparsity_after=0.5).prune_progress == 1.0  # no gap
    assert reward(max_update_norm=0.0, update_norm=0.0).update_importance == 0.0
    assert reward(time_s=1000.0).time_ratio == RewardWeights().max_time_ratio
    assert reward(time_s=2.0).time_ratio == pytest.approx(0.2)  # fast devices are not clipped
    with pytest.raises(ValueError):
        reward(median_time_s=0.0)


def test_failure_is_worse_than_any_completed_round():
    weights = RewardWeights()
    failure = failed_reward(weights)
    worst_success = compute_reward(
        loss_before=1.0,
        loss_after=2.0,
        sparsity_before=0.1,
        sparsity_after=0.1,
        target_sparsity=0.5,
        update_norm=0.0,
        max_update_norm=1.0,
        time_s=1e6,
        median_time_s=1.0,
        weights=weights,
    )
    assert failure.failed and failure.total < worst_success.total
    assert failure.to_dict()["failed"] is True


def test_weights_validate_and_serialise():
    with pytest.raises(ConfigError):
        RewardWeights(w_loss=-1.0)
    with pytest.raises(ConfigError):
        RewardWeights(max_time_ratio=0.0)
    custom = RewardWeights(w_time=0.0, time_slack=0.0)
    assert reward().total < compute_reward(**BASE, weights=custom).total
    assert RewardWeights(**RewardWeights().to_dict()) == RewardWeights()


def test_time_slack_charges_only_the_time_above_the_median():
    slack = RewardWeights(time_slack=1.0)
    fast = compute_reward(**{**BASE, "time_s": 4.0}, weights=slack)
    median = compute_reward(**BASE, weights=slack)
    slow = compute_reward(**{**BASE, "time_s": 20.0}, weights=slack)
    assert fast.total == pytest.approx(median.total)  # neither can be the straggler
    assert fast.time_ratio == pytest.approx(0.4)  # the logged ratio is unchanged
    assert slow.total == pytest.approx(median.total - slack.w_time * 1.0)
    assert failed_reward(slack).total < slow.total
