"""FedSpine's planner: S-UCB bandits pick each device's (target sparsity, LoRA rank) per round.

The paper's part: a bandit per device over (pruning ratio, rank) rewarded by loss gain,
pruning progress, update importance and relative completion time. Our choices (method.md
steps 8-9): the reward's normalisation and weights (config [bandit]), and in `shared` mode
devices grouped by observed effective speed share trees (`fedspine.bandit.BanditPool`).
Beyond the paper, every pruning method's devices also start their importance EMA from the
fleet-wide pooled scores (`fedspine.pruning.fleet_importance`, `pruning.share_importance`).
With `bandit.time_model` (default on) the reward's time term is not learned by the trees but
predicted per device and arm from measured speeds (`fedspine.bandit.time_model`): the trees
learn the rest of the reward, which is alike for every device, and each proposal weighs its
candidate arms by what they would cost this device in round time.
"""

from __future__ import annotations

import statistics
from dataclasses import fields
from typing import TYPE_CHECKING

from fedspine.bandit.reward import RewardWeights, compute_reward, failed_reward, time_penalty
from fedspine.bandit.sucb import Arm, ArmCost, BanditPool
from fedspine.bandit.time_model import (
    DeviceSpeed,
    WorkModel,
    blend_speed,
    predicted_time_s,
    speed_from_report,
)
from fedspine.fleet.probe import ProbeResult, estimated_round_speed
from fedspine.methods.base import DeviceView
from fedspine.methods.planners import sparsity_bounds
from fedspine.protocol import DevicePlan, ParticipantOutcome

if TYPE_CHECKING:
    from fedspine.config import BanditSection, Config


def reward_weights(bandit: BanditSection) -> RewardWeights:
    """The reward's weights and caps, as configured in [bandit]."""
    return RewardWeights(**{f.name: getattr(bandit, f.name) for f in fields(RewardWeights)})


