"""BERT / RoBERTa with structurally pruned layers (attention heads and FFN channels), from fedspine.

Copied into a fedspine export whose widths stock transformers cannot describe; load it with
``AutoModelForSequenceClassification.from_pretrained(export_dir, trust_remote_code=True)``
(or ``AutoModel``). Needs only torch and transformers.

Stock BERT/RoBERTa attention derives its head size as hidden_size / num_attention_heads and
gives every layer the same widths, so no stock config describes a layer that lost heads. Here
``num_attention_heads`` and ``intermediate_size`` keep the UNPRUNED widths, ``head_dim`` is the
unpruned head size, and ``fedspine_layer_widths`` lists each layer's real widths
(``{"heads", "kv_heads", "channels"}``); each layer is narrowed to them after the stock init.
"""

from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)


class FedspineBertConfig(BertConfig):
    model_type = "fedspine_bert"

    head_dim: int | None = None
    fedspine_layer_widths: list | None = None


class FedspineRobertaConfig(RobertaConfig):
    model_type = "fedspine_roberta"

    head_dim: int | None = None
    fedspine_layer_widths: list | None = None


def _linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    weight = old.weight
    return nn.Linear(
        in_features,
        out_features,
        bias=old.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )


def narrow_layers(layers: nn.ModuleList, config) -> None:
    """Give each encoder layer the head count and FFN width listed in the config."""
    widths = config.fedspine_layer_widths
    if widths is None or len(widths) != len(layers):
        raise ValueError("config.fedspine_layer_widths must list the widths of every layer")
    hidden, head_dim = config.hidden_size, config.head_dim
    for layer, width in zip(layers, widths, strict=True):
        heads, channels = int(width["heads"]), int(width["channels"])
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(attention, name, _linear(getattr(attention, name), hidden, heads * head_dim))
        attention.num_attention_heads = heads
        attention.attention_head_size = head_dim
        attention.all_head_size = heads * head_dim
        attention.scaling = head_dim**-0.5
        output = layer.attention.output
        output.dense = _linear(output.dense, heads * head_dim, hidden)
        layer.intermediate.dense = _linear(layer.intermediate.dense, hidden, channels)
        layer.output.dense = _linear(layer.output.dense, channels, hidden)


class _Narrowed:
    """Mixin: after the stock __init__, narrow the layers and initialise the new projections."""

    def _narrow(self) -> None:
        narrow_layers(self.base_model.encoder.layer, self.config)
        self.post_init()  # initialises only modules not initialised yet (the new projections)


class FedspineBertModel(_Narrowed, BertModel):
    config_class = FedspineBertConfig

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self._narrow()


class FedspineBertForSequenceClassification(_Narrowed, BertForSequenceClassification):
    config_class = FedspineBertConfig

    def __init__(self, config):
        super().__init__(config)
        self._narrow()


class FedspineRobertaModel(_Narrowed, RobertaModel):
    config_class = FedspineRobertaConfig

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self._narrow()


class FedspineRobertaForSequenceClassification(_Narrowed, RobertaForSequenceClassification):
    config_class = FedspineRobertaConfig

    def __init__(self, config):
        super().__init__(config)
        self._narrow()
