"""Training cost from the model's real shapes: FLOPs and memory.

Costs are read from the modules that actually exist and run, so a pruned model (smaller
Linear layers, fewer heads) costs less without any constant to update. Only matrix
multiplications are counted (Linear layers and attention's QK^T and AV); layer norms,
softmax, activations and embedding lookups are a few percent of a transformer's FLOPs.

peft is handled by duck typing (no import): a LoRA layer runs its `base_layer` plus, when
adapters are enabled and not merged, `lora_A[a]` and `lora_B[a]` for each active adapter `a`;
a modules-to-save wrapper runs either its active copy or the original module, never both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedspine.errors import ModelError
from fedspine.fleet.profiles import DeviceProfile
from fedspine.models.families import adapter_for, unwrap_peft

# Modules that see one vector per sequence (the [CLS] pooler and classification head of
# BERT/RoBERTa), not one per token. A causal LM's `score`/`lm_head` runs on every token.
PER_SEQUENCE_MODULES: tuple[str, ...] = ("pooler", "classifier")

# Mixed-precision Adam: fp32 master copy (4) + first moment (4) + second moment (4) bytes.
ADAM_MIXED_PRECISION_STATE_BYTES = 12
# fp16 on the device: bytes of one weight, gradient or saved activation value.
DEVICE_BYTES_PER_VALUE = 2
LOGIT_BYTES = 4  # a causal LM's logits and their gradient are kept in fp32 for the loss


@dataclass(frozen=True)
class LinearCall:
    """One Linear that executes in the forward pass."""

    name: str
    in_features: int
    out_features: int
    trainable: bool
    per_sequence: bool
    is_lora: bool

    @property
    def flops_per_row(self) -> int:
        """Multiply-adds counted as 2 FLOPs, for one input vector."""
        return 2 * self.in_features * self.out_features


def _active_adapters(module: nn.Module) -> list[str]:
    active = getattr(module, "active_adapters", None)
    if active is None:
        active = getattr(module, "active_adapter", [])
    return [active] if isinstance(active, str) else list(active)


def _is_lora_layer(module: nn.Module) -> bool:
    return all(hasattr(module, attr) for attr in ("base_layer", "lora_A", "lora_B"))


def _is_modules_to_save(module: nn.Module) -> bool:
    return hasattr(module, "original_module") and hasattr(module, "modules_to_save")


def _lora_children(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, bool]]:
    """(name, module, is_lora) for what a peft LoRA layer executes."""
    yield f"{prefix}.base_layer", module.base_layer, False
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return
    for adapter in _active_adapters(module):
        if adapter in module.lora_A and adapter in module.lora_B:
            yield f"{prefix}.lora_A.{adapter}", module.lora_A[adapter], True
            yield f"{prefix}.lora_B.{adapter}", module.lora_B[adapter], True


def _saved_child(module: nn.Module, prefix: str) -> tuple[str, nn.Module]:
    """The one module a peft modules-to-save wrapper executes."""
    active = _active_adapters(module)
    disabled = getattr(module, "disable_adapters", False)
    if disabled or not active or active[0] not in module.modules_to_save:
        return f"{prefix}.original_module", module.original_module
    return f"{prefix}.modules_to_save.{active[0]}", module.modules_to_save[active[0]]


def _walk(module: nn.Module, prefix: str, in_lora: bool) -> Iterator[tuple[str, nn.Linear, bool]]:
    if _is_lora_layer(module):
        for name, child, is_lora in _lora_children(module, prefix):
            yield from _walk(child, name, in_lora or is_lora)
    elif _is_modules_to_save(module):
        name, child = _saved_child(module, prefix)
        yield from _walk(child, name, in_lora)
    elif isinstance(module, nn.Linear):
        yield prefix, module, in_lora
    else:
        for child_name, child in module.named_children():
            yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name, in_lora)


def _matches(name: str, module_names: Sequence[str]) -> bool:
    parts = set(name.split("."))
    return any(wanted in parts for wanted in module_names)


def executed_linears(model: nn.Module, frozen_base: bool = True) -> list[LinearCall]:
    """Every Linear the forward pass runs (peft-aware), tagged per token or per sequence
    (modules named in `PER_SEQUENCE_MODULES` see one vector per sequence).

    `trainable` follows `weight.requires_grad` when `frozen_base` (peft freezes the base and
    marks LoRA factors and saved heads trainable); with `frozen_base=False` all weights train.
    """
    calls = []
    for name, linear, is_lora in _walk(model, "", False):
        trainable = linear.weight.requires_grad if frozen_base else True
        calls.append(
            LinearCall(
                name=name,
                in_features=linear.in_features,
                out_features=linear.out_features,
                trainable=bool(trainable),
                per_sequence=_matches(name, PER_SEQUENCE_MODULES),
                is_lora=is_lora,
            )
        )
    return calls


def _model_config(model: nn.Module) -> Any:
    config = getattr(unwrap_peft(model), "config", None)
    if config is None:
        raise ModelError(
            f"{type(model).__name__} has no `.config`; pass a Hugging Face model "
            "(or a peft model wrapping one) so layer and head counts can be read"
        )
    return config


def _config_head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    return int(config.hidden_size) // int(config.num_attention_heads)


@dataclass(frozen=True)
class LayerShapes:
    """Per-layer attention heads and FFN channels of a (possibly pruned) model."""

    hidden_size: int
    head_dim: int
    heads: tuple[int, ...]
    intermediates: tuple[int, ...]


def _live_widths(model: nn.Module, config: Any) -> LayerShapes | None:
    """Read heads and FFN channels from the live (sliced) modules via the family adapter.

    Pruning slices modules in place and leaves the config at full width, so the modules are
    the truth. Returns None for a model whose family is not registered.
    """
    try:
        adapter = adapter_for(model)
        layers = adapter.layer_modules(model)
    except ModelError:
        return None
    head_dim, heads, intermediates = _config_head_dim(config), [], []
    for layer in layers:
        attention = layer.get_submodule(adapter.attention_path)
        head_dim = int(
            getattr(attention, "attention_head_size", None)
            or getattr(attention, "head_dim", None)
            or head_dim
        )
        heads.append(int(layer.get_submodule(adapter.q_proj).out_features) // head_dim)
        intermediates.append(int(layer.get_submodule(adapter.ffn_in[0]).out_features))
    return LayerShapes(int(config.hidden_size), head_dim, tuple(heads), tuple(intermediates))


def layer_shapes(model: nn.Module) -> LayerShapes:
    """Heads and FFN channels per layer: from the live modules, else from the config."""
    config = _model_config(model)
    live = _live_widths(model, config)
    if live is not None:
        return live
    layers = int(config.num_hidden_layers)
    return LayerShapes(
        hidden_size=int(config.hidden_size),
        head_dim=_config_head_dim(config),
        heads=(int(config.num_attention_heads),) * layers,
        intermediates=(int(config.intermediate_size),) * layers,
    )


def _attention_flops(shapes: LayerShapes, seq_len: int) -> int:
    return 2 * 2 * sum(shapes.heads) * shapes.head_dim * seq_len * seq_len


def _linear_training_flops(call: LinearCall, num_sequences: int, seq_len: int) -> float:
    """Forward F, backward: input gradient F (always, to reach earlier LoRA factors) plus
    weight gradient F only if the weight trains. So 2F for a frozen Linear, 3F for a trained one.
    """
    rows = num_sequences * (1 if call.per_sequence else seq_len)
    forward = float(rows) * call.flops_per_row
    return forward * (3.0 if call.trainable else 2.0)


def forward_flops(model: nn.Module, num_sequences: int, seq_len: int) -> float:
    """FLOPs of one forward pass over `num_sequences` sequences of `seq_len` tokens."""
    calls = executed_linears(model)
    linear = sum(
        float(num_sequences * (1 if call.per_sequence else seq_len)) * call.flops_per_row
        for call in calls
    )
    shapes = layer_shapes(model)
    return linear + float(num_sequences) * _attention_flops(shapes, seq_len)


def training_flops(
    model: nn.Module,
    num_sequences: int,
    seq_len: int,
    frozen_base: bool = True,
    forward_only: bool = False,
) -> float:
    """FLOPs to train on `num_sequences` sequences (forward + backward), from real shapes.

    Factors per matmul, relative to its forward cost F:
    - a frozen Linear (base under LoRA): F + F (input gradient only) = 2F;
    - a trained Linear (LoRA A/B, saved head, or everything when `frozen_base=False`):
      F + 2F (input and weight gradients) = 3F, the usual 6 FLOPs/param/token of full training;
    - attention QK^T and AV have no weights, but both operands are activations whose
      gradients are needed: F + 2F = 3F.
    So LoRA on a frozen base costs about 2/3 of full fine-tuning. Input gradients below the
    lowest LoRA layer are not needed; counting them is a < 1/L overestimate we accept.
    `forward_only=True` gives the forward cost (e.g. scoring batches without a backward).
    Head counts come from the live modules.
    """
    if forward_only:
        return forward_flops(model, num_sequences, seq_len)
    calls = executed_linears(model, frozen_base)
    linear = sum(_linear_training_flops(call, num_sequences, seq_len) for call in calls)
    shapes = layer_shapes(model)
    return linear + 3.0 * float(num_sequences) * _attention_flops(shapes, seq_len)


def _layer_activation_bytes(
    batch_size: int, seq_len: int, widths: tuple[int, int, int, int], bytes_per_value: int
) -> int:
    """Saved activations of one encoder layer (Korthikanti et al. 2022, generalised).

    widths = (hidden h, attention width A = heads x head_dim, intermediate I, heads a).
    Per token, at `bytes_per_value`: QKV input h, Q/K/V 3A, attention-output input A, MLP
    input h, GELU input and output 2I, two layer-norm inputs 2h -> 4h + 4A + 2I values, plus
    two 1-byte dropout masks of width h. Per score entry (a x s^2 per sequence): softmax
    output and dropped probabilities at `bytes_per_value` plus a 1-byte mask.
    With fp16, A = h and I = 4h this is the paper's 34 s b h + 5 a s^2 b bytes.
    """
    hidden, attention_width, intermediate, heads = widths
    per_token = bytes_per_value * (4 * hidden + 4 * attention_width + 2 * intermediate)
    per_token += 2 * hidden
    per_score = 2 * bytes_per_value + 1
    tokens = batch_size * seq_len
    return tokens * per_token + batch_size * heads * seq_len * seq_len * per_score


def activation_bytes(shapes: LayerShapes, batch_size: int, seq_len: int) -> int:
    """Saved fp16 activations of one training step: embeddings plus every layer's share.

    Every layer's activations are kept (no checkpointing); a LoRA step on a frozen base needs
    them too, since the LoRA A factors and the nonlinearities read them in the backward.
    A gated (SwiGLU) FFN saves one more I-wide tensor than this counts: a few percent.
    """
    hidden, bytes_per_value = shapes.hidden_size, DEVICE_BYTES_PER_VALUE
    embeddings = batch_size * seq_len * (bytes_per_value * hidden + hidden)
    layers = sum(
        _layer_activation_bytes(
            batch_size, seq_len, (hidden, heads * shapes.head_dim, width, heads), bytes_per_value
        )
        for heads, width in zip(shapes.heads, shapes.intermediates, strict=True)
    )
    return embeddings + layers


def training_memory_bytes(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Peak training memory estimate in bytes, with bytes = DEVICE_BYTES_PER_VALUE (fp16):

        weights        all parameters x bytes
      + gradients      trainable parameters x bytes
      + optimizer      trainable parameters x ADAM_MIXED_PRECISION_STATE_BYTES
                       (12 = fp32 master copy + Adam m and v, mixed precision)
      + activations    `activation_bytes`: embeddings + per layer
                       b s ((4h + 4A + 2I) x bytes + 2h) + b a s^2 (2 x bytes + 1)
      + LoRA middles   b s r x bytes for every executed LoRA pair
      + logits         causal LMs: b s V x 4 twice (the vocabulary-wide logits and their
                       gradient, fp32; for SmolLM2 at 4 x 96 tokens that is 150 MB).

    Trainable follows `requires_grad` (peft's marking). Widths come from the live modules.
    The OS and CUDA context are covered by the fleet's usable-memory fraction, not here.
    """
    bytes_per_param = DEVICE_BYTES_PER_VALUE
    parameters = list(model.parameters())
    total = sum(param.numel() for param in parameters)
    trainable = sum(param.numel() for param in parameters if param.requires_grad)
    weights_and_states = total * bytes_per_param
    weights_and_states += trainable * (bytes_per_param + ADAM_MIXED_PRECISION_STATE_BYTES)
    shapes = layer_shapes(model)
    activations = activation_bytes(shapes, batch_size, seq_len)
    lora_middles = sum(
        call.out_features
        for call in executed_linears(model)
        if call.is_lora and ".lora_A." in call.name and not call.per_sequence
    )
    activations += batch_size * seq_len * lora_middles * bytes_per_param
    return int(weights_and_states + activations + logits_bytes(model, batch_size, seq_len))


def logits_bytes(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Memory of a causal LM's training logits (every token scores the whole vocabulary);
    0 for a classifier, whose logits are a few numbers per sequence."""
    base = unwrap_peft(model)
    can_generate = getattr(base, "can_generate", None)
    if not (callable(can_generate) and can_generate()):
        return 0
    vocab = base.get_output_embeddings().out_features
    return 2 * batch_size * seq_len * vocab * LOGIT_BYTES


def exceeds_budget(mem_bytes: int, profile: DeviceProfile, usable_fraction: float) -> bool:
    """True when a configuration's training memory does not fit this device's budget
    (`usable_fraction`: the run's `FleetSpec.memory_usable_fraction`)."""
    return mem_bytes > profile.memory_bytes * usable_fraction
