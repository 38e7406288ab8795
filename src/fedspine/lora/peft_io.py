"""Attach peft LoRA to a (possibly pruned) base and move LoRA factors and head weights in/out.

LoRA modules are named by their path in the base model (e.g.
`bert.encoder.layer.0.attention.self.query`), the same names the pruning engine's kept-index
maps and the aggregation use, so a device's factors can be mapped back to full width.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from fedspine.lora.factors import LoraFactors
from fedspine.models.families import FamilyAdapter

_PEFT_PREFIX = "base_model.model."
_SAVED = "modules_to_save.default."


def attach_lora(
    model: torch.nn.Module,
    adapter: FamilyAdapter,
    rank: int,
    alpha_per_rank: float,
    dropout: float,
    seed: int,
) -> torch.nn.Module:
    """Wrap `model` with LoRA of `rank` on the family's projections.

    A classifier's new head trains fully; a causal LM keeps its (tied) output layer frozen.
    """
    torch.manual_seed(seed)
    causal = is_causal_lm(model)
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=alpha_per_rank * rank,
        lora_dropout=dropout,
        target_modules=adapter.peft_target_modules(),
        modules_to_save=None if causal else list(adapter.head_module_names),
        task_type="CAUSAL_LM" if causal else "SEQ_CLS",
    )
    return get_peft_model(model, lora_config)


@torch.no_grad()
def add_to_base(model: torch.nn.Module, deltas: dict[str, torch.Tensor]) -> None:
    """FLoRA: W <- W + delta for each named projection of a plain (pruned) base, before LoRA
    is attached. New frozen tensors: the pruned model shares storage with the shared base, so
    an in-place add would change every device's base."""
    for name, delta in deltas.items():
        layer = model.get_submodule(name)
        if tuple(layer.weight.shape) != tuple(delta.shape):
            raise ValueError(
                f"{name}: merged delta {tuple(delta.shape)} does not fit the weight "
                f"{tuple(layer.weight.shape)} (a device's pruned widths must match)"
            )
        merged = layer.weight.detach() + delta.to(layer.weight.dtype)
        layer.weight = torch.nn.Parameter(merged, requires_grad=False)


def is_causal_lm(model: torch.nn.Module) -> bool:
    """A model that generates text (a language-model head), not a sequence classifier."""
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def _strip(name: str) -> str:
    return name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name


def lora_layers(peft_model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {
        _strip(name): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_A
    }


def lora_scaling(peft_model: torch.nn.Module) -> float:
    """The (shared) peft scaling alpha / r of this model's LoRA layers."""
    layer = next(iter(lora_layers(peft_model).values()))
    return float(layer.scaling["default"])


def get_lora_factors(peft_model: torch.nn.Module) -> dict[str, LoraFactors]:
    """Copies of the LoRA factors, on the CPU (what a message carries) wherever the model is."""
    return {
        name: LoraFactors(
            A=layer.lora_A["default"].weight.detach().to("cpu", copy=True),
            B=layer.lora_B["default"].weight.detach().to("cpu", copy=True),
        )
        for name, layer in lora_layers(peft_model).items()
    }


@torch.no_grad()
def set_lora_factors(peft_model: torch.nn.Module, factors: dict[str, LoraFactors]) -> None:
    """Load factors; every LoRA layer must get a factor pair of its exact shape."""
    layers = lora_layers(peft_model)
    missing = set(layers) - set(factors)
    if missing:
        raise KeyError(f"no LoRA factors for {sorted(missing)[:3]}...")
    for name, layer in layers.items():
        layer.lora_A["default"].weight.copy_(factors[name].A)
        layer.lora_B["default"].weight.copy_(factors[name].B)


def get_head_state(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the fully trained task head's weights (on the CPU), keyed like
    `classifier.weight`."""
    return {
        _strip(name).replace(_SAVED, ""): param.detach().to("cpu", copy=True)
        for name, param in peft_model.named_parameters()
        if _SAVED in name
    }


@torch.no_grad()
def set_head_state(peft_model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = {
        _strip(name).replace(_SAVED, ""): param
        for name, param in peft_model.named_parameters()
        if _SAVED in name
    }
    for key, value in state.items():
        params[key].copy_(value)
