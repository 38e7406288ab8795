"""Checks of an arrived reply before anything from it touches the global state.

A device can send garbage (a bug, a bit flip, a diverged run, a hostile client): wrong module
names, factors of the wrong shape for the structure it claims, non-finite values, a kept map
that grew back or belongs to another model. `uplink_problem` names the first problem found, or
returns None; the server then marks the reply `rejected` and aggregates nothing from it.
Pure: no Flower, no model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from fedspine.lora.factors import LoraFactors
from fedspine.protocol import Uplink
from fedspine.pruning.kept import KeptIndices

Coordinates = Callable[[KeptIndices], tuple[dict, dict]]


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def kept_problem(new: object, old: KeptIndices) -> str | None:
    """A kept map must be of the same model and a subset of what the device had."""
    if not isinstance(new, KeptIndices):
        return "no kept map in the reply"
    if new.family != old.family or new.dims != old.dims:
        return "the kept map describes another model"
    for idx, (before, after) in enumerate(zip(old.layers, new.layers, strict=True)):
        for kind in ("heads", "kv_heads", "channels"):
            if not set(getattr(after, kind)) <= set(getattr(before, kind)):
                return f"layer {idx} {kind} grew back (pruning is monotone)"
    return None


def factors_problem(
    factors: Mapping[str, LoraFactors],
    global_factors: Mapping[str, LoraFactors],
    rows: Mapping[str, torch.Tensor | None],
    cols: Mapping[str, torch.Tensor | None],
    max_rank: int,
    a_only: bool = False,
) -> str | None:
    """Factors must cover the global modules, fit the claimed structure and be finite;
    `a_only` (FedSA-LoRA): A alone, B must stay on the device."""
    if set(factors) != set(global_factors):
        missing = sorted(set(global_factors) - set(factors))[:2]
        extra = sorted(set(factors) - set(global_factors))[:2]
        return f"LoRA modules differ from the global ones (missing {missing}, unknown {extra})"
    for name, pair in factors.items():
        full = global_factors[name]
        row, col = rows.get(name), cols.get(name)
        out_w = full.B.shape[0] if row is None else len(row)
        in_w = full.A.shape[1] if col is None else len(col)
        if a_only != (pair.B is None):
            return f"{name}: " + ("B must stay on the device" if a_only else "no LoRA B")
        if pair.A.dim() != 2 or (pair.B is not None and pair.B.dim() != 2):
            return f"{name}: LoRA factors must be matrices"
        rank = pair.A.shape[0]
        b_shape = (out_w, rank) if pair.B is None else tuple(pair.B.shape)
        if tuple(pair.A.shape) != (rank, in_w) or b_shape != (out_w, rank):
            return (
                f"{name}: factors A {tuple(pair.A.shape)}, B {tuple(pair.B.shape)} do not fit "
                f"its kept structure (A ({rank}, {in_w}), B ({out_w}, {rank}))"
            )
        if not 1 <= rank <= max_rank:
            return f"{name}: rank {rank} outside 1..{max_rank}"
        if not (_finite(pair.A) and (pair.B is None or _finite(pair.B))):
            return f"{name}: non-finite LoRA values"
    return None


def head_problem(
    head: Mapping[str, torch.Tensor], global_head: Mapping[str, torch.Tensor]
) -> str | None:
    if set(head) != set(global_head):
        return "head tensors differ from the global head's"
    for key, tensor in head.items():
        expected = tuple(global_head[key].shape)
        if tuple(tensor.shape) != expected:
            return f"head {key}: shape {tuple(tensor.shape)}, expected {expected}"
        if not _finite(tensor):
            return f"head {key}: non-finite values"
    return None


def uplink_problem(
    uplink: Uplink,
    old_kept: KeptIndices,
    global_factors: Mapping[str, LoraFactors],
    global_head: Mapping[str, torch.Tensor],
    coordinates: Coordinates,
    sent_rank: int,
    a_only: bool = False,
) -> str | None:
    """The first reason not to aggregate this successful reply, or None when it is sound."""
    report = uplink.report
    if report.num_examples < 1:
        return f"num_examples {report.num_examples} (the aggregation weight) must be >= 1"
    numbers = (report.time_s, report.compute_s, report.sparsity)
    if not all(math.isfinite(v) and v >= 0 for v in numbers) or report.sparsity > 1:
        return "time or sparsity out of range"
    problem = kept_problem(uplink.kept, old_kept)
    if problem:
        return problem
    rows, cols = coordinates(uplink.kept)
    problem = factors_problem(uplink.factors, global_factors, rows, cols, sent_rank, a_only)
    if problem:
        return problem
    problem = head_problem(uplink.head, global_head)
    if problem:
        return problem
    if uplink.scores is not None:
        return scores_problem(uplink.scores, old_kept)
    return None


def scores_problem(scores, kept: KeptIndices) -> str | None:
    """Importance scores are full-length per layer and finite."""
    dims = kept.dims
    if len(scores) != dims.num_layers:
        return f"importance scores cover {len(scores)} layers, the model has {dims.num_layers}"
    sizes = (dims.num_heads, dims.num_kv_heads, dims.intermediate_size)
    for layer in scores:
        tensors = (layer.heads, layer.kv_heads, layer.channels)
        if tuple(len(t) for t in tensors) != sizes:
            return "importance scores of the wrong length"
        if not all(_finite(t) for t in tensors):
            return "non-finite importance scores"
    return None