class BanditPlanner:
    """Proposes arms from the pool, remembers them, and turns reports into rewards."""

    def __init__(self, config: Config, mode: str, num_devices: int) -> None:
        bandit = config.bandit
        prune = config.pruning
        # the arms' sparsity box: the run's target, or in budget mode the most a device may set
        self.max_target = (
            prune.budget_max_sparsity if prune.target == "budget" else (prune.target_sparsity)
        )
        self.weights = reward_weights(bandit)
        self.speed_new_weight = bandit.speed_new_weight
        self.pool = BanditPool(
            mode,
            (0.0, max(self.max_target, 1e-6)),
            (bandit.rank_min, bandit.rank_max),
            bucket_width_log2=bandit.group_width_log2,
            tree_options={"c": bandit.exploration, "smoothness": bandit.smoothness},
            seed=config.run.seed,
        )
        # node -> (arm, sparsity before, the tree that proposed the arm)
        self.pending: dict[int, tuple[Arm, float, str]] = {}
        self.rounds = config.run.rounds
        self.local_steps = config.train.local_steps
        self.max_rank = bandit.rank_max
        # The time model (time_model.py): per-device speeds, the fleet's work model, and the
        # last round's median time that a predicted time is compared with.
        self.time_model = bandit.time_model
        self.speeds: dict[int, DeviceSpeed] = {}
        self.work: WorkModel | None = None
        self.median_time: float | None = None
        self.warmup_share = config.pruning.warmup_share
        self.participation_rate = min(1.0, config.run.clients_per_round / num_devices)
        self.deadline_s = config.run.round_deadline_s  # a reply after it is lost (late)

    def observe_probe(
        self, probes: dict[int, ProbeResult], step_flops: float, round_bytes: int
    ) -> None:
        """Registration probes (in device-id order): every device starts in a speed group (a
        newcomer mid-run joins the group of its speed and learns from its tree), and the time
        model starts from the measured speeds and the full model's workload."""
        for node, probe in probes.items():
            self.pool.observe_speed(
                node, estimated_round_speed(probe, step_flops, self.local_steps, round_bytes)
            )
            self.speeds[node] = DeviceSpeed(
                step_flops / probe.step_s, probe.bandwidth_Bps, probe.latency_s
            )
        if self.time_model and probes and self.work is None:  # newcomers keep the fleet's
            self.work = WorkModel(step_flops * self.local_steps, round_bytes, self.max_rank)
            typical = [
                predicted_time_s(speed, self.work, 0.0, 0.0, self.max_rank)
                for speed in self.speeds.values()
            ]
            self.median_time = statistics.median(typical)

    def _arm_cost(self, node: int, sparsity_before: float) -> ArmCost | None:
        """Predicted straggler penalty of an arm for this device (None: nothing to predict)."""
        speed = self.speeds.get(node)
        if not self.time_model or speed is None or self.work is None or not self.median_time:
            return None
        work, median, deadline = self.work, self.median_time, self.deadline_s
        miss = -failed_reward(self.weights).total  # an arm predicted to miss the deadline fails

        def cost(prune_ratio: float, rank: int) -> float:
            seconds = predicted_time_s(speed, work, sparsity_before, prune_ratio, rank)
            if deadline > 0 and seconds > deadline:
                return miss
            return time_penalty(seconds / median, self.weights)

        return cost

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> DevicePlan:
        final = device.target_sparsity
        floor, cap = sparsity_bounds(
            device.sparsity,
            final,
            round_num,
            self.rounds,
            self.participation_rate,
            self.warmup_share,
        )
        source = self.pool.source_of(device.node_id)
        cost = self._arm_cost(device.node_id, device.sparsity)
        arm = self.pool.propose(device.node_id, p_floor=floor, p_cap=cap, cost=cost)
        target = final if final_round else max(arm.prune_ratio, floor)
        self.pending[device.node_id] = (arm, device.sparsity, source, final)
        return DevicePlan(round_num, arm.lora_rank, min(target, final))

    def observe(self, round_num: int, outcomes: list[ParticipantOutcome]) -> list[dict]:
        done = [o for o in outcomes if o.ok]
        times = [o.report.time_s for o in done if o.report.time_s > 0]
        median_time = statistics.median(times) if times else 1.0
        max_norm = max((o.update_norm for o in done), default=0.0)
        logs = []
        for outcome in outcomes:
            node = outcome.node_id
            arm, before, source, final = self.pending.pop(node, (None, 0.0, "", 0.0))
            if arm is None:
                logs.append({})
                continue
            parts = self._reward(outcome, before, final, median_time, max_norm)
            report = outcome.report
            speed = report.train_flops / report.time_s if outcome.ok and report.time_s > 0 else None
            learned = parts.total
            if self.time_model and outcome.ok:
                # The tree learns the rest; the time term is predicted. A failure (out of
                # memory, crash) keeps its whole penalty: no speed model foresees it.
                learned += time_penalty(parts.time_ratio, self.weights)
                self._learn_time(node, before, outcome)
            self.pool.update(node, arm, learned, effective_speed=speed)
            logs.append(
                {
                    **parts.to_dict(),
                    "arm_prune_ratio": arm.prune_ratio,
                    "arm_lora_rank": arm.lora_rank,
                    "tree": source,  # the tree that proposed this arm
                }
            )
        if times:
            self.median_time = median_time
        return logs

    def _learn_time(self, node: int, before: float, outcome: ParticipantOutcome) -> None:
        """Fold a finished round into the device's speeds and the fleet's work model."""
        report = outcome.report
        moved = report.bytes_up + report.bytes_down
        latency = self.speeds[node].latency_s if node in self.speeds else 0.0
        measured = speed_from_report(
            report.train_flops, report.compute_s, report.time_s, moved, latency
        )
        if measured is None:
            return
        self.speeds[node] = blend_speed(self.speeds.get(node), measured, self.speed_new_weight)
        rank = report.lora_rank
        if self.work is None:  # no probe: the first report, scaled to full rank, is the prior
            self.work = WorkModel(report.train_flops, moved * self.max_rank / rank, self.max_rank)
        self.work.add(before, report.sparsity, rank, report.train_flops, moved)

    def _reward(
        self,
        outcome: ParticipantOutcome,
        sparsity_before: float,
        final: float,
        median_time: float,
        max_norm: float,
    ):
        if not outcome.ok:
            return failed_reward(self.weights)
        report = outcome.report
        return compute_reward(
            report.loss_before,
            report.loss_after,
            sparsity_before,
            report.sparsity,
            final,
            outcome.update_norm,
            max_norm,
            report.time_s,
            median_time,
            self.weights,
        )
