"""What a federated method is: how the server plans each device's round and how it aggregates.

A method holds only what makes it different: its planner (rank and sparsity per device and
round) and its aggregation rule. The local loop, the clock, the record and the Flower wiring
are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fedspine.config import Config


@dataclass(frozen=True)
class DeviceView:
    """What the server knows of one device: only what a real server could observe."""

    node_id: int
    sparsity: float  # reached so far, from the device's reports
    rounds_seen: int
    last_rank: int  # LoRA rank of its last upload (0 before any)
    declared_tier: str  # hardware class the device announced; only tier-rank baselines use it


@dataclass(frozen=True)
class Assignment:
    lora_rank: int
    target_sparsity: float  # to reach by the end of the round
    prune_one_shot: bool = False
    rank_self_prune: bool = False  # HetLoRA: the device may shed trailing LoRA components


class Planner(Protocol):
    """Chooses each participant's (rank, sparsity) and learns from the round's outcome."""

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> Assignment: ...

    def observe(self, round_num: int, outcomes: list[dict]) -> list[dict]:
        """Take the round's reports (one dict per participant); return per-device reward logs."""
        ...


@dataclass(frozen=True)
class Method:
    name: str
    aggregation: str  # "fedavg" | "zero-pad" | "masked-svd" | "masked-svd-residual"
    prunes: bool  # whether devices end pruned (a final round brings laggards to target)
    description: str

    def make_planner(self, config: Config, num_devices: int) -> Planner:
        from fedspine.methods.registry import make_planner

        return make_planner(self, config, num_devices)
