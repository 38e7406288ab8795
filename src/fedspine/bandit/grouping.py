"""Online grouping of devices by observed effective speed, for sharing S-UCB trees.

[our choice, beyond the paper] The server never reads device profiles; it sees how long a
device took for the work it was asked to do. ``effective speed`` = work units / second (the
caller computes it). Speeds of real fleets span tiers that differ by constant factors, so we
group on a log2 scale: bucket k holds speeds within a factor ``2 ** width_log2`` around
``reference * 2 ** (k * width_log2)``. Buckets have stable integer keys, so a device whose
speed drifts (a power-mode switch) simply moves to another bucket's tree; nothing is refit.

With the default width 0.5 (a factor sqrt(2) per bucket) the default fleet's tiers
(1 : 4.5 : 8) land in different buckets, and a tier's +-20% device spread covers one or two.
"""

from __future__ import annotations

import math
from typing import Literal

TreeSource = Literal["own", "group", "fleet"]


def smoothed_log2_speed(previous: float | None, speed: float, new_weight: float) -> float:
    """Exponential moving average of log2(speed): damps per-round noise, follows real drift."""
    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"effective speed must be a positive finite number, got {speed!r}")
    current = math.log2(speed)
    if previous is None:
        return current
    return (1.0 - new_weight) * previous + new_weight * current


def speed_bucket(log2_speed: float, reference_log2: float, width_log2: float) -> int:
    """Integer bucket of a log2 speed; the reference speed sits in the middle of bucket 0."""
    return math.floor((log2_speed - reference_log2) / width_log2 + 0.5)


def choose_tree_source(
    own_pulls: int, group_pulls: int | None, own_after: int, group_after: int
) -> TreeSource:
    """Which tree proposes for a device.

    Its own tree once it has ``own_after`` pulls of its own (enough data to specialise);
    else its speed group's tree once that group has ``group_after`` pulls; else the fleet-wide
    tree (a device never seen, or a group just created). ``group_pulls`` is None while the
    device's speed is unknown.
    """
    if own_pulls >= own_after:
        return "own"
    if group_pulls is not None and group_pulls >= group_after:
        return "group"
    return "fleet"
