"""The server's algorithm, without Flower: who takes part, what each is asked, what is learned.

`Server` owns the per-device records, the method's planner, the global LoRA and the fleet's
pooled importance. One round is `plan_round` (sample, plan, down-link) -> the transport
delivers the down-links and collects replies -> `absorb` (update records, reward the bandit,
aggregate, pool scores). It sees only what a real server sees: device replies (times,
losses, kept maps) and registrations, never profiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedspine.config import Config
from fedspine.global_state import GlobalLora, update_norm
from fedspine.lora.aggregation import LoraUpload
from fedspine.methods.base import DeviceView, Planner
from fedspine.methods.registry import MethodSpec
from fedspine.protocol import (
    DeviceCrash,
    DeviceReport,
    Downlink,
    NoReply,
    ParticipantOutcome,
    Registration,
    ReplyStatus,
    Uplink,
)
from fedspine.pruning import KeptIndices, ModelScores
from fedspine.pruning.fleet_importance import ScoreReport, pool_scores
from fedspine.server.validation import uplink_problem

# A device's kept map -> per LoRA module its kept output rows / input cols (None = all).
Coordinates = Callable[[KeptIndices], tuple[dict, dict]]


@dataclass
class DeviceRecord:
    """The server's per-device record: small, no model copy."""

    node_id: int
    device_id: int
    tier: str
    kept: KeptIndices  # starts as the full map; the device's reports shrink it
    target: float  # its final sparsity: the run's, or (budget mode) the one it set itself
    sparsity: float = 0.0
    rounds_seen: int = 0
    last_rank: int = 0
    budget_ms: float | None = None  # budget mode: what it fitted, and its modelled latency
    latency_ms: float | None = None
    synced: int = 0  # FLoRA: aggregations already merged into the device's base

    def view(self) -> DeviceView:
        return DeviceView(
            self.node_id, self.sparsity, self.rounds_seen, self.last_rank, self.tier, self.target
        )


Reply = Uplink | DeviceCrash | NoReply


@dataclass(frozen=True)
class _InFlight:
    """A sent down-link, kept until its reply: the residual rule reads what was received."""

    factors: dict
    rows: dict
    cols: dict
    merges: int = 0  # FLoRA: aggregations merged into the delta it was sent


@dataclass(frozen=True)
class RoundOutcome:
    """One absorbed round: each participant (device-id order) and its reward log.

    `skipped`: fewer than `run.min_replies` valid replies arrived in time, so nothing of the
    round was aggregated or recorded (the clock and the bandit still advanced).
    """

    participants: list[ParticipantOutcome]
    rewards: list[dict]
    skipped: bool = False
    app_errors: int = 0  # participants whose app raised (a bug, not the network)

    @property
    def all_raised(self) -> bool:
        return bool(self.participants) and self.app_errors == len(self.participants)

    @property
    def time_s(self) -> float:
        """Synchronous round: the slowest participant's time (or the time waited for it)."""
        return max((p.report.time_s for p in self.participants), default=0.0)

    def status_counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in ReplyStatus}
        for participant in self.participants:
            counts[participant.status.value] += 1
        return counts

    def rows(self) -> list[dict]:
        return [p.to_row(r) for p, r in zip(self.participants, self.rewards, strict=True)]


@dataclass(frozen=True)
class _Accepted:
    """A valid in-time reply, held until the round is known to be aggregated."""

    uplink: Uplink
    upload: LoraUpload
    scores: ScoreReport | None


