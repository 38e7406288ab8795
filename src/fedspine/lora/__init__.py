"""LoRA aggregation across ranks and pruned widths, and the per-device down-link."""

from fedspine.lora.aggregation import (
    AGGREGATORS,
    DeviceLoraUpdate,
    LoraFactors,
    aggregate_masked_svd,
    aggregate_zero_pad,
    average_tensors,
    fedavg_factors,
    initial_global_factors,
    peft_init_a,
    restrict_and_slice,
    restrict_and_truncate,
    to_full_delta,
)

__all__ = [
    "AGGREGATORS",
    "DeviceLoraUpdate",
    "LoraFactors",
    "aggregate_masked_svd",
    "aggregate_zero_pad",
    "average_tensors",
    "fedavg_factors",
    "initial_global_factors",
    "peft_init_a",
    "restrict_and_slice",
    "restrict_and_truncate",
    "to_full_delta",
]
