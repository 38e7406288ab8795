"""Kept-index maps: validation of the layer rules, JSON round trip, module index map."""

import json

import pytest
import torch

from fedspine.errors import ModelError
from fedspine.models.families import FullDims, adapter_for, tiny_config
from fedspine.pruning import KeptIndices, LayerKept, module_kept_indices

torch.set_num_threads(1)
GQA_DIMS = FullDims(
    num_layers=2, num_heads=8, num_kv_heads=2, head_dim=4, intermediate_size=16, hidden_size=32
)


def _layer(heads, kv_heads, channels=(0, 3, 5)):
    return LayerKept(tuple(heads), tuple(kv_heads), tuple(channels))


def test_full_map_keeps_everything():
    adapter = adapter_for(tiny_config("llama"))
    kept = KeptIndices.full(adapter, tiny_config("llama"))
    assert kept.is_full and kept.is_uniform
    assert kept.layer_widths() == [{"heads": 4, "kv_heads": 2, "channels": 64}] * 2


def test_json_round_trip():
    kept = KeptIndices(
        "llama", GQA_DIMS, (_layer([0, 1, 4, 5], [0, 1]), _layer([2, 3], [0], (1, 2, 15)))
    )
    restored = KeptIndices.from_dict(json.loads(json.dumps(kept.to_dict())))
    assert restored == kept
    assert not restored.is_uniform


def test_malformed_dict_raises_model_error():
    with pytest.raises(ModelError, match="Malformed"):
        KeptIndices.from_dict({"family": "bert", "layers": []})


@pytest.mark.parametrize(
    ("heads", "kv_heads", "channels", "message"),
    [
        ([], [], (0,), "no heads"),
        ([0, 1], [0], (), "no channels"),
        ([1, 0], [0], (0,), "sorted"),
        ([0, 1], [0, 1], (0,), "do not match"),
        ([0, 1, 4], [0, 1], (0,), "same number"),
        ([0, 1], [0], (16,), "channels"),
    ],
)
def test_invalid_layers_are_rejected(heads, kv_heads, channels, message):
    with pytest.raises(ModelError, match=message):
        KeptIndices("llama", GQA_DIMS, (_layer(heads, kv_heads, channels),) * 2)


def test_head_rows_expand_by_head_dim():
    kept = KeptIndices("llama", GQA_DIMS, (_layer([0, 1, 4, 5], [0, 1]),) * 2)
    assert kept.head_rows(0).tolist()[:8] == list(range(8))
    assert kept.head_rows(0).tolist()[8:] == list(range(16, 24))
    assert kept.kv_rows(0).tolist() == list(range(8))


def test_module_kept_indices_full_coordinates():
    config = tiny_config("llama")
    adapter = adapter_for(config)
    dims = adapter.full_dims(config)  # 4 heads of 8 on 2 kv heads, 64 channels
    layer0 = LayerKept((0, 2), (0, 1), tuple(range(0, 64, 2)))
    kept = KeptIndices("llama", dims, (layer0, KeptIndices.full(adapter, config).layers[1]))
    index = module_kept_indices(adapter, kept)
    q_rows, q_cols = index["model.layers.0.self_attn.q_proj"]
    assert q_cols is None and q_rows.tolist() == list(range(8)) + list(range(16, 24))
    k_rows, _ = index["model.layers.0.self_attn.k_proj"]
    assert k_rows is None  # both kv heads still needed
    o_rows, o_cols = index["model.layers.0.self_attn.o_proj"]
    assert o_rows is None and torch.equal(o_cols, q_rows)
    for name in ("mlp.gate_proj", "mlp.up_proj"):
        rows, cols = index[f"model.layers.0.{name}"]
        assert rows.tolist() == list(range(0, 64, 2)) and cols is None
    assert index["model.layers.0.mlp.down_proj"][1].tolist() == list(range(0, 64, 2))
    assert all(v == (None, None) for k, v in index.items() if k.startswith("model.layers.1."))


def test_structure_keys_are_equal_exactly_for_equal_structures():
    from fedspine.pruning.kept import structure_keys

    full = KeptIndices("llama", GQA_DIMS, (_layer(range(8), [0, 1], range(16)),) * 2)
    pruned = KeptIndices(
        "llama", GQA_DIMS, (_layer([0, 1, 4, 5], [0, 1]), _layer([2, 3], [0], (1, 2, 15)))
    )
    again = KeptIndices.from_dict(pruned.to_dict())  # equal, another object
    keys = structure_keys([full, pruned, full, again])
    assert keys[0] == keys[2] and keys[1] == keys[3] and keys[0] != keys[1]
