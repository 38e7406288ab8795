"""Device partitions: exact cover, no empty device, skew ordered by alpha, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedspine.data.partition import device_partitions, partition_indices, partition_summary
from fedspine.errors import ConfigError, DataError

NUM_CLASSES = 5
LABELS = [i % NUM_CLASSES for i in range(1000)]  # 200 per class


def mean_label_entropy(labels: list[int], parts: list[list[int]]) -> float:
    """Mean Shannon entropy (bits) of each partition's label distribution: log2(5) is IID."""
    entropies = []
    for row in partition_summary(labels, parts, num_classes=NUM_CLASSES):
        probs = np.asarray(row["label_counts"], dtype=float) / row["size"]
        probs = probs[probs > 0]
        entropies.append(float(-(probs * np.log2(probs)).sum()))
    return float(np.mean(entropies))


@pytest.mark.filterwarnings("ignore:Dirichlet")
@pytest.mark.parametrize("alpha", [None, 0.05, 0.5, 5.0])
def test_partitions_cover_every_index_once_and_none_is_empty(alpha: float | None) -> None:
    parts = partition_indices(LABELS, num_partitions=20, alpha=alpha, seed=3)
    assert len(parts) == 20
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(LABELS)))
    assert min(len(part) for part in parts) >= 1


def test_min_size_is_respected() -> None:
    parts = partition_indices(LABELS, num_partitions=10, alpha=0.5, seed=0, min_size=30)
    assert min(len(part) for part in parts) >= 30


def test_smaller_alpha_gives_more_label_skew() -> None:
    entropy = {
        alpha: np.mean(
            [
                mean_label_entropy(LABELS, partition_indices(LABELS, 10, alpha, seed))
                for seed in range(3)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    iid = mean_label_entropy(LABELS, partition_indices(LABELS, 10, None, seed=0))
    assert entropy[0.1] < entropy[1.0] < entropy[100.0] <= iid + 1e-9
    assert entropy[0.1] < 1.5  # strongly skewed: well under log2(5) ~ 2.32 bits
    assert iid == pytest.approx(np.log2(NUM_CLASSES), abs=1e-6)


def test_iid_is_balanced_in_size_and_labels() -> None:
    labels = [0] * 700 + [1] * 200 + [2] * 103
    parts = partition_indices(labels, num_partitions=7, alpha=None, seed=1)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    for part in parts:
        counts = Counter(labels[i] for i in part)
        assert abs(counts[0] - 100) <= 1 and abs(counts[1] - 200 / 7) <= 1
        assert abs(counts[2] - 103 / 7) <= 1


def test_iid_is_shuffled_not_contiguous() -> None:
    parts = partition_indices(list(range(2)) * 50, num_partitions=2, alpha=None, seed=0)
    assert parts[0] != list(range(0, 100, 2)) and parts[0] != list(range(1, 100, 2))


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_partitions_are_deterministic_per_seed(alpha: float | None) -> None:
    first = partition_indices(LABELS, 8, alpha, seed=11)
    assert partition_indices(LABELS, 8, alpha, seed=11) == first
    assert partition_indices(LABELS, 8, alpha, seed=12) != first


def test_self_balancing_evens_out_sizes() -> None:
    def size_spread(balanced: bool) -> float:
        spreads = []
        for seed in range(3):
            parts = partition_indices(LABELS, 10, 0.3, seed, self_balancing=balanced)
            spreads.append(np.std([len(part) for part in parts]))
        return float(np.mean(spreads))

    assert size_spread(True) < size_spread(False)


def test_more_devices_than_examples_names_the_fix() -> None:
    with pytest.raises(DataError, match="or set data.reuse_partitions=true"):
        partition_indices([0, 1, 0], num_partitions=4, alpha=None, seed=0)
    with pytest.raises(DataError, match="or set data.reuse_partitions=true"):
        partition_indices([0, 1] * 10, num_partitions=5, alpha=1.0, seed=0, min_size=5)


def test_short_devices_are_topped_up_when_dirichlet_cannot_fill_them() -> None:
    labels = [i % 2 for i in range(100)]  # 2 classes over 10 devices at tiny alpha: most empty
    with pytest.warns(UserWarning, match="moved"):
        parts = partition_indices(labels, num_partitions=10, alpha=0.01, seed=0, min_size=10)
    assert [len(part) for part in parts] == [10] * 10
    assert sorted(i for part in parts for i in part) == list(range(100))


def test_tiny_alpha_with_many_devices_stays_skewed() -> None:
    with pytest.warns(UserWarning, match="moved"):
        parts = partition_indices(LABELS, num_partitions=20, alpha=0.05, seed=3)
    assert mean_label_entropy(LABELS, parts) < 1.0


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        partition_indices(LABELS, 4, alpha=0.0, seed=0)
    with pytest.raises(ConfigError):
        partition_indices(LABELS, 0, alpha=None, seed=0)


def test_summary_counts_match_the_partitions() -> None:
    labels = [0, 0, 1, 2, 2, 2]
    summary = partition_summary(labels, [[0, 3], [1, 2, 4, 5], []])
    assert summary == [
        {"partition": 0, "size": 2, "label_counts": [1, 0, 1]},
        {"partition": 1, "size": 4, "label_counts": [1, 1, 2]},
        {"partition": 2, "size": 0, "label_counts": [0, 0, 0]},
    ]


def test_reused_partitions_give_a_fleet_larger_than_the_data_a_partition_each():
    labels = [i % 3 for i in range(60)]  # room for 7 partitions of 8
    parts = device_partitions(labels, 20, alpha=0.5, seed=0, min_size=8, reuse=True)
    assert len(parts) == 20 and all(len(p) >= 8 for p in parts)
    distinct = {id(p) for p in parts}
    assert len(distinct) == 60 // 8  # device d uses partition d mod 7 (the same list object)
    assert parts[0] is parts[7] and parts[3] is parts[17]
    # the distinct partitions are disjoint and cover the data
    covered = sorted(i for p in {id(p): p for p in parts}.values() for i in p)
    assert covered == list(range(60))
    # a fleet the data can hold is partitioned as before, reuse or not
    assert device_partitions(labels, 5, 0.5, 0, 8, reuse=True) == partition_indices(
        labels, 5, 0.5, 0, min_size=8
    )
    with pytest.raises(DataError, match="reuse_partitions"):
        device_partitions(labels, 20, alpha=0.5, seed=0, min_size=8)
