"""Structured pruning of heads and FFN channels: groups, importance, selection, slicing, export.

Flow on a device: `KeptIndices.full` -> `build_pruned_model(base, kept)` -> wrap with peft ->
train, calling `LoraTaylorImportance.update` after each backward -> every K steps
`prune_step(model, adapter, importance.scores, kept, ratio)` -> `export_pruned` at the end.
"""

from fedspine.pruning.export import export_pruned, is_stock_loadable, load_pruned
from fedspine.pruning.groups import module_kept_indices
from fedspine.pruning.importance import (
    LayerScores,
    LoraTaylorImportance,
    ModelScores,
    group_scores,
    lora_gradient_estimate,
    magnitude_importance,
    merged_weight,
    taylor_importance,
)
from fedspine.pruning.kept import KeptIndices, LayerKept
from fedspine.pruning.selection import (
    SELECTION_MODES,
    normalise_per_layer,
    prune_step,
    select_groups_to_keep,
)
from fedspine.pruning.slicing import apply_kept_, build_pruned_model, pruned_config, slice_linear_
from fedspine.pruning.sparsity import count_parameters, sparsity_report

__all__ = [
    "SELECTION_MODES",
    "KeptIndices",
    "LayerKept",
    "LayerScores",
    "LoraTaylorImportance",
    "ModelScores",
    "apply_kept_",
    "build_pruned_model",
    "count_parameters",
    "export_pruned",
    "group_scores",
    "is_stock_loadable",
    "load_pruned",
    "lora_gradient_estimate",
    "magnitude_importance",
    "merged_weight",
    "module_kept_indices",
    "normalise_per_layer",
    "prune_step",
    "pruned_config",
    "select_groups_to_keep",
    "slice_linear_",
    "sparsity_report",
    "taylor_importance",
]
