"""LoRA across ranks and pruned widths: factors, the aggregation math and the rules."""

from fedspine.lora.aggregation import (
    LoraUpload,
    aggregate_masked_svd,
    aggregate_zero_pad,
    average_tensors,
    fedavg_factors,
    peft_init_a,
    restrict_and_truncate,
    slice_factors,
    to_full_delta,
)
from fedspine.lora.aggregators import AGGREGATORS, Aggregator, make_aggregator
from fedspine.lora.factors import LoraFactors

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "LoraFactors",
    "LoraUpload",
    "aggregate_masked_svd",
    "aggregate_zero_pad",
    "average_tensors",
    "fedavg_factors",
    "make_aggregator",
    "peft_init_a",
    "restrict_and_truncate",
    "slice_factors",
    "to_full_delta",
]
