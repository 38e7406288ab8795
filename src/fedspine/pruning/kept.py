"""Kept-index maps: which heads and FFN channels of every layer survive, in ORIGINAL coordinates.

A device's pruned model is fully described by the shared base plus its `KeptIndices`; the
server uses the same map to scatter the device's LoRA back to full width.

Grouped-query attention constraint (stock transformers attention maps query head j to kv head
``j // num_key_value_groups``, one integer for the whole layer): a layer stays valid only if
every kept kv head keeps the SAME number of its own query heads (>= 1). A kv head is dropped
exactly when all query heads of its group are dropped. Without GQA (group size 1) this is no
constraint at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from fedspine.errors import ModelError
from fedspine.models.families import FamilyAdapter, FullDims


@dataclass(frozen=True)
class LayerKept:
    """Kept query heads, kv heads and FFN channels of one layer (sorted, original indices)."""

    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]


@dataclass(frozen=True)
class KeptIndices:
    """Per-layer kept structures of one pruned model plus the full widths they index into."""

    family: str
    dims: FullDims
    layers: tuple[LayerKept, ...]

    def __post_init__(self) -> None:
        if len(self.layers) != self.dims.num_layers:
            raise ModelError(
                f"kept map has {len(self.layers)} layers, model has {self.dims.num_layers}"
            )
        for idx, layer in enumerate(self.layers):
            _validate_layer(idx, layer, self.dims)

    @classmethod
    def full(cls, adapter: FamilyAdapter, config) -> KeptIndices:
        """The map of an unpruned model (everything kept)."""
        dims = adapter.full_dims(config)
        layer = LayerKept(
            heads=tuple(range(dims.num_heads)),
            kv_heads=tuple(range(dims.num_kv_heads)),
            channels=tuple(range(dims.intermediate_size)),
        )
        return cls(family=adapter.name, dims=dims, layers=(layer,) * dims.num_layers)

    # ----- widths -----------------------------------------------------------------------------
    def layer_widths(self) -> list[dict[str, int]]:
        """Per-layer counts: what a pruned config records (fedspine_layer_widths)."""
        return [
            {"heads": len(k.heads), "kv_heads": len(k.kv_heads), "channels": len(k.channels)}
            for k in self.layers
        ]

    @property
    def is_uniform(self) -> bool:
        """Every layer has the same widths (a stock config can then describe the model)."""
        widths = self.layer_widths()
        return all(w == widths[0] for w in widths)

    @property
    def is_full(self) -> bool:
        dims = self.dims
        return all(
            len(k.heads) == dims.num_heads and len(k.channels) == dims.intermediate_size
            for k in self.layers
        )

    # ----- index tensors ------------------------------------------------------------------------
    def head_rows(self, layer_idx: int) -> torch.Tensor:
        """Row indices of the kept query heads in q (= column indices in o)."""
        return _expand_heads(self.layers[layer_idx].heads, self.dims.head_dim)

    def kv_rows(self, layer_idx: int) -> torch.Tensor:
        """Row indices of the kept kv heads in k and v."""
        return _expand_heads(self.layers[layer_idx].kv_heads, self.dims.head_dim)

    def channel_index(self, layer_idx: int) -> torch.Tensor:
        return torch.tensor(self.layers[layer_idx].channels, dtype=torch.long)

    # ----- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable form (lists of ints)."""
        return {
            "family": self.family,
            "dims": asdict(self.dims),
            "layers": [
                {"heads": list(k.heads), "kv_heads": list(k.kv_heads), "channels": list(k.channels)}
                for k in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> KeptIndices:
        try:
            dims = FullDims(**data["dims"])
            layers = tuple(
                LayerKept(
                    heads=tuple(int(h) for h in layer["heads"]),
                    kv_heads=tuple(int(h) for h in layer["kv_heads"]),
                    channels=tuple(int(c) for c in layer["channels"]),
                )
                for layer in data["layers"]
            )
            return cls(family=str(data["family"]), dims=dims, layers=layers)
        except (KeyError, TypeError) as err:
            raise ModelError(f"Malformed kept-index map ({err}); regenerate it") from err


def structure_keys(kept: list[KeptIndices]) -> list[str]:
    """One key per map, equal for equal structures. A map held by many records as one object
    (every device never sampled holds the full map) is serialised once, so a fleet of 8,000
    costs what its distinct structures cost."""
    by_object: dict[int, str] = {}
    keys = []
    for structure in kept:
        if id(structure) not in by_object:
            by_object[id(structure)] = json.dumps(structure.to_dict(), sort_keys=True)
        keys.append(by_object[id(structure)])
    return keys


def kv_heads_of(heads: tuple[int, ...], group_size: int) -> tuple[int, ...]:
    """The kv heads that the given query heads need."""
    return tuple(sorted({h // group_size for h in heads}))


def relative_positions(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Positions of the sorted `new` indices inside the sorted `old` ones (new must be a subset)."""
    positions = torch.searchsorted(old, new).clamp(max=max(len(old) - 1, 0))
    if len(old) == 0 or not torch.equal(old[positions], new):
        raise ModelError("pruning is monotone: the new kept map is not a subset of the old one")
    return positions


def _expand_heads(heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    index = torch.tensor(heads, dtype=torch.long)
    return (index[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _validate_layer(idx: int, layer: LayerKept, dims: FullDims) -> None:
    for name, values, bound in (
        ("heads", layer.heads, dims.num_heads),
        ("kv_heads", layer.kv_heads, dims.num_kv_heads),
        ("channels", layer.channels, dims.intermediate_size),
    ):
        if not values:
            raise ModelError(f"layer {idx}: no {name} kept (every layer keeps at least one)")
        if list(values) != sorted(set(values)) or values[0] < 0 or values[-1] >= bound:
            raise ModelError(f"layer {idx}: {name} must be sorted unique indices in [0, {bound})")
    group_size = dims.group_size
    if layer.kv_heads != kv_heads_of(layer.heads, group_size):
        raise ModelError(
            f"layer {idx}: kv_heads {layer.kv_heads} do not match the kept query heads"
        )
    per_group = [sum(1 for h in layer.heads if h // group_size == g) for g in layer.kv_heads]
    if len(set(per_group)) != 1:
        raise ModelError(
            f"layer {idx}: every kept kv head must keep the same number of query heads "
            f"(got {per_group}); stock attention maps query heads to kv heads uniformly"
        )


def kept_masks(kept: KeptIndices) -> tuple[dict[str, torch.Tensor], ...]:
    """Per layer, a 0/1 mask per kind: which structures the device still had (and scored)."""
    dims = kept.dims
    sizes = {"heads": dims.num_heads, "kv_heads": dims.num_kv_heads}
    sizes["channels"] = dims.intermediate_size
    masks = []
    for layer in kept.layers:
        layer_masks = {}
        for kind in ("heads", "kv_heads", "channels"):
            mask = torch.zeros(sizes[kind])
            mask[list(getattr(layer, kind))] = 1.0
            layer_masks[kind] = mask
        masks.append(layer_masks)
    return tuple(masks)
