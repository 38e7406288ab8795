"""Choosing which heads and channels to keep, and the pruning step that applies the choice.

`target_ratio` is the share of the FULL model's query heads and, separately, of its FFN
channels that must be removed once the step is done (an absolute sparsity, so 0.25 then 0.5 is
two steps). Heads and channels get the same share. Selection is monotone (only currently kept
structures can be kept) and keeps at least one head and one channel per layer.

Grouped-query attention makes head counts coarse (SmolLM2's 9 query heads in 3 kv groups allow
9, 6, 4, 3, 2 or 1 per layer): there the head count closest to the target is taken and the FFN
channels absorb the difference, so the mean of the two shares (the reported sparsity) still
lands on the target instead of overshooting it by a whole kv group.

Modes:
- ``uniform`` (default): every layer keeps round(full * (1 - ratio)) heads / channels, so all
  layers share one width and a stock config describes the result.
- ``global``: per-layer mean-normalised scores ranked across layers; the widths differ per layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedspine.errors import ConfigError
from fedspine.models.families import FamilyAdapter
from fedspine.pruning.importance import LayerScores, ModelScores
from fedspine.pruning.kept import KeptIndices, LayerKept, kv_heads_of
from fedspine.pruning.slicing import apply_kept_

SELECTION_MODES = ("uniform", "global")


def select_groups_to_keep(
    scores: ModelScores, kept: KeptIndices, target_ratio: float, mode: str = "uniform"
) -> KeptIndices:
    """Pure: the kept map after removing the lowest-scoring heads and channels."""
    if not 0.0 <= target_ratio < 1.0:
        raise ConfigError(f"target pruning ratio must be in [0, 1), got {target_ratio}")
    if mode not in SELECTION_MODES:
        raise ConfigError(f"pruning selection mode must be one of {SELECTION_MODES}, got {mode!r}")
    if len(scores) != len(kept.layers):
        raise ConfigError(f"scores cover {len(scores)} layers, the model has {len(kept.layers)}")
    dims = kept.dims
    pairs = list(zip(scores, kept.layers, strict=True))
    head_units = [_head_unit_scores(s, k, dims.group_size) for s, k in pairs]
    channel_units = [s.channels[list(k.channels)] for s, k in pairs]
    head_counts = _keep_counts(head_units, dims.num_heads, target_ratio, mode)
    coarse = dims.group_size > 1
    heads = [
        _select_heads(s, k, count, dims.group_size, nearest=coarse)
        for (s, k), count in zip(pairs, head_counts, strict=True)
    ]
    channel_ratio = target_ratio
    if coarse:
        heads_removed = 1.0 - sum(len(h) for h in heads) / (dims.num_heads * dims.num_layers)
        channel_ratio = compensating_channel_ratio(target_ratio, heads_removed)
    # compensating: keep rounded down, so the mean of the two shares is never under the target
    # (a device just under it would stay a laggard of the catch-up rounds)
    channel_counts = _keep_counts(
        channel_units, dims.intermediate_size, channel_ratio, mode, at_least=coarse
    )
    layers = []
    for idx, (_, layer_kept) in enumerate(pairs):
        channels = _top_indices(layer_kept.channels, channel_units[idx], channel_counts[idx])
        layers.append(LayerKept(heads[idx], kv_heads_of(heads[idx], dims.group_size), channels))
    return KeptIndices(family=kept.family, dims=dims, layers=tuple(layers))


def compensating_channel_ratio(target_ratio: float, heads_removed: float) -> float:
    """Pure: the channel share whose mean with `heads_removed` is `target_ratio` (<= 0.99)."""
    return min(0.99, max(0.0, 2.0 * target_ratio - heads_removed))


def prune_step(
    model: nn.Module,
    adapter: FamilyAdapter,
    scores: ModelScores,
    kept: KeptIndices,
    target_ratio: float,
    mode: str = "uniform",
) -> KeptIndices:
    """Select the groups to keep and slice `model` (peft-wrapped or not) in place to them.

    Returns the new kept map (the same object when nothing changes). Rebuild the optimizer
    afterwards: the sliced LoRA factors are new parameters.
    """
    new_kept = select_groups_to_keep(scores, kept, target_ratio, mode)
    if new_kept == kept:
        return kept
    apply_kept_(model, adapter, kept, new_kept)
    return new_kept


def _head_unit_scores(scores: LayerScores, kept: LayerKept, group_size: int) -> torch.Tensor:
    """Per kept query head: its q/o score plus its share of its kv head's k/v score."""
    per_group = len(kept.heads) // len(kept.kv_heads)
    kv_share = scores.kv_heads[[h // group_size for h in kept.heads]] / per_group
    return scores.heads[list(kept.heads)] + kv_share


def normalise_per_layer(values: torch.Tensor) -> torch.Tensor:
    """Scores divided by their layer mean, so layers of different scale compare (all-zero -> 1)."""
    mean = values.mean()
    return torch.ones_like(values) if mean <= 0 else values / mean


def _keep_counts(
    units: list[torch.Tensor], full_width: int, ratio: float, mode: str, at_least: bool = False
) -> list[int]:
    """Kept units per layer for `ratio` removed; `at_least`: remove at least that share."""
    current = [len(u) for u in units]
    keep = (lambda x: math.floor(x + 1e-9)) if at_least else round
    if mode == "uniform":
        target = max(1, keep(full_width * (1.0 - ratio)))
        return [min(target, n) for n in current]
    budget = keep(full_width * len(units) * (1.0 - ratio))
    budget = min(sum(current), max(len(units), budget))
    counts = [1] * len(units)  # the floor: each layer's best unit is reserved
    rest = []
    for layer_idx, values in enumerate(units):
        order = torch.sort(normalise_per_layer(values), descending=True, stable=True)
        rest.extend((float(v), layer_idx) for v in order.values[1:])
    rest.sort(key=lambda item: -item[0])
    for _, layer_idx in rest[: budget - len(units)]:
        counts[layer_idx] += 1
    return counts


def _top_indices(indices: tuple[int, ...], values: torch.Tensor, count: int) -> tuple[int, ...]:
    order = torch.sort(values, descending=True, stable=True).indices[:count]
    return tuple(sorted(indices[i] for i in order.tolist()))


def _select_heads(
    scores: LayerScores, kept: LayerKept, count: int, group_size: int, nearest: bool = False
) -> tuple[int, ...]:
    """Best valid head set of about `count` query heads (the GQA rule in kept.py).

    Tries every (kept kv groups, query heads per group) pair. By default the product must fit
    under `count` and the largest wins; with `nearest` the product closest to `count` wins
    (ties: the larger). Among equal products, the highest retained score.
    """
    groups = {kv: [h for h in kept.heads if h // group_size == kv] for kv in kept.kv_heads}
    per_group_now = len(kept.heads) // len(kept.kv_heads)
    best_key, best_heads = None, kept.heads
    for per_group in range(1, per_group_now + 1):
        group_choices = []
        for kv, members in groups.items():
            member_scores = scores.heads[members]
            top = _top_indices(tuple(members), member_scores, per_group)
            value = float(scores.kv_heads[kv]) + float(scores.heads[list(top)].sum())
            group_choices.append((value, top))
        group_choices.sort(key=lambda item: -item[0])
        candidates = {min(len(groups), count // per_group)}
        if nearest:
            candidates.add(min(len(groups), -(-count // per_group)))
        for n_groups in candidates:
            if n_groups == 0:
                continue
            chosen = group_choices[:n_groups]
            product = n_groups * per_group
            fit = -abs(product - count) if nearest else 0
            key = (fit, product, sum(value for value, _ in chosen))
            if best_key is None or key > best_key:
                best_key = key
                best_heads = tuple(sorted(h for _, top in chosen for h in top))
    return best_heads
