"""The planner interface: how a method's server half decides each device's round.

A planner sees only what a real server could observe (`DeviceView`, the devices' reports and
registration probes), never a device profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fedspine.fleet.probe import ProbeResult
from fedspine.protocol import DevicePlan, ParticipantOutcome


@dataclass(frozen=True)
class DeviceView:
    """What the server knows of one device: only what a real server could observe."""

    node_id: int
    sparsity: float  # reached so far, from the device's reports
    rounds_seen: int
    last_rank: int  # LoRA rank of its last upload (0 before any)
    declared_tier: str  # hardware class the device announced; only tier-rank baselines use it
    target_sparsity: float = 0.5  # its final sparsity (the run's, or its own in budget mode)


class Planner(Protocol):
    """Chooses each participant's (rank, sparsity) and learns from the round's outcome."""

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        """This device's plan: rank and target sparsity (the server core adds the recipe)."""
        ...

    def observe(self, round_num: int, outcomes: list[ParticipantOutcome]) -> list[dict]:
        """Take the round's outcomes (device-id order); return one reward log per outcome."""
        ...

    def observe_probe(
        self, probes: dict[int, ProbeResult], step_flops: float, round_bytes: int
    ) -> None:
        """Registration probes by node, in device-id order (only probing methods get any)."""
        ...
