"""How much a kept-index map removes: structures (heads, channels) and parameters.

Parameter counts come from the real module shapes: the full config is instantiated on the
`meta` device (no memory, no weights) and sliced with the same code as a device model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from fedspine.models.families import adapter_for
from fedspine.pruning.kept import KeptIndices
from fedspine.pruning.slicing import apply_kept_


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts and bytes of a plain model; embeddings = every nn.Embedding's weights."""
    seen: set[int] = set()
    totals = {"params": 0, "param_bytes": 0, "embedding_params": 0, "embedding_param_bytes": 0}
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size, nbytes = param.numel(), param.numel() * param.element_size()
        totals["params"] += size
        totals["param_bytes"] += nbytes
        if id(param) in embedding_ids:
            totals["embedding_params"] += size
            totals["embedding_param_bytes"] += nbytes
    totals["non_embedding_params"] = totals["params"] - totals["embedding_params"]
    totals["non_embedding_param_bytes"] = totals["param_bytes"] - totals["embedding_param_bytes"]
    return totals


def meta_model(config: PretrainedConfig) -> nn.Module:
    """The classification model of `config` with shapes only (no storage)."""
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def sparsity_report(kept: KeptIndices, full_config: PretrainedConfig) -> dict[str, float | int]:
    """Shares removed relative to the full model described by `full_config`.

    ``structures_removed`` is the mean of the head and channel shares (each kind weighs the
    same whatever its count); ``params_removed`` counts every parameter of the classification
    model, ``non_embedding_params_removed`` excludes the embedding tables.
    """
    adapter = adapter_for(full_config)
    model = meta_model(full_config)
    full_counts = count_parameters(model)
    apply_kept_(model, adapter, KeptIndices.full(adapter, full_config), kept)
    pruned_counts = count_parameters(model)
    dims = kept.dims
    kept_heads = sum(len(k.heads) for k in kept.layers)
    kept_kv = sum(len(k.kv_heads) for k in kept.layers)
    kept_channels = sum(len(k.channels) for k in kept.layers)
    heads_removed = 1.0 - kept_heads / (dims.num_heads * dims.num_layers)
    channels_removed = 1.0 - kept_channels / (dims.intermediate_size * dims.num_layers)
    return {
        "heads_removed": heads_removed,
        "kv_heads_removed": 1.0 - kept_kv / (dims.num_kv_heads * dims.num_layers),
        "channels_removed": channels_removed,
        "structures_removed": (heads_removed + channels_removed) / 2.0,
        "params_removed": 1.0 - pruned_counts["params"] / full_counts["params"],
        "non_embedding_params_removed": 1.0
        - pruned_counts["non_embedding_params"] / full_counts["non_embedding_params"],
        "params": pruned_counts["params"],
        "params_full": full_counts["params"],
        "non_embedding_params": pruned_counts["non_embedding_params"],
        "non_embedding_params_full": full_counts["non_embedding_params"],
    }
