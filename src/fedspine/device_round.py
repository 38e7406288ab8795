"""One device's round: rebuild its pruned model, train LoRA, prune on schedule, cost the work.

This is the client behaviour of every method; a method differs only in the plan it sends
(rank, this round's target sparsity, one-shot pruning). No Flower here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedspine.config import TrainSection
from fedspine.fleet.clock import conditions_at, round_time_s
from fedspine.fleet.cost import exceeds_budget, training_flops, training_memory_bytes
from fedspine.fleet.profiles import DeviceProfile
from fedspine.lora.aggregation import LoraFactors
from fedspine.lora.peft_io import (
    attach_lora,
    get_head_state,
    get_lora_factors,
    set_head_state,
    set_lora_factors,
)
from fedspine.lora.rank_pruning import self_pruned_rank, truncate_rank
from fedspine.protocol import factors_to_tensors, payload_bytes
from fedspine.pruning import (
    KeptIndices,
    LoraTaylorImportance,
    ModelScores,
    build_pruned_model,
    magnitude_importance,
    prune_step,
    sparsity_report,
    taylor_importance,
)
from fedspine.pruning.fleet_importance import scores_to_tensors
from fedspine.resources import RunResources
from fedspine.train import label_log_prior, make_optimizer, train_local


@dataclass(frozen=True)
class DevicePlan:
    """What the server asks of one device for one round."""

    round_num: int
    lora_rank: int
    target_sparsity: float = 0.0  # sparsity to reach by the end of this round
    prune_one_shot: bool = False  # prune to target before training (prune-then-tune)
    rank_self_prune: bool = False  # HetLoRA: shed trailing LoRA components after training
    local_steps: int = 0  # 0 = the config's train.local_steps


@dataclass
class DeviceResult:
    ok: bool
    factors: dict[str, LoraFactors] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: KeptIndices | None = None  # None only when the device failed before training
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    scores: ModelScores | None = None  # the device's smoothed importance, kept across rounds
    scored: bool = False  # whether `scores` were updated this round (then they are uploaded)


RANK_TAIL_SHARE = 0.05  # HetLoRA's gamma: the tail share a device may drop


def prune_points(local_steps: int, interval: int) -> list[int]:
    """Steps after which to prune: every `interval` steps, always leaving steps to recover."""
    points = list(range(interval, local_steps, interval))
    return points or [max(1, local_steps // 2)]


def sparsity_schedule(start: float, target: float, points: int) -> list[float]:
    """Equal steps from the current sparsity to this round's target."""
    return [start + (target - start) * (j + 1) / points for j in range(points)]


def _payload(result_factors, head, scores: ModelScores | None = None) -> int:
    extra = payload_bytes(scores_to_tensors(scores)) if scores is not None else 0
    return payload_bytes(factors_to_tensors(result_factors)) + payload_bytes(head) + extra


def _device_model(
    res: RunResources,
    device: DeviceProfile,
    plan: DevicePlan,
    kept: KeptIndices,
    down_factors: dict[str, LoraFactors],
    down_head: dict[str, torch.Tensor],
) -> torch.nn.Module:
    """The device's pruned model (sliced from the shared base) with the down-linked LoRA."""
    cfg = res.config
    peft_model = attach_lora(
        build_pruned_model(res.base.model, kept),
        res.base.adapter,
        plan.lora_rank,
        cfg.model.lora_alpha_per_rank,
        cfg.model.lora_dropout,
        seed=cfg.run.seed + device.device_id,
    )
    if down_factors:
        set_lora_factors(peft_model, down_factors)
    if down_head:
        set_head_state(peft_model, down_head)
    return peft_model


