"""Split example indices across simulated devices: IID, or label-skewed by a Dirichlet prior.

Label skew is what makes federated fine-tuning hard; alpha controls it (small alpha: each
device sees few classes; large alpha: close to IID). The Dirichlet sampling is delegated to
flwr-datasets' DirichletPartitioner so results match the Flower ecosystem's definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fedspine.errors import ConfigError, DataError


def partition_indices(
    labels: Sequence[int],
    num_partitions: int,
    alpha: float | None,
    seed: int,
    min_size: int = 1,
    self_balancing: bool = False,
) -> list[list[int]]:
    """Indices of each partition (sorted); every index appears in exactly one partition.

    alpha=None gives an IID split stratified by label; otherwise per-class proportions are
    drawn from Dirichlet(alpha) (resampled until every partition has >= min_size examples).
    self_balancing stops feeding a partition once it exceeds the mean size.
    """
    _validate(len(labels), num_partitions, alpha, min_size)
    if alpha is None:
        parts = _iid(labels, num_partitions, seed)
    else:
        parts = _dirichlet(labels, num_partitions, float(alpha), seed, min_size, self_balancing)
    return [sorted(part) for part in parts]


def device_partitions(
    labels: Sequence[int],
    num_devices: int,
    alpha: float | None,
    seed: int,
    min_size: int,
    reuse: bool = False,
) -> list[list[int]]:
    """Each device's example indices: `partition_indices` over the devices, or, with `reuse`
    and more devices than the data can give `min_size` examples each, over the
    `len(labels) // min_size` partitions it can, device d taking partition d mod that count
    (the same list object, so a large fleet costs no more memory than its data)."""
    if not reuse or num_devices * min_size <= len(labels):
        return partition_indices(labels, num_devices, alpha, seed, min_size=min_size)
    parts = partition_indices(labels, max(1, len(labels) // min_size), alpha, seed, min_size)
    return [parts[d % len(parts)] for d in range(num_devices)]


def _validate(num_examples: int, num_partitions: int, alpha: float | None, min_size: int) -> None:
    if num_partitions < 1:
        raise ConfigError(f"The number of devices must be at least 1, got {num_partitions}.")
    if alpha is not None and not alpha > 0:
        raise ConfigError(
            f"Dirichlet alpha must be > 0 (or unset for IID), got {alpha}: "
            "use e.g. 0.1 for strong label skew, 1.0 for mild, 100 for near-IID."
        )
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}.")
    if num_partitions * min_size > num_examples:
        raise DataError(
            f"Cannot give {num_partitions} devices at least {min_size} example(s) each from "
            f"{num_examples} training examples: lower num_devices, use more data, or set "
            "data.reuse_partitions=true to let devices share partitions."
        )


def _iid(labels: Sequence[int], num_partitions: int, seed: int) -> list[list[int]]:
    """Shuffle, group by label, deal round-robin: sizes differ by at most one and every
    partition gets each class in (near) the global proportion."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(np.asarray(labels)[shuffled], kind="stable")]
    offset = int(rng.integers(num_partitions))  # so partition 0 is not always the largest
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for position, index in enumerate(by_label.tolist()):
        parts[(position + offset) % num_partitions].append(index)
    return parts


def _dirichlet(
    labels: Sequence[int],
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int,
    self_balancing: bool,
) -> list[list[int]]:
    """flwr-datasets' Dirichlet draw (it retries up to 11 times for min_size); if small alpha
    still leaves a device short, e.g. 2 classes over 20 devices, the short devices are topped
    up from the largest ones so every device can train."""
    try:
        return _flwr_dirichlet(labels, num_partitions, alpha, seed, min_size, self_balancing)
    except ValueError:  # flwr gave up: no draw met min_size
        pass
    parts = _flwr_dirichlet(labels, num_partitions, alpha, seed, 0, self_balancing)
    parts, moved = _top_up(parts, min_size, np.random.default_rng(seed))
    warnings.warn(
        f"Dirichlet(alpha={alpha}) left some of {num_partitions} devices with fewer than "
        f"{min_size} example(s); moved {moved} example(s) to them from the largest devices. "
        "Raise alpha or lower num_devices for a cleaner split.",
        stacklevel=3,
    )
    return parts


def _flwr_dirichlet(
    labels: Sequence[int],
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int,
    self_balancing: bool,
) -> list[list[int]]:
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=self_balancing,
        shuffle=True,
        seed=seed,
    )
    # A "row" column carries each example's index through the partitioner's select().
    partitioner.dataset = datasets.Dataset.from_dict(
        {"label": [int(v) for v in labels], "row": list(range(len(labels)))}
    )
    with warnings.catch_warnings():  # it warns on every resample; the caller reports failure
        warnings.simplefilter("ignore")
        return [partitioner.load_partition(pid)["row"] for pid in range(num_partitions)]


def _top_up(
    parts: list[list[int]], min_size: int, rng: np.random.Generator
) -> tuple[list[list[int]], int]:
    """Move random examples from the currently largest partition into each short one.

    The donor always has more than min_size (total >= partitions * min_size), so no
    partition drops below min_size; returns the new partitions and how many moved."""
    parts = [list(part) for part in parts]
    moved = 0
    for pid in sorted(range(len(parts)), key=lambda p: len(parts[p])):
        while len(parts[pid]) < min_size:
            donor = max(range(len(parts)), key=lambda p: len(parts[p]))
            parts[pid].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
            moved += 1
    return parts, moved


def partition_summary(
    labels: Sequence[int], parts: Sequence[Sequence[int]], num_classes: int | None = None
) -> list[dict]:
    """Per partition: its size and the count of each label (index = label id), for the run
    record and plots of how skewed the split is."""
    label_array = np.asarray(labels, dtype=int)
    width = num_classes if num_classes is not None else int(label_array.max(initial=-1)) + 1
    return [
        {
            "partition": pid,
            "size": len(part),
            "label_counts": np.bincount(label_array[list(part)], minlength=width).tolist(),
        }
        for pid, part in enumerate(parts)
    ]
