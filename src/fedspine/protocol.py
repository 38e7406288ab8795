"""What server and devices say to each other, typed: the only home of a plan, a report and
a registration, and of their flat record encoding. No Flower here.

A message's scalars travel as flat ``{field: int | float | str | bool}`` records built by
`to_record` / `from_record` (the Flower apps wrap them in ConfigRecords); its tensors (LoRA
factors, head, importance scores) travel as flat tensor dicts, so the byte count of a message
is the real payload size. The same dataclasses are what planners, the device round, the
server core and the run record read, so a field has one name everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from fedspine.fleet.probe import PROBE_BYTES, ProbeResult
from fedspine.lora.factors import LoraFactors
from fedspine.pruning.importance import ModelScores
from fedspine.pruning.kept import KeptIndices

Scalar = int | float | str | bool
Record = dict[str, Scalar]
T = TypeVar("T")


class DeviceRecipe(str, enum.Enum):
    """What a device does with its round besides LoRA training (a method's device half)."""

    PRUNE_AND_TUNE = "prune-and-tune"  # prune toward the round's target every K steps
    ONE_SHOT_PRUNE = "one-shot-prune"  # prune to the target once, before training
    RANK_SELF_PRUNE = "rank-self-prune"  # HetLoRA: shed trailing LoRA components after training
    LOCAL_B = "local-b"  # FedSA-LoRA: keep its own B across rounds, upload A only
    NONE = "none"  # LoRA training only

    @property
    def prunes(self) -> bool:
        return self in (DeviceRecipe.PRUNE_AND_TUNE, DeviceRecipe.ONE_SHOT_PRUNE)


@dataclass(frozen=True)
class DevicePlan:
    """What the server asks of one device for one round."""

    round_num: int
    lora_rank: int
    target_sparsity: float = 0.0  # sparsity to reach by the end of this round
    recipe: DeviceRecipe = DeviceRecipe.NONE
    local_steps: int = 0  # 0 = the config's train.local_steps


@dataclass(frozen=True)
class DeviceReport:
    """What a device reports of its round; a failed round fills only what it measured."""

    ok: bool
    error: str = ""  # why the round failed ("" when ok)
    num_examples: int = 0  # local dataset size: FedAvg's aggregation weight
    examples_processed: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    time_s: float = 0.0  # the round's time on the device's clock (compute + transfer + latency)
    compute_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    train_flops: float = 0.0
    train_tokens: int = 0
    sparsity: float = 0.0  # share of prunable heads/channels removed, at the round's end
    param_sparsity: float = 0.0  # share of non-embedding parameters removed
    params: int = 0
    lora_rank: int = 0  # rank of the uploaded LoRA (HetLoRA may shed some)
    train_memory_mb: float | None = None
    train_wall_s: float | None = None
    handler_wall_s: float | None = None  # the whole device handler, set by the client app
    latency_ms: float | None = None  # budget mode: modelled request latency of its new model


@dataclass(frozen=True)
class ProbeRequest:
    """Registration: with `step_flops`, the device times one step of that size and a transfer.

    `round_num` is the round before which the device registers (1 at the start; later for a
    device that joins mid-run). Measured clock: the device times a real step at `lora_rank`,
    and the query and its reply each carry `transfer_bytes` (half a typical round's payload),
    so the server's send-to-reply time less the device's handler time is a round's transfer.
    """

    step_flops: float | None = None
    round_num: int = 1
    lora_rank: int = 0
    transfer_bytes: int = 0


@dataclass(frozen=True)
class Registration:
    """A device's answer at registration: who it is and, when asked, its probe."""

    device_id: int
    tier: str  # the hardware class it announces (only tier-rank baselines use it)
    probe_step_s: float | None = None
    probe_bandwidth_Bps: float | None = None
    probe_latency_s: float | None = None
    probe_handler_s: float | None = None  # measured clock: the device's whole handler time
    probe_transfer_bytes: int | None = None  # measured clock: payload each way of its probe
    # pruning.target = "budget": the device's own final target and what it was fitted to
    target_sparsity: float | None = None  # least sparsity meeting its inference budget
    budget_ms: float | None = None  # the latency budget it evaluated
    latency_ms: float | None = None  # its modelled request latency at that target
    meets_budget: bool | None = None  # False: even budget_max_sparsity is too slow

    @property
    def probe(self) -> ProbeResult | None:
        if self.probe_step_s is None or self.probe_bandwidth_Bps is None:
            return None
        transfer = self.probe_transfer_bytes or PROBE_BYTES
        return ProbeResult(
            self.probe_step_s, self.probe_bandwidth_Bps, self.probe_latency_s or 0.0, transfer
        )

    @classmethod
    def with_probe(
        cls, device_id: int, tier: str, probe: ProbeResult | None, **budget: Any
    ) -> Registration:
        if probe is None:
            return cls(device_id, tier, **budget)
        return cls(device_id, tier, probe.step_s, probe.bandwidth_Bps, probe.latency_s, **budget)


@dataclass(frozen=True)
class Downlink:
    """Everything a device receives for a round."""

    plan: DevicePlan
    kept: KeptIndices  # the device's structure at round start
    factors: dict[str, LoraFactors]  # the global LoRA in the device's coordinates and rank
    head: dict[str, torch.Tensor]
    fleet_prior: ModelScores | None = None  # pooled importance (pruning.share_importance)
    # FLoRA: the merged global delta at the device's kept coordinates, added to its base
    # before it trains a fresh LoRA; and the bytes that costs on the wire (the stacks of the
    # rounds it missed, or the dense delta if smaller: a real device keeps its merged base,
    # a simulated one is sent the whole delta because devices share one base in memory)
    merged: dict[str, torch.Tensor] = field(default_factory=dict)
    merged_wire_bytes: int = 0


@dataclass(frozen=True)
class Uplink:
    """Everything a device sends back after a round."""

    report: DeviceReport
    kept: KeptIndices | None = None  # its structure at round end; None if it failed first
    factors: dict[str, LoraFactors] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: ModelScores | None = None  # this round's importance EMA, when it scored


@dataclass(frozen=True)
class DeviceCrash:
    """A device whose app raised: the transport's error reply, no report of the device's own."""

    reason: str


@dataclass(frozen=True)
class NoReply:
    """Nothing usable arrived from a device this round; what the server knows is when it gave up.

    `status` is DROPPED (never answered), CRASHED (died mid-round) or LATE (answered after the
    round's deadline); `waited_s` the simulated seconds the server spent waiting for it.
    """

    status: ReplyStatus
    reason: str
    waited_s: float = 0.0


class ReplyStatus(str, enum.Enum):
    """A participant's outcome in a round, as `rounds.jsonl` marks it."""

    OK = "ok"  # arrived in time, valid, aggregated
    FAILED = "failed"  # the device refused or failed its round and said so (e.g. over memory)
    DROPPED = "dropped"  # unavailable: never answered
    CRASHED = "crashed"  # died mid-round, or its app raised
    LATE = "late"  # answered after the round's deadline: not aggregated
    REJECTED = "rejected"  # arrived but malformed (shapes, non-finite values): not aggregated


@dataclass(frozen=True)
class ParticipantOutcome:
    """What the server made of one participant's reply: planners and the run record read it."""

    node_id: int
    device_id: int
    tier: str
    report: DeviceReport
    status: ReplyStatus = ReplyStatus.OK
    update_norm: float = 0.0  # ||this round's LoRA change|| (reward's importance term)

    @property
    def ok(self) -> bool:
        return self.status is ReplyStatus.OK and self.report.ok

    def to_row(self, reward: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The participant's line in rounds.jsonl (`prune_ratio` = the reached sparsity)."""
        report = self.report
        row = {
            "device": self.device_id,
            "tier": self.tier,
            "prune_ratio": report.sparsity,
            "lora_rank": report.lora_rank,
            "time_s": report.time_s,
            "bytes_up": report.bytes_up,
            "bytes_down": report.bytes_down,
            "ok": self.ok,
            "status": self.status.value,
            "loss_before": report.loss_before,
            "loss_after": report.loss_after,
            "train_memory_mb": report.train_memory_mb,
            "train_wall_s": report.train_wall_s,
            "handler_wall_s": report.handler_wall_s,
        }
        if reward:
            row["reward"] = dict(reward)
        if report.error:
            row["error"] = report.error
        return row


# -- flat record encoding ------------------------------------------------------------------------


def to_record(value: Any) -> Record:
    """A flat scalar dataclass as a record; None fields are left out, enums by value."""
    record: Record = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None:
            continue
        if isinstance(item, enum.Enum):
            item = item.value
        elif hasattr(item, "item"):  # a numpy or torch scalar
            item = item.item()
        record[f.name] = item
    return record


def from_record(cls: type[T], record: Mapping[str, Any]) -> T:
    """Rebuild a flat scalar dataclass, each field cast to its declared type; an unknown or
    missing required field is an error, not a silent default."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(record) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    values = {name: _cast(hints[name], record[name]) for name in names if name in record}
    return cls(**values)


def _cast(hint: Any, value: Any) -> Any:
    if isinstance(hint, types.UnionType):  # X | None: the non-None member
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool:
        return bool(value)
    return hint(value)


# -- tensors ----------------------------------------------------------------------------------

_SEP = "::"


def factors_to_tensors(factors: dict[str, LoraFactors]) -> dict[str, torch.Tensor]:
    """Flat `<module>::A` / `<module>::B`; an absent B (FedSA-LoRA's A-only messages) is not
    sent, so it costs no bytes."""
    flat = {}
    for name, pair in factors.items():
        flat[f"{name}{_SEP}A"] = pair.A.contiguous()
        if pair.B is not None:
            flat[f"{name}{_SEP}B"] = pair.B.contiguous()
    return flat


def tensors_to_factors(flat: dict[str, torch.Tensor]) -> dict[str, LoraFactors]:
    names = {key.rsplit(_SEP, 1)[0] for key in flat}
    return {n: LoraFactors(A=flat[f"{n}{_SEP}A"], B=flat.get(f"{n}{_SEP}B")) for n in sorted(names)}


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