def run_device_round(
    res: RunResources,
    device: DeviceProfile,
    plan: DevicePlan,
    kept: KeptIndices,
    down_factors: dict[str, LoraFactors],
    down_head: dict[str, torch.Tensor],
    prior_scores: ModelScores | None = None,
    fleet_prior: ModelScores | None = None,
) -> DeviceResult:
    """Train (and prune) one device for one round and cost it on the simulated clock.

    `prior_scores` is the device's own importance EMA from earlier rounds; `fleet_prior`, when
    the server shares one, the pooled fleet scores the EMA starts from instead.
    """
    cfg = res.config
    steps = plan.local_steps or cfg.train.local_steps
    data = res.train.subset(res.partitions[device.device_id])
    peft_model = _device_model(res, device, plan, kept, down_factors, down_head)
    # 1. A configuration over the device's memory budget fails on that device only.
    memory = training_memory_bytes(peft_model, cfg.train.batch_size, cfg.data.max_seq_len)
    if exceeds_budget(memory, device, res.fleet_spec.memory_usable_fraction):
        return DeviceResult(
            ok=False,
            kept=kept,
            metrics={"train_memory_mb": memory / 2**20},
            error=f"training needs {memory / 2**20:.0f} MB, over the device's budget",
        )
    # 2. Local training with scheduled prune steps (or one-shot pruning first).
    pruner = _Pruner(res, peft_model, kept, plan, steps, data, prior_scores, fleet_prior)
    if plan.prune_one_shot:
        pruner.one_shot()
    pruner.optimizer = make_optimizer(
        peft_model,
        *round_learning_rates(cfg.train, plan.round_num),
        cfg.train.weight_decay,
        res.base.adapter.task_head_modules(),
    )
    stats = train_local(
        peft_model,
        data,
        steps,
        cfg.train.batch_size,
        pruner.optimizer,
        seed=cfg.run.seed * 100_003 + plan.round_num * 1009 + device.device_id,
        after_backward=pruner.after_backward,
        after_step=pruner.after_step,
        logit_offset=label_log_prior(data.labels, len(res.label_names), cfg.train.logit_adjustment),
    )
    # 3. Up-link: LoRA in the device's own coordinates (HetLoRA may shed rank), costed.
    factors, head = get_lora_factors(peft_model), get_head_state(peft_model)
    rank = plan.lora_rank
    if plan.rank_self_prune:
        rank = self_pruned_rank(factors, RANK_TAIL_SHARE)
        factors = truncate_rank(factors, rank)
    scored = pruner.lora_taylor is not None and pruner.lora_taylor.scores is not None
    scores = pruner.lora_taylor.scores if scored else prior_scores
    metrics = _round_metrics(
        res,
        device,
        plan,
        peft_model,
        pruner,
        stats,
        _payload(factors, head, scores if scored else None),
        _payload(down_factors, down_head, fleet_prior),
    )
    metrics.update({"train_memory_mb": memory / 2**20, "lora_rank": rank})
    return DeviceResult(
        ok=True,
        factors=factors,
        head=head,
        kept=pruner.kept,
        scores=scores,
        scored=scored,
        metrics=metrics,
    )


def _round_metrics(
    res: RunResources,
    device: DeviceProfile,
    plan: DevicePlan,
    peft_model: torch.nn.Module,
    pruner: _Pruner,
    stats,
    bytes_up: int,
    bytes_down: int,
) -> dict[str, float]:
    """The device's report: losses, work, simulated time from real FLOPs and bytes, sparsity."""
    cfg = res.config
    cond = conditions_at(device, res.fleet_spec, plan.round_num)
    probe_flops = training_flops(
        peft_model, 2 * cfg.train.batch_size, cfg.data.max_seq_len, forward_only=True
    )  # the loss probe before and after
    compute_flops = pruner.flops + probe_flops
    report = sparsity_report(pruner.kept, res.base.model.config)
    return {
        "num_examples": len(pruner.data),  # local dataset size: FedAvg's aggregation weight
        "examples_processed": stats.examples,
        "loss_before": stats.loss_before,
        "loss_after": stats.loss_after,
        "time_s": round_time_s(compute_flops, bytes_up, bytes_down, cond, device.latency_s),
        "compute_s": compute_flops / cond.flops_per_s,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "train_flops": compute_flops,
        "train_wall_s": stats.train_wall_s,
        "train_tokens": stats.tokens,
        "sparsity": report["structures_removed"],
        "param_sparsity": report["non_embedding_params_removed"],
        "params": report["params"],
    }


def round_learning_rates(train: TrainSection, round_num: int) -> tuple[float, float]:
    """(LoRA lr, head lr) of round `round_num` (1-based): both x lr_decay ** (round_num - 1).

    Local AdamW restarts every round, so each round moves every weight by about lr per step in
    its own data's direction whatever the gradient's size; under label skew the global model
    then swings from round to round. A per-round decay damps that without a horizon, so it
    works under a time budget too (1.0 = constant, the default).
    """
    scale = train.lr_decay ** max(0, round_num - 1)
    return train.learning_rate * scale, train.head_learning_rate * scale


