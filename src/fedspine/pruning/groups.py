"""Dependency groups: which rows / columns of which projection belong to a head or a channel.

A head group is the q rows of one query head plus the matching o columns (and, for its kv head,
the k and v rows); a channel group is the ffn_in rows (BERT intermediate, LLaMA gate + up) plus
the ffn_out column. Everything here is in ORIGINAL coordinates.
"""

from __future__ import annotations

import torch

from fedspine.models.families import FamilyAdapter
from fedspine.pruning.kept import KeptIndices

# Which structure indexes a projection's output rows and input columns (None = not pruned).
_ROLE_AXES: dict[str, tuple[str | None, str | None]] = {
    "q": ("heads", None),
    "k": ("kv_heads", None),
    "v": ("kv_heads", None),
    "o": (None, "heads"),
    "ffn_out": (None, "channels"),
}


def role_axes(role: str) -> tuple[str | None, str | None]:
    """(row kind, column kind) of a projection role ('ffn_in0', 'ffn_in1' are row-sliced)."""
    return ("channels", None) if role.startswith("ffn_in") else _ROLE_AXES[role]


def structure_index(kept: KeptIndices, layer_idx: int, kind: str) -> torch.Tensor:
    """Kept row/column indices of one structure kind, expanded to tensor rows (head_dim each)."""
    if kind == "heads":
        return kept.head_rows(layer_idx)
    if kind == "kv_heads":
        return kept.kv_rows(layer_idx)
    return kept.channel_index(layer_idx)


def structure_full_size(kept: KeptIndices, kind: str) -> int:
    dims = kept.dims
    sizes = {
        "heads": dims.num_heads * dims.head_dim,
        "kv_heads": dims.num_kv_heads * dims.head_dim,
        "channels": dims.intermediate_size,
    }
    return sizes[kind]


def _index_or_none(kept: KeptIndices, layer_idx: int, kind: str | None) -> torch.Tensor | None:
    if kind is None:
        return None
    index = structure_index(kept, layer_idx, kind)
    return None if index.numel() == structure_full_size(kept, kind) else index


def module_kept_indices(
    adapter: FamilyAdapter, kept: KeptIndices
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """For every LoRA target projection: (kept output rows, kept input columns), full coordinates.

    Keys are module names in the classification model (peft state-dict keys are
    ``base_model.model.<key>.lora_A.weight``); None means that axis is not pruned. A device's
    LoRA B (out x r) holds the rows listed, its A (r x in) the columns listed, so
    ``full_delta[rows][:, cols] = s * B @ A`` scatters it back to full width.
    """
    result = {}
    for layer_idx in range(kept.dims.num_layers):
        for role, path in adapter.projection_paths().items():
            row_kind, col_kind = role_axes(role)
            result[adapter.module_name(layer_idx, path)] = (
                _index_or_none(kept, layer_idx, row_kind),
                _index_or_none(kept, layer_idx, col_kind),
            )
    for name in adapter.unpruned_lora_names():
        result[name] = (None, None)
    return result
