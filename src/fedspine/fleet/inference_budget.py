"""Per-device inference budgets: the least sparsity at which a device's deployed model fits it.

In `pruning.target = "budget"` mode every device has a latency budget for one request (batch 1,
`data.max_seq_len` tokens) and optionally a memory ceiling for the deployed model's weights.
The device sets its own final target: the least sparsity whose modelled latency on its own
hardware (forward FLOPs / its throughput) and whose weights fit the budget, never above
`pruning.budget_max_sparsity`. The server only hears the target, never the hardware.

The cost curve (forward FLOPs and weight bytes per sparsity) depends on the model alone: it is
computed once per process on a `meta` copy (shapes only), sliced by the same selection code as
a device model, so the GQA rule and the channel compensation are respected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from fedspine.fleet.cost import forward_flops
from fedspine.models.families import adapter_for
from fedspine.pruning.importance import LayerScores
from fedspine.pruning.kept import KeptIndices
from fedspine.pruning.selection import select_groups_to_keep
from fedspine.pruning.slicing import apply_kept_
from fedspine.pruning.sparsity import count_parameters
from fedspine.pruning.sparsity import meta_model as meta_classifier

GRID_STEP = 0.025  # targets are multiples of this (structure counts round anyway)


def meta_model(full_config, causal: bool = False):
    """Shapes only: the deployed classifier, or the causal LM with its vocabulary projection."""
    if not causal:
        return meta_classifier(full_config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(full_config)


@dataclass(frozen=True)
class CostPoint:
    """The deployed model at one uniform sparsity: one request's FLOPs and its weights."""

    sparsity: float
    forward_flops: float
    weight_bytes: int


@dataclass(frozen=True)
class BudgetFit:
    """A device's own answer to its budget."""

    target_sparsity: float  # least sparsity that fits (or the cap when nothing does)
    latency_ms: float  # modelled at that sparsity on the device
    weight_mb: float
    meets: bool


def cost_curve(
    full_config, seq_len: int, max_sparsity: float, causal: bool = False
) -> tuple[CostPoint, ...]:
    """Forward FLOPs (batch 1, `seq_len` tokens) and weight bytes at each grid sparsity."""
    adapter = adapter_for(full_config)
    full = KeptIndices.full(adapter, full_config)
    dims = full.dims
    flat = tuple(
        LayerScores(
            torch.arange(dims.num_heads, 0, -1, dtype=torch.float32),
            torch.arange(dims.num_kv_heads, 0, -1, dtype=torch.float32),
            torch.arange(dims.intermediate_size, 0, -1, dtype=torch.float32),
        )
        for _ in range(dims.num_layers)
    )
    points = []
    steps = int(round(max_sparsity / GRID_STEP))
    for step in range(steps + 1):
        sparsity = round(step * GRID_STEP, 6)
        model = _deployed(full_config, select_groups_to_keep(flat, full, sparsity), causal)
        weights = count_parameters(model)["param_bytes"]
        points.append(CostPoint(sparsity, forward_flops(model, 1, seq_len), weights))
    return tuple(points)


def latency_ms(point: CostPoint, flops_per_s: float) -> float:
    return 1e3 * point.forward_flops / flops_per_s


def fit_budget(
    curve: tuple[CostPoint, ...], flops_per_s: float, budget_ms: float, memory_mb: float = 0.0
) -> BudgetFit:
    """Pure: the least sparsity of `curve` that meets the latency (and memory, when > 0)."""
    for point in curve:
        lat, mb = latency_ms(point, flops_per_s), point.weight_bytes / 2**20
        if (budget_ms <= 0 or lat <= budget_ms) and (memory_mb <= 0 or mb <= memory_mb):
            return BudgetFit(point.sparsity, lat, mb, True)
    last = curve[-1]
    return BudgetFit(last.sparsity, latency_ms(last, flops_per_s), last.weight_bytes / 2**20, False)


def calibrated_budget_ms(
    curve: tuple[CostPoint, ...], flops_per_s: float, sparsity: float
) -> float:
    """The latency a device of `flops_per_s` has at `sparsity`: the default budget is the
    weakest tier's nominal device at the run's target sparsity (so it meets it there)."""
    point = min(curve, key=lambda p: abs(p.sparsity - sparsity))
    return latency_ms(point, flops_per_s)


def deployed_latency_ms(
    full_config, kept: KeptIndices, seq_len: int, flops_per_s: float, causal: bool = False
) -> float:
    """Modelled request latency of the deployed (LoRA-merged) model with structure `kept`."""
    model = _deployed(full_config, kept, causal)
    return 1e3 * forward_flops(model, 1, seq_len) / flops_per_s


def _deployed(full_config, kept: KeptIndices, causal: bool):
    """A shapes-only copy of the deployed model with structure `kept`."""
    adapter = adapter_for(full_config)
    model = meta_model(full_config, causal)
    apply_kept_(model, adapter, KeptIndices.full(adapter, full_config), kept)
    return model
