"""Simulated device fleet: seeded profiles, per-round conditions and costs from real shapes."""

from fedspine.fleet.clock import (
    RoundConditions,
    comm_time_s,
    compute_time_s,
    conditions_at,
    is_low_power,
    round_time_s,
)
from fedspine.fleet.cost import (
    LayerShapes,
    activation_bytes,
    exceeds_budget,
    executed_linears,
    forward_flops,
    layer_shapes,
    training_flops,
    training_memory_bytes,
)
from fedspine.fleet.profiles import (
    DEFAULT_MEMORY_USABLE_FRACTION,
    DEFAULT_TIERS,
    DeviceProfile,
    FleetSpec,
    TierSpec,
    fleet_to_dict,
    make_fleet,
    tier_counts,
)

__all__ = [
    "DEFAULT_MEMORY_USABLE_FRACTION",
    "DEFAULT_TIERS",
    "DeviceProfile",
    "FleetSpec",
    "LayerShapes",
    "RoundConditions",
    "TierSpec",
    "activation_bytes",
    "comm_time_s",
    "compute_time_s",
    "conditions_at",
    "exceeds_budget",
    "executed_linears",
    "fleet_to_dict",
    "forward_flops",
    "is_low_power",
    "layer_shapes",
    "make_fleet",
    "round_time_s",
    "tier_counts",
    "training_flops",
    "training_memory_bytes",
]