class Server:
    """Devices, planner, global LoRA and fleet importance of one run."""

    def __init__(
        self,
        method: MethodSpec,
        config: Config,
        global_lora: GlobalLora,
        coordinates: Coordinates,
        full_kept: KeptIndices,
        planner: Planner | None = None,
    ) -> None:
        self.method, self.config, self.global_lora = method, config, global_lora
        self.coordinates, self.full_kept = coordinates, full_kept
        self.planner = planner or method.make_planner(config, config.fleet.num_devices)
        self.rng = np.random.default_rng(config.run.seed + config.run.sampling_seed_offset)
        self.devices: dict[int, DeviceRecord] = {}  # by the channel's device key
        self.fleet_scores: ModelScores | None = None  # pooled importance (share_importance)
        self.shares_importance = method.prunes and config.pruning.share_importance
        self._in_flight: dict[int, _InFlight] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        registrations: Mapping[int, Registration],
        step_flops: float | None = None,
        round_bytes: int = 0,
    ) -> float:
        """Record every device; hand probes (if any) to the planner in device-id order.

        Returns the simulated seconds the probe cost: the server waits for the slowest one.
        """
        uniform = self.config.pruning.target_sparsity if self.method.prunes else 0.0
        for node, reg in registrations.items():
            own = reg.target_sparsity if self.method.prunes else None
            self.devices[node] = DeviceRecord(
                node,
                reg.device_id,
                reg.tier,
                self.full_kept,
                target=uniform if own is None else own,
                budget_ms=reg.budget_ms,
                latency_ms=reg.latency_ms if self.method.prunes else None,
            )
        probes = {
            node: registrations[node].probe
            for node in self.in_device_order(registrations)
            if registrations[node].probe is not None
        }
        if step_flops is None or not probes:
            return 0.0
        # Device-id order, not reply order: the first speed seen centres the speed buckets.
        self.planner.observe_probe(probes, step_flops, round_bytes)
        return max(probe.duration_s() for probe in probes.values())

    def in_device_order(self, nodes) -> list[int]:
        """Node ids sorted by device id: replies arrive in whatever order the workers finish,
        and the bandit's updates, the float sums of aggregation and the fleet prior must not
        depend on that, or one seed gives different runs."""
        return sorted(nodes, key=lambda node: self.devices[node].device_id)

    # -- planning -----------------------------------------------------------------------------
    def sample(self, present: set[int] | None = None) -> list[int]:
        """Seeded draw over the present devices in device-id order: Flower's node ids are
        random per run, so ordering by them would give every method different participants."""
        nodes = self.in_device_order(
            self.devices if present is None else [n for n in self.devices if n in present]
        )
        count = min(self.config.run.clients_per_round, len(nodes))
        if count == 0:
            return []
        picks = self.rng.choice(len(nodes), size=count, replace=False)  # node ids exceed float53
        return [nodes[i] for i in sorted(picks)]  # device-id order: the planner's draws follow it

    def plan_round(self, round_num: int, present: set[int] | None = None) -> dict[int, Downlink]:
        """A regular round: sample participants among the present, plan each, down-link."""
        return {node: self.downlink(node, round_num, False) for node in self.sample(present)}

    def laggards(self, present: set[int] | None = None) -> list[int]:
        """Present devices below the final target (device-id order); none for unpruned methods."""
        if not self.method.prunes:
            return []
        ordered = self.in_device_order(self.devices)
        return [
            node
            for node in ordered
            if self.devices[node].sparsity < self.devices[node].target - 1e-6
            and (present is None or node in present)
        ]

    def plan_final(self, round_num: int, present: set[int] | None = None) -> dict[int, Downlink]:
        """A catch-up round: every present laggard prunes to the target (prune at half,
        recover); the paper's 'same sparsity' comparison needs every device there, rarely
        sampled and late-joining ones too."""
        steps = self.config.pruning.final_recovery_steps
        return {
            node: self.downlink(node, round_num, True, steps) for node in self.laggards(present)
        }

    def downlink(
        self, node: int, round_num: int, final_round: bool, local_steps: int = 0
    ) -> Downlink:
        record = self.devices[node]
        plan = self.planner.assign(round_num, record.view(), final_round)
        plan = replace(plan, recipe=self.method.recipe, local_steps=local_steps)
        if final_round:  # the catch-up round's definition, whatever the planner proposed
            plan = replace(plan, target_sparsity=record.target)
        rows, cols = self.coordinates(record.kept)
        lora = self.global_lora
        prior = self.fleet_scores if self.shares_importance else None
        if lora.rule.merges_into_base:  # FLoRA: merged delta down, a fresh LoRA on the device
            merges = len(lora.stack_ranks)
            self._in_flight[node] = _InFlight({}, rows, cols, merges)
            merged = lora.merged_delta(rows, cols) if merges else {}  # none before a merge
            wire = lora.stack_bytes(record.synced, rows, cols)
            return Downlink(plan, record.kept, {}, lora.head, prior, merged, wire)
        factors = lora.downlink(rows, cols, plan.lora_rank)
        self._in_flight[node] = _InFlight(factors, rows, cols)
        return Downlink(plan, record.kept, factors, lora.head, prior)

    # -- absorbing replies ----------------------------------------------------------------------
    def absorb(self, round_num: int, replies: Mapping[int, Reply]) -> RoundOutcome:
        """Classify every reply, reward the planner, and (with enough valid replies in time)
        update records, aggregate and pool scores; a missing, late or malformed reply never
        touches the global state."""
        outcomes: list[ParticipantOutcome] = []
        accepted: dict[int, _Accepted] = {}
        app_errors = 0
        for node in self.in_device_order(replies):
            reply = replies[node]
            app_errors += isinstance(reply, DeviceCrash)
            outcome, kept = self._classify(node, reply)
            outcomes.append(outcome)
            if kept is not None:
                accepted[node] = kept
        skipped = len(accepted) < self.config.run.min_replies
        if skipped:  # the planner still learns from every reply, but nothing is kept
            accepted = {}
        rewards = self.planner.observe(round_num, outcomes)
        for node, item in accepted.items():
            self._record(node, item.uplink)
        self.global_lora.aggregate([item.upload for item in accepted.values()])
        if self.shares_importance:
            reports = [item.scores for item in accepted.values() if item.scores is not None]
            self.fleet_scores = pool_scores(
                self.fleet_scores, reports, self.config.pruning.fleet_momentum
            )
        return RoundOutcome(outcomes, rewards, skipped, app_errors)

    def _classify(self, node: int, reply: Reply) -> tuple[ParticipantOutcome, _Accepted | None]:
        """What the reply is (ok, failed, dropped, crashed, late, rejected), read-only."""
        record = self.devices[node]
        sent = self._in_flight.pop(node, None)
        deadline = self.config.run.round_deadline_s

        def outcome(status: ReplyStatus, report: DeviceReport, norm: float = 0.0):
            return ParticipantOutcome(
                node, record.device_id, record.tier, report, status, update_norm=norm
            )

        if isinstance(reply, DeviceCrash):  # logged (last line of the error), not aggregated
            lines = [line for line in reply.reason.splitlines() if line.strip()]
            report = DeviceReport(ok=False, error=lines[-1] if lines else "unknown error")
            return outcome(ReplyStatus.CRASHED, report), None
        if isinstance(reply, NoReply):  # with a deadline the server waited all of it
            waited = deadline if deadline > 0 else reply.waited_s
            missing = DeviceReport(ok=False, error=reply.reason, time_s=waited)
            return outcome(reply.status, missing), None
        report = reply.report
        if sent is not None:  # the device ran its round, so it merged what it was sent
            record.synced = max(record.synced, sent.merges)
        if deadline > 0 and report.time_s > deadline:
            error = f"replied after {report.time_s:.1f} s, past the {deadline:g} s deadline"
            late = DeviceReport(ok=False, error=error, time_s=deadline)
            return outcome(ReplyStatus.LATE, late), None
        if not report.ok:
            record.rounds_seen += 1
            return outcome(ReplyStatus.FAILED, report), None
        sent_rank = max((f.A.shape[0] for f in sent.factors.values()), default=0) if sent else 0
        problem = uplink_problem(
            reply,
            record.kept,
            self.global_lora.factors,
            self.global_lora.head,
            self.coordinates,
            sent_rank or self.global_lora.max_rank,
            self.global_lora.rule.shares_only_a,
        )
        if problem:
            rejected = replace(report, ok=False, error=f"rejected: {problem}")
            return outcome(ReplyStatus.REJECTED, rejected), None
        scores = None
        if reply.scores is not None:  # scored on the structures it had at round start
            scores = ScoreReport(reply.scores, record.kept, float(report.num_examples))
        rows, cols = self.coordinates(reply.kept)
        upload = LoraUpload(
            reply.factors,
            rows,
            cols,
            report.num_examples,
            head=reply.head,
            received=sent.factors if sent else None,
            received_rows=sent.rows if sent else None,
            received_cols=sent.cols if sent else None,
        )
        norm = update_norm(self.global_lora, upload)
        return outcome(ReplyStatus.OK, report, norm), _Accepted(reply, upload, scores)

    def _record(self, node: int, uplink: Uplink) -> None:
        """An aggregated reply's structure becomes the device's record."""
        record = self.devices[node]
        record.rounds_seen += 1
        record.kept, record.sparsity = uplink.kept, uplink.report.sparsity
        record.last_rank = uplink.report.lora_rank
        if uplink.report.latency_ms is not None:
            record.latency_ms = uplink.report.latency_ms

    # -- the run's end ---------------------------------------------------------------------------
    def records(self) -> list[DeviceRecord]:
        """Every device's record, in device-id order."""
        return [self.devices[n] for n in self.in_device_order(self.devices)]
