"""Physical slicing: shrink projections (base weight, bias, LoRA A/B), attention attributes and
config so a model matches a kept-index map.

`apply_kept_` works in place on a transformers model or a peft-wrapped one. Sliced tensors are
new tensors; `requires_grad` is copied, so only the LoRA factors (and the task head) stay
trainable. Gradients and optimizer state of sliced parameters are dropped: build a new optimizer
after a pruning step.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from fedspine.errors import ModelError
from fedspine.models.families import PRUNED_WIDTHS_FIELD, FamilyAdapter, adapter_for, unwrap_peft
from fedspine.pruning.groups import role_axes, structure_index
from fedspine.pruning.kept import KeptIndices, relative_positions


def slice_linear_(module: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Keep output `rows` and input `cols` (current coordinates; None = all) of a Linear.

    For a peft LoRA Linear, B keeps the same rows and A the same columns, so the merged weight
    of the sliced layer equals the sliced merged weight.
    """
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    if not isinstance(base, nn.Linear):
        raise ModelError(f"cannot slice {type(base).__name__}: only Linear projections are pruned")
    _replace_param(base, "weight", rows, cols)
    if base.bias is not None and rows is not None:
        _replace_param(base, "bias", rows, None)
    base.out_features, base.in_features = base.weight.shape
    if not isinstance(module, LoraLayer):
        return
    for name in module.lora_A:
        if module.use_dora.get(name, False):
            raise ModelError("DoRA adapters cannot be pruned; use plain LoRA (use_dora=False)")
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        if cols is not None:
            _replace_param(lora_a, "weight", None, cols)
            lora_a.in_features = lora_a.weight.shape[1]
        if rows is not None:
            _replace_param(lora_b, "weight", rows, None)
            if lora_b.bias is not None:
                _replace_param(lora_b, "bias", rows, None)
            lora_b.out_features = lora_b.weight.shape[0]
    module.out_features, module.in_features = base.out_features, base.in_features


def _replace_param(
    module: nn.Module, name: str, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> None:
    old = getattr(module, name)
    data = old.data
    if rows is not None:
        data = data.index_select(0, rows.to(data.device))
    if cols is not None:
        data = data.index_select(1, cols.to(data.device))
    setattr(module, name, nn.Parameter(data.contiguous(), requires_grad=old.requires_grad))


def apply_kept_(
    model: nn.Module, adapter: FamilyAdapter, old: KeptIndices, new: KeptIndices
) -> None:
    """Slice `model` (currently shaped like `old`) in place down to `new` (a subset of `old`)."""
    if old.dims != new.dims or old.family != new.family:
        raise ModelError("kept-index maps describe different models")
    for layer_idx, layer in enumerate(adapter.layer_modules(model)):
        for role, path in adapter.projection_paths().items():
            row_kind, col_kind = role_axes(role)
            rows = _relative_index(old, new, layer_idx, row_kind)
            cols = _relative_index(old, new, layer_idx, col_kind)
            if rows is not None or cols is not None:
                slice_linear_(layer.get_submodule(path), rows, cols)
        kept_layer = new.layers[layer_idx]
        adapter.set_attention_widths(
            layer.get_submodule(adapter.attention_path),
            len(kept_layer.heads),
            len(kept_layer.kv_heads),
        )
    _replace_config(unwrap_peft(model), adapter, new)


def _relative_index(
    old: KeptIndices, new: KeptIndices, layer_idx: int, kind: str | None
) -> torch.Tensor | None:
    if kind is None:
        return None
    old_index = structure_index(old, layer_idx, kind)
    new_index = structure_index(new, layer_idx, kind)
    if new_index.numel() == old_index.numel():
        if not torch.equal(new_index, old_index):
            raise ModelError("pruning is monotone: the new kept map is not a subset of the old one")
        return None
    return relative_positions(new_index, old_index)


def pruned_config(config, adapter: FamilyAdapter, kept: KeptIndices):
    """A copy of `config` describing the pruned widths.

    Uniform widths go into the stock fields (num_attention_heads, num_key_value_heads,
    intermediate_size, explicit head_dim for decoders); non-uniform models keep the full widths
    there. Either way `fedspine_layer_widths` lists the real per-layer widths.
    """
    new = copy.deepcopy(config)
    dims = kept.dims
    if kept.is_uniform:
        widths = kept.layer_widths()[0]
        adapter.set_config_widths(
            new, dims, widths["heads"], widths["kv_heads"], widths["channels"]
        )
    else:
        adapter.set_config_widths(
            new, dims, dims.num_heads, dims.num_kv_heads, dims.intermediate_size
        )
    if kept.is_full:
        new.__dict__.pop(PRUNED_WIDTHS_FIELD, None)
    else:
        setattr(new, PRUNED_WIDTHS_FIELD, kept.layer_widths())
    return new


def _replace_config(hf_model: nn.Module, adapter: FamilyAdapter, kept: KeptIndices) -> None:
    """Give the model (and every submodule sharing its config) an edited copy of the config."""
    old = hf_model.config
    new = pruned_config(old, adapter, kept)
    for module in hf_model.modules():
        if module.__dict__.get("config") is old:
            module.config = new


def build_pruned_model(base_model: nn.Module, kept: KeptIndices) -> nn.Module:
    """A device's pruned model from the shared, unpruned base, leaving the base untouched.

    The module tree is deep-copied while every parameter and buffer is *shared* (a memo maps
    each base tensor to a new Parameter over the same storage); then the pruned projections are
    sliced into new tensors. Unpruned tensors (embeddings, norms, head, unpruned layers) stay
    shared with the base, so never merge LoRA into this model in place (peft's merge_and_unload
    does): export with `fedspine.pruning.export_pruned`, which merges into a copy.
    """
    if callable(getattr(base_model, "get_base_model", None)):
        raise ModelError("build_pruned_model takes the plain transformers base, not a peft model")
    adapter = adapter_for(base_model)
    full = KeptIndices.full(adapter, base_model.config)
    memo: dict[int, object] = {}
    for param in base_model.parameters():
        memo[id(param)] = nn.Parameter(param.data, requires_grad=param.requires_grad)
    for buffer in base_model.buffers():
        memo[id(buffer)] = buffer
    model = copy.deepcopy(base_model, memo)
    apply_kept_(model, adapter, full, kept)
    return model