class _Pruner:
    """Scores groups while training and prunes at the scheduled steps (FedSpine step 4)."""

    def __init__(
        self,
        res,
        peft_model,
        kept,
        plan: DevicePlan,
        steps: int,
        data,
        prior_scores: ModelScores | None = None,
        fleet_prior: ModelScores | None = None,
    ) -> None:
        self.res, self.model, self.kept, self.plan, self.data = res, peft_model, kept, plan, data
        cfg = res.config
        self.adapter = res.base.adapter
        self.batch, self.seq = cfg.train.batch_size, cfg.data.max_seq_len
        start = sparsity_report(kept, res.base.model.config)["structures_removed"]
        self.active = plan.target_sparsity > start + 1e-9 and not plan.prune_one_shot
        points = prune_points(steps, cfg.pruning.prune_interval)
        self.schedule = dict(
            zip(points, sparsity_schedule(start, plan.target_sparsity, len(points)), strict=False)
        )
        self.lora_taylor = (
            LoraTaylorImportance(self.adapter, cfg.pruning.ema_beta, prior=fleet_prior)
            if self.active and cfg.pruning.importance == "lora-taylor"
            else None
        )
        if self.lora_taylor is not None and fleet_prior is None and prior_scores is not None:
            self.lora_taylor.scores = prior_scores  # EMA continues from earlier rounds
        self.flops = 0.0
        self.shape_version = 0  # bumped by every prune step: the FLOP cache key
        self._flops_cache: dict[tuple[int, int, int], float] = {}
        self.optimizer = None

    def after_backward(self, step: int, batch: dict[str, torch.Tensor]) -> None:
        self.flops += self._step_flops(*batch["input_ids"].shape)
        if self.lora_taylor is not None:
            self.lora_taylor.update(self.model, self.kept)

    def _step_flops(self, sequences: int, length: int) -> float:
        """Training FLOPs of one batch at the model's current shape (cached per shape)."""
        key = (self.shape_version, sequences, length)
        if key not in self._flops_cache:
            self._flops_cache[key] = training_flops(self.model, sequences, length)
        return self._flops_cache[key]

    def after_step(self, step: int, batch: dict[str, torch.Tensor]) -> None:
        if not self.active or step not in self.schedule:
            return
        self.shape_version += 1
        self.kept = prune_step(
            self.model,
            self.adapter,
            self._scores(),
            self.kept,
            self.schedule[step],
            self.res.config.pruning.selection,
        )
        self._rebuild_optimizer()  # scores are in original coordinates: the EMA carries on

    def _scores(self):
        kind = self.res.config.pruning.importance
        if kind == "lora-taylor":
            return self.lora_taylor.scores
        if kind == "magnitude":
            return magnitude_importance(self.model, self.adapter, self.kept)
        return taylor_importance(self.model, self.adapter, self.kept, [self._calibration()])

    def _calibration(self) -> dict[str, torch.Tensor]:
        return self.data.batch(list(range(min(len(self.data), 4 * self.batch))))

    def _rebuild_optimizer(self) -> None:
        """Sliced LoRA tensors are new parameters: the optimizer must track the new ones."""
        cfg = self.res.config
        fresh = make_optimizer(
            self.model,
            *round_learning_rates(cfg.train, self.plan.round_num),
            cfg.train.weight_decay,
            self.adapter.task_head_modules(),
        )
        self.optimizer.param_groups.clear()
        self.optimizer.state.clear()
        for group in fresh.param_groups:
            self.optimizer.add_param_group(group)

    def one_shot(self) -> None:
        """Prune-then-tune: Taylor importance on a calibration batch, prune to the target."""
        calibration = self._calibration()
        self.flops += training_flops(
            self.model, calibration["labels"].shape[0], self.seq, frozen_base=False
        )
        scores = taylor_importance(self.model, self.adapter, self.kept, [calibration])
        self.kept = prune_step(
            self.model,
            self.adapter,
            scores,
            self.kept,
            self.plan.target_sparsity,
            self.res.config.pruning.selection,
        )
