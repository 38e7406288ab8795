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
            f"{num_examples} training examples: lower num_devices or use more data."
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
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    table = datasets.Dataset.from_dict(
        {"label": [int(v) for v in labels], "row": list(range(len(labels)))}
    )
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=self_balancing,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():  # it warns on every resample; failure is reported below
            warnings.simplefilter("ignore")
            return [partitioner.load_partition(pid)["row"] for pid in range(num_partitions)]
    except ValueError:
        raise DataError(
            f"Could not draw a Dirichlet(alpha={alpha}) split giving each of {num_partitions} "
            f"devices at least {min_size} example(s) from {len(labels)} examples: raise alpha, "
            "lower num_devices or use more data."
        ) from None


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
