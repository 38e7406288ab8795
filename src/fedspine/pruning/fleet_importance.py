"""Fleet-wide importance: the server pools the devices' smoothed group scores [our choice].

Why: with 80 devices and a few picked per round, most devices prune only once or twice, after
a handful of local steps; an EMA started from zero on a few batches of one device's non-IID data
is a noisy ranking, and devices that rank differently keep different structures, so the global
LoRA is averaged over few devices per coordinate. Pooling fixes both: each device uploads its
EMA (a few KB: one score per head and channel), the server keeps a scale-free, example-weighted
mean over the devices that scored each structure, and a device starts its local EMA from that
prior (rescaled to its own gradients' magnitude), so local evidence refines a fleet consensus.
The paper prunes from local scores only; `pruning.share_importance = false` restores that.

Pure functions on `ModelScores` (full-length, original coordinates); no Flower, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedspine.pruning.importance import KINDS, LayerScores, ModelScores, masked_mean
from fedspine.pruning.kept import KeptIndices, kept_masks


def normalise_scores(scores: ModelScores, kept: KeptIndices) -> ModelScores:
    """Each layer's scores of each kind divided by their mean over the kept structures.

    Gradient magnitudes differ across devices and rounds; only the ranking inside a layer
    matters for selection, so pooling averages shapes, not scales. An all-zero layer becomes 1.
    """
    out = []
    for layer, masks in zip(scores, kept_masks(kept), strict=True):
        parts = {}
        for kind in KINDS:
            values = getattr(layer, kind).float()
            mean = masked_mean(values, masks[kind])
            parts[kind] = values / mean if mean > 0 else torch.ones_like(values)
        out.append(LayerScores(**parts))
    return tuple(out)


@dataclass(frozen=True)
class ScoreReport:
    """One device's smoothed scores and the structures it scored (its kept map at round start)."""

    scores: ModelScores
    kept: KeptIndices
    weight: float  # examples the device trained on this round


def pool_scores(
    previous: ModelScores | None, reports: Sequence[ScoreReport], momentum: float
) -> ModelScores | None:
    """The fleet prior after one round: masked, weighted mean of the normalised reports, blended
    with the previous prior (`momentum` of the old value) where both exist.

    A structure no reporting device still had keeps its previous value (or 1 if it has none).
    """
    if not reports:
        return previous
    layers = len(reports[0].scores)
    normalised = [
        (normalise_scores(r.scores, r.kept), kept_masks(r.kept), r.weight) for r in reports
    ]
    pooled = []
    for idx in range(layers):
        parts = {}
        for kind in KINDS:
            num = sum(w * getattr(s[idx], kind) * m[idx][kind] for s, m, w in normalised)
            den = sum(w * m[idx][kind] for _, m, w in normalised)
            seen = den > 0
            fresh = torch.where(seen, num / den.clamp_min(1e-12), torch.ones_like(den))
            if previous is not None:
                old = getattr(previous[idx], kind)
                fresh = torch.where(seen, momentum * old + (1 - momentum) * fresh, old)
            parts[kind] = fresh
        pooled.append(LayerScores(**parts))
    return tuple(pooled)


def scores_to_tensors(scores: ModelScores) -> dict[str, torch.Tensor]:
    """Flat `{"<layer>.<kind>": tensor}` for messages and node state."""
    return {
        f"{i}.{kind}": getattr(layer, kind).contiguous()
        for i, layer in enumerate(scores)
        for kind in KINDS
    }


def tensors_to_scores(flat: dict[str, torch.Tensor]) -> ModelScores | None:
    """Inverse of `scores_to_tensors`; an empty dict is None (no scores)."""
    if not flat:
        return None
    layers = len(flat) // len(KINDS)
    return tuple(
        LayerScores(**{kind: flat[f"{i}.{kind}"] for kind in KINDS}) for i in range(layers)
    )
