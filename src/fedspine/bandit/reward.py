"""The S-UCB reward of one device for one round (method.md step 8, [our choice]).

The paper says only that the reward combines loss improvement, pruning progress, the importance
of the LoRA update and the completion time relative to the round's other devices. We use

    R = w_loss * loss_gain + w_prune * prune_progress + w_imp * update_importance
        - w_time * max(0, time_ratio - time_slack)

* loss_gain = (loss_before - loss_after) / loss_before clipped to [0, 1]; loss_before is the
  device's loss at the start of the round (global LoRA, before local training and pruning),
  loss_after at its end. A loss that rose, or a non-finite loss, gives 0.
* prune_progress = share of the remaining gap to the final target sparsity closed this round,
  in [0, 1]; 1 when there was no gap left (the device is done pruning: nothing to ask).
* update_importance = ||delta_i|| / max_j ||delta_j|| over the round, in [0, 1].
* time_ratio = time_i / median round time, clipped to [0, max_time_ratio] (not to 1): a
  straggler at 2x the median must cost more than one at 1.1x, but one pathological round (a
  network stall) should not swamp a cell's mean, hence the cap (default 3).
* time_slack (default 1): only the part of time_ratio above it is charged, so devices that
  cannot be the straggler are free to take a higher rank (a synchronous round lasts as long
  as its slowest device, not its median one); 0 charges every device for all of its time.
  With 0 the default run's fast devices were pushed to rank 2 for no gain in round time.

Weights are config values (`[bandit]` in `fedspine.config`, the one home of their defaults,
recorded in every run's config.toml). The defaults weigh loss gain and pruning progress alike
(1.0 each: the device must both learn and reach the target), the straggler term 1.0 (with the
default slack, a device at the median pays 0, one at 2x pays 1.0) and the update norm, a weak
proxy of how much the device contributed to the global model, 0.5.

A failed device (out of memory, crash, timeout) gets ``failed_reward``: no gains, the capped
time ratio (the server waited for nothing) and ``failure_penalty`` on top, so (with a penalty > 0) a
failure is strictly worse than any completed round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fedspine.errors import ConfigError


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms and its two caps; record them with every run.

    These defaults are the [bandit] section's defaults (config.py reads them from here).
    """

    w_loss: float = 1.0
    w_prune: float = 1.0
    w_imp: float = 0.5
    w_time: float = 1.0
    time_slack: float = 1.0
    max_time_ratio: float = 3.0
    failure_penalty: float = 0.5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"reward weight {name} must be a finite number >= 0, got {value}")
        if self.max_time_ratio <= 0:
            raise ConfigError(f"reward max_time_ratio must be > 0, got {self.max_time_ratio}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class RewardParts:
    """Each normalised term and the weighted total, for logging next to the arm."""

    loss_gain: float
    prune_progress: float
    update_importance: float
    time_ratio: float
    total: float
    failed: bool = False

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def _clip01(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _loss_gain(loss_before: float, loss_after: float) -> float:
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)) or loss_before <= 0:
        return 0.0
    return _clip01((loss_before - loss_after) / loss_before)


def _prune_progress(sparsity_before: float, sparsity_after: float, target: float) -> float:
    gap = target - sparsity_before
    if gap <= 1e-9:
        return 1.0
    return _clip01((sparsity_after - sparsity_before) / gap)


def compute_reward(
    loss_before: float,
    loss_after: float,
    sparsity_before: float,
    sparsity_after: float,
    target_sparsity: float,
    update_norm: float,
    max_update_norm: float,
    time_s: float,
    median_time_s: float,
    weights: RewardWeights,
) -> RewardParts:
    """Reward of one completed device round; see the module docstring for each term."""
    if time_s < 0 or median_time_s <= 0:
        raise ValueError(
            f"times must be time_s >= 0 and median_time_s > 0, got {time_s}, {median_time_s}"
        )
    loss_gain = _loss_gain(loss_before, loss_after)
    prune_progress = _prune_progress(sparsity_before, sparsity_after, target_sparsity)
    importance = _clip01(update_norm / max_update_norm) if max_update_norm > 0 else 0.0
    time_ratio = min(time_s / median_time_s, weights.max_time_ratio)
    total = (
        weights.w_loss * loss_gain
        + weights.w_prune * prune_progress
        + weights.w_imp * importance
        - time_penalty(time_ratio, weights)
    )
    return RewardParts(loss_gain, prune_progress, importance, time_ratio, total)


def time_penalty(time_ratio: float, weights: RewardWeights) -> float:
    """The straggler term subtracted from the reward, for a time / median ratio."""
    capped = min(time_ratio, weights.max_time_ratio)
    return weights.w_time * max(0.0, capped - weights.time_slack)


def failed_reward(weights: RewardWeights) -> RewardParts:
    """Reward of a device that failed its round (OOM, crash, timeout): below any success."""
    time_ratio = weights.max_time_ratio
    total = -time_penalty(time_ratio, weights) - weights.failure_penalty
    return RewardParts(0.0, 0.0, 0.0, time_ratio, total, failed=True)
