"""Family adapters: lookup, dimensions, LoRA targets and task heads for every supported family."""

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForSequenceClassification, Gemma3Config, GPT2Config

from fedspine.errors import ModelError
from fedspine.models.families import adapter_for, supported_model_types, tiny_config
from fedspine.pruning import (
    KeptIndices,
    LayerScores,
    build_pruned_model,
    module_kept_indices,
    select_groups_to_keep,
)

torch.set_num_threads(1)
FAMILIES = ("bert", "roberta", "llama", "qwen2", "mistral", "gemma3_text")


def _model(model_type: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type))


def test_all_six_families_are_registered():
    assert set(FAMILIES) == set(supported_model_types())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_adapter_found_from_config_model_and_peft_model(model_type):
    model = _model(model_type)
    adapter = adapter_for(model.config)
    assert adapter is adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=2))
    assert adapter_for(peft_model) is adapter
    assert len(adapter.layer_modules(peft_model)) == model.config.num_hidden_layers


def test_unsupported_architecture_names_supported_families():
    with pytest.raises(ModelError) as err:
        adapter_for(GPT2Config())
    assert "gpt2" in str(err.value)
    for family in FAMILIES:
        assert family in str(err.value)


def test_multimodal_gemma3_points_to_text_model():
    with pytest.raises(ModelError, match="gemma3_text"):
        adapter_for(Gemma3Config())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lora_targets_are_exactly_the_prunable_projections(model_type):
    model = _model(model_type)
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=2))
    prefix = "base_model.model."
    with_lora = {
        name.removeprefix(prefix)
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    full = KeptIndices.full(adapter, model.config)
    per_module = module_kept_indices(adapter, full)
    assert with_lora == set(per_module)
    assert not any("classifier" in name or "score" in name for name in with_lora)
    # BERT's pooler trains through LoRA and is never sliced; nothing else outside the layers.
    outside = {name for name in with_lora if ".layer" not in name and ".layers." not in name}
    assert outside == set(adapter.unpruned_lora_names())
    assert all(per_module[name] == (None, None) for name in outside)
    assert ("bert.pooler.dense" in outside) == (model_type == "bert")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_task_head_is_fully_trainable_under_peft(model_type):
    model = _model(model_type)
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=2))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    non_lora = [n for n in trainable if "lora_" not in n]
    assert non_lora, "the task head must be trainable"
    assert all(any(head in n for head in adapter.head_module_names) for n in non_lora)
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in trainable)


@pytest.mark.parametrize("model_type", ["qwen2", "gemma3_text"])
def test_explicit_head_dim_differs_from_hidden_over_heads(model_type):
    model = _model(model_type)
    dims = adapter_for(model).full_dims(model.config)
    assert dims.head_dim == 16 != dims.hidden_size // dims.num_heads
    layer = adapter_for(model).layer_modules(model)[0]
    assert layer.self_attn.q_proj.out_features == dims.num_heads * dims.head_dim


def test_full_dims_of_grouped_query_config():
    dims = adapter_for(tiny_config("llama")).full_dims(tiny_config("llama"))
    assert (dims.num_heads, dims.num_kv_heads, dims.group_size) == (4, 2, 2)


def test_full_dims_rejects_a_pruned_config():
    model = _model("bert")
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    scores = _flat_scores(full)
    pruned = build_pruned_model(model, select_groups_to_keep(scores, full, 0.5))
    with pytest.raises(ModelError, match="already pruned"):
        adapter.full_dims(pruned.config)


def _flat_scores(kept):
    dims = kept.dims
    return tuple(
        LayerScores(
            heads=torch.arange(dims.num_heads, dtype=torch.float),
            kv_heads=torch.ones(dims.num_kv_heads),
            channels=torch.arange(dims.intermediate_size, dtype=torch.float),
        )
        for _ in range(dims.num_layers)
    )


def test_bert_pooler_lora_trains_at_the_head_learning_rate():
    """The pooler feeds the new head: its LoRA joins the head's optimizer group, nothing else."""
    from fedspine.train import make_optimizer

    model = _model("bert")
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=2))
    optimizer = make_optimizer(peft_model, 1e-3, 2e-3, 0.0, adapter.task_head_modules())
    by_lr = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    names = {id(p): n for n, p in peft_model.named_parameters()}
    head_names = {names[i] for i in by_lr[2e-3]}
    assert any("pooler.dense.lora_A" in n for n in head_names)
    assert any("classifier" in n for n in head_names)
    assert all("pooler" in n or "classifier" in n for n in head_names)
    assert not any("pooler" in names[i] for i in by_lr[1e-3])
