"""Importance: LoRA-gradient Taylor (vs true gradients, EMA, B = 0), magnitude, full Taylor."""

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification

from fedspine.errors import ModelError
from fedspine.models.families import adapter_for, tiny_config
from fedspine.pruning import (
    KeptIndices,
    LoraTaylorImportance,
    group_scores,
    magnitude_importance,
    merged_weight,
    prune_step,
    taylor_importance,
)
from fedspine.pruning.importance import lora_gradient_estimate

torch.set_num_threads(1)


def _peft(model_type: str, rank: int = 8, **overrides):
    torch.manual_seed(0)
    config = tiny_config(model_type, **overrides)
    model = AutoModelForSequenceClassification.from_config(config)
    adapter = adapter_for(model)
    peft_model = get_peft_model(model, adapter.lora_config(rank=rank)).eval()
    return peft_model, adapter, KeptIndices.full(adapter, config)


def _batch(size: int = 16, length: int = 12) -> dict:
    generator = torch.Generator().manual_seed(3)
    return {
        "input_ids": torch.randint(3, 128, (size, length), generator=generator),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort().float(), b.argsort().argsort().float()])
    return float(torch.corrcoef(ranks)[0, 1])


def _train(peft_model, steps: int = 20) -> None:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        peft_model(**_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("trained", [False, True])
def test_lora_estimate_ranks_channels_like_the_true_gradient(model_type, trained):
    peft_model, adapter, full = _peft(model_type, hidden_size=64, intermediate_size=128)
    if trained:
        _train(peft_model)
    importance = LoraTaylorImportance(adapter)
    peft_model(**_batch()).loss.backward()
    estimated = importance.update(peft_model, full)
    peft_model.zero_grad()
    true = taylor_importance(peft_model, adapter, full, [_batch()])
    correlations = [_spearman(e.channels, t.channels) for e, t in zip(estimated, true, strict=True)]
    # chance level is 0 +- 0.09 for 128 channels; after training LoRA spans G_W better
    floor = 0.5 if trained else 0.3
    assert sum(correlations) / len(correlations) > floor, correlations


def test_lora_estimate_formula_matches_its_derivation():
    """G_hat = s (G_B A + B G_A) with G_B = s G_W A^T and G_A = s B^T G_W, on one layer."""
    peft_model, adapter, _ = _peft("bert", rank=4)
    module = adapter.layer_modules(peft_model)[0].get_submodule(adapter.q_proj)
    torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    peft_model(**_batch()).loss.backward()
    lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
    scale = module.scaling["default"]
    expected = scale * (lora_b.grad @ lora_a + lora_b @ lora_a.grad)
    assert torch.allclose(lora_gradient_estimate(module), expected.detach())


def test_scores_exist_right_after_init_when_b_is_zero():
    peft_model, adapter, full = _peft("llama")
    b_weights = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert all(torch.count_nonzero(p) == 0 for p in b_weights)
    peft_model(**_batch()).loss.backward()
    scores = LoraTaylorImportance(adapter).update(peft_model, full)
    for layer in scores:
        for values in (layer.heads, layer.kv_heads, layer.channels):
            assert torch.isfinite(values).all() and (values > 0).all()


def test_ema_smooths_across_updates():
    peft_model, adapter, full = _peft("bert")
    importance = LoraTaylorImportance(adapter, beta=0.9)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    snapshots = []
    for _ in range(2):
        peft_model(**_batch()).loss.backward()
        snapshots.append(group_scores(peft_model, adapter, full, _element))
        importance.update(peft_model, full)
        optimizer.step()
        optimizer.zero_grad()
    expected = 0.9 * snapshots[0][0].channels + 0.1 * snapshots[1][0].channels
    assert torch.allclose(importance.scores[0].channels, expected)
    assert not torch.allclose(snapshots[0][0].channels, snapshots[1][0].channels)
    assert importance.num_updates == 2


def _element(module):
    return (merged_weight(module) * lora_gradient_estimate(module)).abs()


def test_update_without_gradients_explains_the_order_of_calls():
    peft_model, adapter, full = _peft("bert")
    with pytest.raises(ModelError, match=r"after loss\.backward\(\)"):
        LoraTaylorImportance(adapter).update(peft_model, full)


def test_magnitude_sums_rows_and_columns_of_each_group():
    peft_model, adapter, full = _peft("bert")
    scores = magnitude_importance(peft_model, adapter, full)
    layer = adapter.layer_modules(peft_model)[1]
    head_dim = full.dims.head_dim
    rows = slice(2 * head_dim, 3 * head_dim)  # head 2
    q = layer.get_submodule(adapter.q_proj).weight[rows].abs().sum()
    o = layer.get_submodule(adapter.o_proj).weight[:, rows].abs().sum()
    k = layer.get_submodule(adapter.k_proj).weight[rows].abs().sum()
    v = layer.get_submodule(adapter.v_proj).weight[rows].abs().sum()
    assert torch.isclose(scores[1].heads[2], q + o)
    assert torch.isclose(scores[1].kv_heads[2], k + v)
    up = layer.get_submodule("intermediate.dense").weight[5].abs().sum()
    down = layer.get_submodule("output.dense").weight[:, 5].abs().sum()
    assert torch.isclose(scores[1].channels[5], up + down)


def test_full_taylor_restores_requires_grad_and_clears_gradients():
    peft_model, adapter, full = _peft("qwen2")
    flags = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    peft_model.train()
    scores = taylor_importance(peft_model, adapter, full, [_batch(4), _batch(4)])
    assert flags == {n: p.requires_grad for n, p in peft_model.named_parameters()}
    assert all(p.grad is None for p in peft_model.parameters())
    assert peft_model.training
    assert all((layer.channels > 0).all() for layer in scores)


def test_scores_stay_in_original_coordinates_after_pruning():
    peft_model, adapter, full = _peft("llama")
    importance = LoraTaylorImportance(adapter)
    peft_model(**_batch()).loss.backward()
    importance.update(peft_model, full)
    kept = prune_step(peft_model, adapter, importance.scores, full, 0.5)
    peft_model.zero_grad()
    peft_model(**_batch()).loss.backward()
    fresh = group_scores(peft_model, adapter, kept, _element)
    for layer_scores, layer_kept in zip(fresh, kept.layers, strict=True):
        assert layer_scores.channels.numel() == full.dims.intermediate_size
        removed = [c for c in range(full.dims.intermediate_size) if c not in layer_kept.channels]
        assert (layer_scores.channels[removed] == 0).all()
        assert (layer_scores.channels[list(layer_kept.channels)] > 0).all()
    importance.update(peft_model, kept)  # the EMA continues across the pruning step
    assert importance.num_updates == 2
