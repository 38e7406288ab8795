"""Family adapters: the one place that knows where heads, FFN channels and LoRA targets live.

Every other module (importance, slicing, export, LoRA aggregation) asks a `FamilyAdapter`
instead of branching on the model type, so adding a family is one `register_family` call.

Names are relative to the sequence-classification model that peft wraps, e.g.
``bert.encoder.layer.0.attention.self.query``; in a peft state dict the same module appears
as ``base_model.model.<name>.lora_A.weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from fedspine.errors import ModelError

PRUNED_WIDTHS_FIELD = "fedspine_layer_widths"  # config field: per-layer widths after pruning


@dataclass(frozen=True)
class FullDims:
    """Widths of the unpruned model: the coordinate system of every kept-index map."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class FamilyAdapter:
    """Where one architecture family keeps its prunable projections (paths relative to a layer).

    q/k/v rows and o columns of a head form one head group; ``ffn_in`` rows and ``ffn_out``
    columns of a channel form one channel group.
    """

    name: str
    model_types: tuple[str, ...]
    base_prefix: str  # attribute of the *ForSequenceClassification model holding the backbone
    layers_path: str  # ModuleList of layers, relative to the backbone
    attention_path: str  # module whose head-count attributes must follow the slicing
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    lora_target_modules: tuple[str, ...]
    head_module_names: tuple[str, ...]
    has_grouped_kv: bool  # decoders: num_key_value_heads and an explicit head_dim in config
    # Backbone-relative linears outside the layers that train through LoRA and are never sliced
    # (BERT's pooler): their LoRA travels like the rest, at the device's rank.
    unpruned_lora_modules: tuple[str, ...] = ()

    # ----- dimensions -------------------------------------------------------------------------
    def full_dims(self, config: PretrainedConfig) -> FullDims:
        """Widths of an unpruned config (raises if the config already describes a pruned model)."""
        if getattr(config, PRUNED_WIDTHS_FIELD, None):
            raise ModelError(
                "This config describes an already pruned model; take the full widths from its "
                "KeptIndices (fedspine_pruning.json beside an export)."
            )
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if heads % kv_heads:
            raise ModelError(
                f"num_attention_heads={heads} is not a multiple of {kv_heads} kv heads"
            )
        return FullDims(
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(head_dim),
            intermediate_size=int(config.intermediate_size),
            hidden_size=int(config.hidden_size),
        )

    # ----- module lookup ------------------------------------------------------------------------
    def layers_prefix(self) -> str:
        """Dotted path of the layer list inside the classification model."""
        return f"{self.base_prefix}.{self.layers_path}"

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        """The layer list of a classification model, peft-wrapped or not."""
        hf_model = unwrap_peft(model)
        try:
            return hf_model.get_submodule(self.layers_prefix())
        except AttributeError as err:
            raise ModelError(
                f"{type(hf_model).__name__} has no '{self.layers_prefix()}'; fedspine expects a "
                "*ForSequenceClassification model of the family "
                f"'{self.name}'"
            ) from err

    def projection_paths(self) -> dict[str, str]:
        """Role -> layer-relative path of every prunable projection (ffn_in as ffn_in0, ...)."""
        paths = {"q": self.q_proj, "k": self.k_proj, "v": self.v_proj, "o": self.o_proj}
        paths.update({f"ffn_in{i}": path for i, path in enumerate(self.ffn_in)})
        paths["ffn_out"] = self.ffn_out
        return paths

    def module_name(self, layer_idx: int, layer_relative_path: str) -> str:
        """Full name of a layer's projection in the classification model."""
        return f"{self.layers_prefix()}.{layer_idx}.{layer_relative_path}"

    def unpruned_lora_names(self) -> tuple[str, ...]:
        """Full names of the LoRA-trained modules that pruning never touches."""
        return tuple(f"{self.base_prefix}.{path}" for path in self.unpruned_lora_modules)

    def task_head_modules(self) -> tuple[str, ...]:
        """Modules trained at the task head's learning rate: the head and the unpruned LoRA
        modules that feed it (a new head needs them to move as fast as it does)."""
        return (*self.head_module_names, *self.unpruned_lora_modules)

    def peft_target_modules(self) -> list[str]:
        """peft's target_modules: every prunable projection plus the unpruned LoRA modules."""
        return [*self.lora_target_modules, *self.unpruned_lora_modules]

    def lora_config(
        self, rank: int, alpha: float | None = None, dropout: float = 0.0
    ) -> LoraConfig:
        """A peft LoraConfig: LoRA on every prunable projection, the task head trained fully."""
        return LoraConfig(
            r=rank,
            lora_alpha=2 * rank if alpha is None else alpha,
            lora_dropout=dropout,
            target_modules=self.peft_target_modules(),
            modules_to_save=list(self.head_module_names),
        )

    # ----- in-place updates after slicing -------------------------------------------------------
    def set_attention_widths(self, attention: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        """Update the attributes the stock attention forward reads after its heads were sliced."""
        if self.has_grouped_kv:
            attention.num_key_value_groups = num_heads // num_kv_heads
            return
        attention.num_attention_heads = num_heads
        attention.all_head_size = num_heads * attention.attention_head_size

    def set_config_widths(
        self, config: PretrainedConfig, dims: FullDims, heads: int, kv_heads: int, channels: int
    ) -> None:
        """Write uniform widths into a config (a copy: the caller owns it)."""
        config.num_attention_heads = heads
        config.intermediate_size = channels
        if self.has_grouped_kv:
            config.num_key_value_heads = kv_heads
            config.head_dim = dims.head_dim


_ENCODER_LORA_TARGETS = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_DECODER_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _encoder(
    name: str,
    model_types: tuple[str, ...],
    heads: tuple[str, ...],
    unpruned_lora: tuple[str, ...] = (),
) -> FamilyAdapter:
    return FamilyAdapter(
        name=name,
        model_types=model_types,
        base_prefix=name,
        layers_path="encoder.layer",
        attention_path="attention.self",
        q_proj="attention.self.query",
        k_proj="attention.self.key",
        v_proj="attention.self.value",
        o_proj="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        lora_target_modules=_ENCODER_LORA_TARGETS,
        head_module_names=heads,
        has_grouped_kv=False,
        unpruned_lora_modules=unpruned_lora,
    )


def _decoder(name: str, model_types: tuple[str, ...]) -> FamilyAdapter:
    return FamilyAdapter(
        name=name,
        model_types=model_types,
        base_prefix="model",
        layers_path="layers",
        attention_path="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        v_proj="self_attn.v_proj",
        o_proj="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        lora_target_modules=_DECODER_LORA_TARGETS,
        head_module_names=("score",),
        has_grouped_kv=True,
    )


_REGISTRY: dict[str, FamilyAdapter] = {}


def register_family(adapter: FamilyAdapter) -> None:
    """Make a family known to `adapter_for` under each of its model types."""
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter


for _adapter in (
    # BERT classifies from the pooler (dense + tanh over [CLS]); a sentence-embedding checkpoint
    # such as all-MiniLM was never trained to use it, so the pooler must train, but through
    # LoRA [our choice]: trained fully it was a hidden x hidden matrix that every device of every
    # method sent both ways every round (148K parameters, 31% of a rank-8 MiniLM payload and
    # two thirds of a rank-2 one), which no rank or pruning choice could shrink.
    # RoBERTa's classification head holds its own, newly initialised, dense layer: it trains fully.
    _encoder("bert", ("bert",), ("classifier",), unpruned_lora=("pooler.dense",)),
    _encoder("roberta", ("roberta",), ("classifier",)),
    _decoder("llama", ("llama",)),
    _decoder("qwen2", ("qwen2",)),
    _decoder("mistral", ("mistral",)),
    _decoder("gemma3", ("gemma3_text",)),
):
    register_family(_adapter)


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def adapter_for(config_or_model: PretrainedConfig | nn.Module) -> FamilyAdapter:
    """The family adapter of a config, a transformers model or a peft-wrapped model."""
    config = config_or_model
    if not isinstance(config_or_model, PretrainedConfig):
        config = getattr(unwrap_peft(config_or_model), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3":
        raise ModelError(
            "Multimodal Gemma 3 is not supported; load the text model (model_type 'gemma3_text', "
            "Gemma3TextForSequenceClassification)."
        )
    if model_type not in _REGISTRY:
        raise ModelError(
            f"Model type {model_type!r} is not supported for pruning; supported families: "
            f"{', '.join(supported_model_types())}."
        )
    return _REGISTRY[model_type]


def tiny_config(model_type: str, **overrides) -> PretrainedConfig:
    """A tiny random config of a supported family (2 layers, hidden 32) for tests and smoke runs.

    Decoders get grouped-query attention (4 query heads on 2 kv heads); Qwen2 and Gemma 3 an
    explicit head_dim of 16 (!= hidden / heads), as in their real checkpoints.
    """
    adapter = adapter_for(AutoConfig.for_model(model_type))
    fields = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_labels": 2,
        "pad_token_id": 0,
    }
    if adapter.has_grouped_kv:
        fields["num_key_value_heads"] = 2
    if model_type in ("qwen2", "gemma3_text"):
        fields["head_dim"] = 16
    if not adapter.has_grouped_kv:
        fields.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fields.update(overrides)
    return AutoConfig.for_model(model_type, **fields)
