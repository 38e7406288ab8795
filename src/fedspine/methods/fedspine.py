"""FedSpine's planner: S-UCB bandits pick each device's (target sparsity, LoRA rank) per round.

The paper's part: a bandit per device over (pruning ratio, rank) rewarded by loss gain,
pruning progress, update importance and relative completion time. Our choices (method.md
steps 8-9): the reward's normalisation and weights (config [bandit]), and in `shared` mode
devices grouped by observed effective speed share trees (`fedspine.bandit.BanditPool`).
Beyond the paper, every pruning method's devices also start their importance EMA from the
fleet-wide pooled scores (`fedspine.pruning.fleet_importance`, `pruning.share_importance`).
"""

from __future__ import annotations

import statistics

from fedspine.bandit.reward import RewardWeights, compute_reward, failed_reward
from fedspine.bandit.sucb import Arm, BanditPool
from fedspine.config import Config
from fedspine.methods.base import Assignment, DeviceView
from fedspine.methods.planners import sparsity_bounds


class BanditPlanner:
    """Proposes arms from the pool, remembers them, and turns reports into rewards."""

    def __init__(self, config: Config, mode: str, num_devices: int) -> None:
        bandit = config.bandit
        self.final_sparsity = config.pruning.target_sparsity
        self.weights = RewardWeights(
            w_loss=bandit.w_loss,
            w_prune=bandit.w_prune,
            w_imp=bandit.w_imp,
            w_time=bandit.w_time,
            time_slack=bandit.time_slack,
        )
        self.pool = BanditPool(
            mode,
            (0.0, max(self.final_sparsity, 1e-6)),
            (bandit.rank_min, bandit.rank_max),
            tree_options={"c": bandit.exploration, "smoothness": bandit.smoothness},
            seed=config.run.seed,
        )
        # node -> (arm, sparsity before, the tree that proposed the arm)
        self.pending: dict[int, tuple[Arm, float, str]] = {}
        self.wants_probe = mode == "shared" and bandit.probe  # fedspine.fleet.probe
        self.rounds = config.run.rounds
        self.warmup_share = config.pruning.warmup_share
        self.participation_rate = min(1.0, config.run.clients_per_round / num_devices)

    def observe_probe(self, speeds: dict[int, float]) -> None:
        """Registration-probe speeds: every device starts in a speed group."""
        for node, speed in speeds.items():
            self.pool.observe_speed(node, speed)

    def assign(self, round_num: int, device: DeviceView, final_round: bool) -> Assignment:
        floor, cap = sparsity_bounds(
            device.sparsity,
            self.final_sparsity,
            round_num,
            self.rounds,
            self.participation_rate,
            self.warmup_share,
        )
        source = self.pool.source_of(device.node_id)
        arm = self.pool.propose(device.node_id, p_floor=floor, p_cap=cap)
        target = self.final_sparsity if final_round else max(arm.prune_ratio, floor)
        self.pending[device.node_id] = (arm, device.sparsity, source)
        return Assignment(arm.lora_rank, min(target, self.final_sparsity))

    def observe(self, round_num: int, outcomes: list[dict]) -> list[dict]:
        done = [o for o in outcomes if o.get("ok")]
        times = [o["time_s"] for o in done if o.get("time_s", 0) > 0]
        median_time = statistics.median(times) if times else 1.0
        max_norm = max((o.get("update_norm", 0.0) for o in done), default=0.0)
        logs = []
        for outcome in outcomes:
            node = outcome["node_id"]
            arm, before, source = self.pending.pop(node, (None, 0.0, ""))
            if arm is None:
                logs.append({})
                continue
            parts = self._reward(outcome, before, median_time, max_norm)
            speed = (
                outcome["train_flops"] / outcome["time_s"]
                if outcome.get("ok") and outcome.get("time_s", 0) > 0
                else None
            )
            self.pool.update(node, arm, parts.total, effective_speed=speed)
            logs.append(
                {
                    **parts.to_dict(),
                    "arm_prune_ratio": arm.prune_ratio,
                    "arm_lora_rank": arm.lora_rank,
                    "tree": source,  # the tree that proposed this arm
                }
            )
        return logs

    def _reward(self, outcome: dict, sparsity_before: float, median_time: float, max_norm: float):
        if not outcome.get("ok"):
            return failed_reward(self.weights)
        return compute_reward(
            outcome["loss_before"],
            outcome["loss_after"],
            sparsity_before,
            outcome["sparsity"],
            self.final_sparsity,
            outcome.get("update_norm", 0.0),
            max_norm,
            outcome["time_s"],
            median_time,
            self.weights,
        )
